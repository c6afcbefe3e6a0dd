"""GPT-2 (nanoGPT shape): Memory Mosaics v1's transformer baseline.

Learned position embeddings, pre-LN blocks (causal self-attention, then a 4x GELU MLP), a final
LayerNorm and a head tied to the token embedding. Init follows GPT-2: std 0.02, residual projections
0.02/sqrt(2L). The config's defaults are the small `debug` size; the registry's `small` variant is the
official baseline's (`Library/baseline`, reference 1.2): 12 layers, 12 heads, d 768, context 512,
vocab 50304; dropout 0.05, no biases and tanh-approximated GELU at every size.

Decoding keeps a KV cache; position embeddings limit any sequence to `block_size` tokens.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from repro.errors import UserError
from repro.models.layers import KVCache, LayerKV, causal_attention, merge_heads, split_heads
from repro.models.lm import LanguageModel, run_blocks
from repro.models.registry import register_model


@dataclasses.dataclass
class GPTConfig:
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    block_size: int = 128  # longest sequence: the size of the position-embedding table
    vocab_size: int = 512
    dropout: float = 0.05  # attention weights, residual branches and embeddings
    bias: bool = False  # biases in Linear and LayerNorm layers


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_head={cfg.n_head} must divide n_embd={cfg.n_embd}")
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None) -> torch.Tensor:
        C = x.shape[2]
        q, k, v = (split_heads(z, self.n_head) for z in self.c_attn(x).split(C, dim=2))  # 3 x (B, H, T, D)
        y = causal_attention(q, k, v, kv, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(merge_heads(y)))  # (B, H, T, D) -> (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the tanh approximation is what GPT-2 and the official baseline use
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv)
        return x + self.mlp(self.ln_2(x))


class GPT(LanguageModel):
    config_class = GPTConfig

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        cfg = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied: one (V, C) matrix
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2: N(0, 0.02) everywhere, residual projections N(0, 0.02/sqrt(2L)), zero biases."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # two residual branches per layer
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))

    def new_cache(self, batch_size: int) -> KVCache:
        return KVCache(batch_size, layers=[LayerKV() for _ in range(self.config.n_layer)])

    @property
    def max_context(self) -> int:
        return self.config.block_size

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T = idx.shape
        t0 = 0 if cache is None else cache.length
        if t0 + T > self.max_context:
            raise UserError(
                f"GPT reads at most block_size={self.max_context} tokens (learned position "
                f"embeddings), got {t0 + T}; shorten the input or train with a larger block_size."
            )
        pos = torch.arange(t0, t0 + T, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        x = run_blocks(self.transformer.h, x, cache)
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, V)


# GPT-2 small: the official baseline of Memory Mosaics v1 (reference 1.2); the v1 paper varies depth.
GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, block_size=512, vocab_size=50304)
register_model("gpt2", GPTConfig, GPT, {"debug": {}, "small": GPT2_SMALL}, label="GPT-2")
