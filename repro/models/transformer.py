"""The transformer baselines: GPT-2 (nanoGPT shape; Memory Mosaics v1's baseline) and a Llama-style
model (RoPE, RMSNorm, SwiGLU, multi-head attention; Memory Mosaics v2's baseline, at the end).

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
from repro.models.lm import DecodeCache, LanguageModel, offset_causal_mask
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


@dataclasses.dataclass
class LayerKV:
    """Keys and values (B, H, t, D) of every token read so far by one attention layer."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None


@dataclasses.dataclass
class KVCache(DecodeCache):
    layers: list[LayerKV] = dataclasses.field(default_factory=list)


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
        B, T, C = x.shape
        H = self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (z.view(B, T, H, C // H).transpose(1, 2) for z in (q, k, v))  # (B, H, T, D)
        dropout_p = self.dropout if self.training else 0.0
        if kv is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        else:
            t0 = 0 if kv.k is None else kv.k.shape[2]  # tokens already in the cache
            if kv.k is not None:
                k, v = torch.cat([kv.k, k], dim=2), torch.cat([kv.v, v], dim=2)  # (B, H, t0 + T, D)
            kv.k, kv.v = k, v
            # one new token sees every key; several need the causal mask shifted by t0
            mask = None if T == 1 else offset_causal_mask(T, t0 + T, t0, 0, device=x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, H, T, D) -> (B, T, C): heads side by side
        return self.resid_dropout(self.c_proj(y))


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
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if cache is None else cache.layers[i])
        if cache is not None:
            cache.length += T
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, V)


# ---------------------------------------------------------------------------------------------------
# Llama-style transformer: the Memory Mosaics v2 paper's baseline (reference memory-mosaics.md §4.1:
# "the transformer baselines use RoPE (llama architecture, multi-head attention)"; §4.2 table: 32
# layers, d 4096, 32 heads, SwiGLU d' 14336 at the large scale, 8.8B parameters).


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


class RMSNorm(nn.Module):
    """x / rms(x) * g, computed in float32 (Llama's norm; also used by Memory Mosaics v2)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class SwiGLU(nn.Module):
    """W2(SiLU(W1 x) * W3 x): Llama's FFN and Memory Mosaics v2's persistent memory (§4.1.3)."""

    def __init__(self, n_embd: int, hidden: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(n_embd, hidden, bias=bias)
        self.w3 = nn.Linear(n_embd, hidden, bias=bias)
        self.w2 = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def trunc_normal_(p: torch.Tensor, std: float) -> None:
    """N(0, std) truncated at +-3 std (App. Table 6 of Memory Mosaics v2)."""
    nn.init.trunc_normal_(p, mean=0.0, std=std, a=-3 * std, b=3 * std)


def v2_init(model: nn.Module, blocks: nn.ModuleList, n_embd: int) -> None:
    """Memory Mosaics v2 init (§4.1, App. Table 6), applied to both v2-paper models: every Linear
    in block l gets sigma = 1/sqrt(2 d (l + 1)), the SwiGLU output W2 with d' in place of d, the
    embedding and classifier sigma = 1/sqrt(2 d). The paper tuned its recipe on the transformer and
    does not give the transformer's init; we use the same rule on the matching matrices."""
    for layer, block in enumerate(blocks):
        for name, m in block.named_modules():
            if isinstance(m, nn.Linear):
                width = m.weight.shape[1] if name.endswith("w2") else n_embd  # W2 reads d' inputs
                trunc_normal_(m.weight, 1 / math.sqrt(2 * width * (layer + 1)))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    for name in ("wte", "lm_head"):
        trunc_normal_(getattr(model, name).weight, 1 / math.sqrt(2 * n_embd))


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding (rotate-half form) of x (B, H, T, D) at absolute positions (T,)."""
    D = x.shape[-1]
    freqs = theta ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)  # (D/2,)
    angles = positions.float()[:, None] * freqs[None]  # (T, D/2)
    cos, sin = angles.cos().repeat(1, 2), angles.sin().repeat(1, 2)  # (T, D)
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)  # (B, H, T, D)
    return (x.float() * cos + rotated * sin).to(x.dtype)


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
        B, T, C = x.shape
        H = self.n_head
        q, k, v = (w(x).view(B, T, H, C // H).transpose(1, 2) for w in (self.wq, self.wk, self.wv))  # (B, H, T, D)
        t0 = 0 if kv is None or kv.k is None else kv.k.shape[2]
        pos = torch.arange(t0, t0 + T, device=x.device)
        q, k = rope(q, pos, self.theta), rope(k, pos, self.theta)
        if kv is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            if kv.k is not None:
                k, v = torch.cat([kv.k, k], dim=2), torch.cat([kv.v, v], dim=2)  # (B, H, t0 + T, D)
            kv.k, kv.v = k, v
            mask = None if T == 1 else offset_causal_mask(T, t0 + T, t0, 0, device=x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.resid_dropout(self.wo(y.transpose(1, 2).reshape(B, T, C)))  # heads side by side


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
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache.layers[i])
        if cache is not None:
            cache.length += idx.shape[1]
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


# GPT-2 small: the official baseline of Memory Mosaics v1 (reference 1.2); the v1 paper varies depth.
GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, block_size=512, vocab_size=50304)
register_model("gpt2", GPTConfig, GPT, {"debug": {}, "small": GPT2_SMALL}, label="GPT-2")

# §4.2 of Memory Mosaics v2: the llama-1.5B and llama-8B scales with the Llama 3 vocabulary (128256,
# what makes the paper's 8.8B come out) and the 4096-token training context.
LLAMA_SIZES = {
    "small": dict(n_layer=24, n_head=16, n_embd=2048, ffn_size=6144, block_size=4096, vocab_size=128256),
    "large": dict(n_layer=32, n_head=32, n_embd=4096, ffn_size=14336, block_size=4096, vocab_size=128256),
}
register_model("llama", LlamaConfig, Llama, {"debug": {}, **LLAMA_SIZES}, label="Transformer (Llama)")
