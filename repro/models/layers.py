"""Layers that several model families share: head splitting, RMSNorm, SwiGLU, rotary position
embedding, the Memory Mosaics v2 initialisation, and causal attention with its KV cache.

GPT-2 and Llama use the attention and its cache; Llama and Memory Mosaics v2 use RMSNorm, SwiGLU and
the v2 init; every multi-head model splits heads the same way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from repro import kernels
from repro.models.lm import DecodeCache


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, T, C) -> (B, H, T, D)


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    B, H, T, D = y.shape
    return y.transpose(1, 2).reshape(B, T, H * D)  # (B, H, T, D) -> (B, T, C): heads side by side


def fused_linear(x: torch.Tensor, layers: Sequence[nn.Linear]) -> tuple[torch.Tensor, ...]:
    """Several Linear layers that read the same input as one matmul (one (out_1 + out_2 + ..., in)
    weight built by concatenation each call, so parameters and checkpoints stay per layer); returns
    each layer's output, views into one buffer."""
    weight = torch.cat([m.weight for m in layers])
    bias = None if layers[0].bias is None else torch.cat([m.bias for m in layers])
    return F.linear(x, weight, bias).split([m.out_features for m in layers], dim=-1)


def unit(x: torch.Tensor, scale: torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    """x / max(||x||, eps) along the last dimension (F.normalize's rule), times a per-head scale (H,)
    when x is (B, H, T, D): the norm is a (B, H, T, 1) tensor, so x is read and written once."""
    inv = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)  # (..., 1)
    return x * (inv.reciprocal() if scale is None else scale.view(1, -1, 1, 1) / inv)


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


@dataclasses.dataclass
class LayerKV:
    """Keys and values (B, H, t, D) of every token read so far by one attention layer."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None


@dataclasses.dataclass
class KVCache(DecodeCache):
    layers: list[LayerKV] = dataclasses.field(default_factory=list)


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: LayerKV | None = None, dropout_p: float = 0.0
) -> torch.Tensor:
    """Softmax attention of q over k, v (B, H, T, D), causal (skip=0: a token reads itself and the
    past), scale 1/sqrt(D), through the `memory_retrieval` kernel. With a cache, q, k, v are the new
    tokens: their keys and values are appended to `kv` and the queries, at positions t0.., read every
    cached token too. Returns (B, H, T, D)."""
    t0 = 0
    if kv is not None:
        if kv.k is not None:
            t0 = kv.k.shape[2]  # tokens already in the cache
            k, v = torch.cat([kv.k, k], dim=2), torch.cat([kv.v, v], dim=2)  # (B, H, t0 + T, D)
        kv.k, kv.v = k, v
    return kernels.memory_retrieval(q, k, v, skip=0, q_start=t0, scale=None, dropout_p=dropout_p)
