"""A Llama-style transformer (RoPE, RMSNorm, SwiGLU, multi-head attention, untied head): Memory
Mosaics v2's baseline (reference memory-mosaics.md §4.1: "the transformer baselines use RoPE (llama
architecture, multi-head attention)"; §4.2 table: 32 layers, d 4096, 32 heads, SwiGLU d' 14336 at the
large scale, 8.8B parameters).

Initialised like Memory Mosaics v2 (`repro.models.layers.v2_init`). Decoding keeps a KV cache; RoPE
sets no length limit, so longer inputs run and the extrapolation can be measured.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from repro.models.layers import (
    KVCache,
    LayerKV,
    RMSNorm,
    SwiGLU,
    causal_attention,
    merge_heads,
    rope,
    split_heads,
    v2_init,
)
from repro.models.lm import LanguageModel, run_blocks
from repro.models.registry import register_model


@dataclasses.dataclass
class LlamaConfig:
    """Defaults: the small `debug` size; the paper's sizes are the registry's variants (below)."""

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    block_size: int = 128  # training context; RoPE sets no hard limit, so inputs may be longer
    vocab_size: int = 512
    ffn_size: int = 192  # SwiGLU hidden size d' (§4.2: 6144 small, 14336 large)
    dropout: float = 0.0  # residual branches; the paper gives none
    bias: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_head={cfg.n_head} must divide n_embd={cfg.n_embd}")
        self.n_head, self.theta = cfg.n_head, cfg.rope_theta
        self.wq = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.wk = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.wv = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.wo = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None) -> torch.Tensor:
        T = x.shape[1]
        q, k, v = (split_heads(w(x), self.n_head) for w in (self.wq, self.wk, self.wv))  # (B, H, T, D)
        t0 = 0 if kv is None else kv.length  # tokens already in the cache
        pos = torch.arange(t0, t0 + T, device=x.device)
        q, k = rope(q, pos, self.theta), rope(k, pos, self.theta)
        y = causal_attention(q, k, v, kv)  # (B, H, T, D); no attention dropout (the paper gives none)
        return self.resid_dropout(self.wo(merge_heads(y)))  # heads side by side


class LlamaBlock(nn.Module):
    """Pre-norm: x += Attn(RMSNorm(x)); x += SwiGLU(RMSNorm(x))."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = LlamaAttention(cfg)
        self.ffn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.ffn = SwiGLU(cfg.n_embd, cfg.ffn_size, cfg.bias, cfg.dropout)

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), kv)
        return x + self.ffn(self.ffn_norm(x))


class Llama(LanguageModel):
    """Llama-style decoder (RoPE, RMSNorm, SwiGLU, multi-head attention, untied head): the v2 paper's
    transformer baseline. Decoding keeps a KV cache; RoPE has no length limit (max_context None),
    so longer inputs run and the extrapolation can be measured."""

    config_class = LlamaConfig

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        cfg = config
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList([LlamaBlock(cfg) for _ in range(cfg.n_layer)])
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)  # untied, as in Llama
        v2_init(self, self.blocks, cfg.n_embd)

    def new_cache(self, batch_size: int) -> KVCache:
        return KVCache(batch_size, layers=[LayerKV() for _ in range(self.config.n_layer)])

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = self.wte(idx)  # (B, T, C): no position embedding, RoPE acts inside attention
        x = run_blocks(self.blocks, x, cache)
        return self.lm_head(self.norm(x))  # (B, T, V)

    def flops_per_token(self, context: int) -> float:
        """Forward FLOPs per token averaged over a `context`-token sequence: 2 per weight of every
        matmul (the head included, the embedding lookup not) plus 4 d per visible key per layer for
        q.k and the weighted sum of values (query t sees t + 1 keys). Norms and softmax are left
        out. At the large config and context 256 this gives the paper's 16.7 GFLOPs (§4.2)."""
        c = self.config
        d, f, L = c.n_embd, c.ffn_size, c.n_layer
        matmul = L * (4 * d * d + 3 * d * f) + d * c.vocab_size
        mean_keys = (context + 1) / 2
        return 2 * matmul + 4 * d * L * mean_keys


# §4.2 of Memory Mosaics v2: the llama-1.5B and llama-8B scales with the Llama 3 vocabulary (128256,
# what makes the paper's 8.8B come out) and the 4096-token training context.
LLAMA_SIZES = {
    "small": dict(n_layer=24, n_head=16, n_embd=2048, ffn_size=6144, block_size=4096, vocab_size=128256),
    "large": dict(n_layer=32, n_head=32, n_embd=4096, ffn_size=14336, block_size=4096, vocab_size=128256),
}
register_model("llama", LlamaConfig, Llama, {"debug": {}, **LLAMA_SIZES}, label="Transformer (Llama)")
