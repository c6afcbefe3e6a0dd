"""Layers that several model families share: head splitting, RMSNorm, SwiGLU, rotary position
embedding, the Memory Mosaics v2 initialisation, and causal attention with its KV cache.

GPT-2 and Llama use the attention and its cache; Llama and Memory Mosaics v2 use RMSNorm, SwiGLU and
the v2 init; every multi-head model splits heads the same way.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from repro import kernels
from repro.models.lm import DecodeCache

Derived = TypeVar("Derived")


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, T, C) -> (B, H, T, D)


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    B, H, T, D = y.shape
    return y.transpose(1, 2).reshape(B, T, H * D)  # (B, H, T, D) -> (B, T, C): heads side by side


_DERIVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # owner module -> {name: (key, value)}


def derived(owner: nn.Module, name: str, compute: Callable[[], Derived], params: Iterable[torch.Tensor]) -> Derived:
    """`compute()`, a value made from parameters only (a scaled table, a concatenated weight, per-head
    constants). Recomputed at every call while gradients flow; without them (decoding runs one small
    step per token, where these would cost as much as the step) it is kept until one of `params`
    changes (in place, by the optimizer or a load, or replaced)."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return compute()
    key = tuple((id(p), p._version, p.data_ptr()) for p in params)
    store = _DERIVED.setdefault(owner, {})
    hit = store.get(name)
    if hit is None or hit[0] != key:
        hit = store[name] = (key, compute())
    return hit[1]


def fused_linear(x: torch.Tensor, groups: Sequence[Sequence[nn.Linear]]) -> tuple[torch.Tensor, ...]:
    """Linear layers that read the same input as one matmul (one weight built by concatenation, so
    parameters and checkpoints stay per layer); returns one output per group, the outputs of the
    group's layers side by side: views into one (..., sum of out_features) buffer."""
    layers = [m for group in groups for m in group]
    params = [p for m in layers for p in (m.weight, m.bias) if p is not None]
    weight, bias = derived(layers[0], f"fused{len(layers)}", lambda: _concat(layers), params)
    return F.linear(x, weight, bias).split([sum(m.out_features for m in group) for group in groups], dim=-1)


def _concat(layers: Sequence[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = torch.cat([m.weight for m in layers])
    return weight, None if layers[0].bias is None else torch.cat([m.bias for m in layers])


def unit(
    x: torch.Tensor, scale: torch.Tensor | None = None, dtype: torch.dtype | None = None, eps: float = 1e-12
) -> torch.Tensor:
    """x / max(||x||, eps) along the last dimension (F.normalize's rule), times a per-head scale (H,)
    when x is (B, H, T, D), in `dtype` (default x's): the norm is a (B, H, T, 1) tensor, so x is read
    and written once."""
    inv = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)  # (..., 1)
    y = x * (inv.reciprocal() if scale is None else scale.view(1, -1, 1, 1) / inv)
    return y if dtype is None or y.dtype == dtype else y.to(dtype)


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
class TimeBuffer:
    """Rows along time of a decoding cache, (B, H, t, D) or (B, H, t), grown by appends.

    An append writes its new rows into spare capacity (the buffer doubles when full), so a decoding
    step copies only its own rows, where torch.cat would copy the whole cache every step. Rows can be
    dropped from the front (v2's short-term window); the live rows are compacted to the front when the
    buffer runs out of room. Only the TimeBuffer that allocated `data` writes into it: a copy (a cache
    forked for several continuations, `copy.copy` or `dataclasses.replace`) moves its rows to a buffer
    of its own at its first append, so forks never see each other's rows. With gradients flowing into
    the new rows, appends concatenate instead (no in-place writes into tensors autograd may have saved).
    """

    data: torch.Tensor | None = None
    start: int = 0  # first live row
    end: int = 0  # one past the last live row
    owner: int = 0  # id() of the TimeBuffer that allocated data

    @property
    def length(self) -> int:
        return self.end - self.start

    def view(self) -> torch.Tensor | None:
        """The live rows (B, H, length, ...), a view into the buffer."""
        return None if self.data is None else self.data[:, :, self.start : self.end]

    def append(self, x: torch.Tensor) -> torch.Tensor:
        """Add rows x (B, H, T, ...) after the live ones; returns every live row."""
        n, T = self.length, x.shape[2]
        if self.data is None or (torch.is_grad_enabled() and x.requires_grad):
            self.data = x if self.data is None else torch.cat([self.view(), x], dim=2)
            self.start, self.end, self.owner = 0, n + T, 0  # nothing spare to write into
            return self.data
        if self.owner != id(self) or self.end + T > self.data.shape[2]:  # a buffer of our own, with room
            grown = x.new_empty(*x.shape[:2], max(64, 2 * (n + T)), *x.shape[3:])
            grown[:, :, :n] = self.view()
            self.data, self.start, self.end, self.owner = grown, 0, n, id(self)
        self.data[:, :, self.end : self.end + T] = x
        self.end += T
        return self.view()

    def drop_front(self, n: int) -> None:
        """Forget the first n live rows."""
        self.start += min(n, self.length)


@dataclasses.dataclass
class LayerKV:
    """Keys and values (B, H, t, D) of every token read so far by one attention layer."""

    k: TimeBuffer = dataclasses.field(default_factory=TimeBuffer)
    v: TimeBuffer = dataclasses.field(default_factory=TimeBuffer)

    @property
    def length(self) -> int:
        return self.k.length


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
        t0 = kv.length  # tokens already in the cache
        k, v = kv.k.append(k), kv.v.append(v)  # (B, H, t0 + T, D)
    return kernels.memory_retrieval(q, k, v, skip=0, q_start=t0, scale=None, dropout_p=dropout_p)
