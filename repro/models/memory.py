"""The associative memory every Memory Mosaic is built from.

An associative memory stores key/value pairs (k_j, v_j) and answers a query q with Gaussian kernel
smoothing:

    f(q) = sum_j exp(-beta/2 |q - k_j|^2) v_j / sum_j exp(-beta/2 |q - k_j|^2)

Expanding the square, exp(-beta/2 |q - k_j|^2) is proportional (over j) to exp(beta (q.k_j - |k_j|^2/2)).
When every key has the same norm (L2-normalised keys), the |k_j|^2 term is constant and the memory is
exactly softmax attention with scale beta. With raw keys we keep the exact Gaussian by appending one
coordinate: q' = [q, -1/2], k' = [k, |k|^2] gives q'.k' = q.k - |k|^2/2. Either way the retrieval
itself is one call to the `memory_retrieval` kernel (strictly causal by default: query t reads only
pairs j < t).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from repro import kernels

Kernel = Literal["gaussian", "dot"]


def associative_recall(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: float | torch.Tensor,
    *,
    normalize: bool = True,
    kernel: Kernel = "gaussian",
    window: int | None = None,
    skip: int = 1,
    backend: str | None = None,
) -> torch.Tensor:
    """Retrieve from the causal memory of pairs (k_j, v_j), j <= t - skip, for each query q_t.

    q, k: (B, H, T, D); v: (B, H, T, Dv). beta: a float, a per-head (H,) tensor, or a per-query
    (B, H, T) tensor (v2's adaptive bandwidth). `normalize` L2-normalises queries and keys.
    `kernel="gaussian"` is exact Gaussian smoothing; `kernel="dot"` drops the |k_j|^2 term
    (softmax(beta q.k), as the official three-moons code does with raw keys). Returns (B, H, T, Dv).
    """
    q, k = _prepare(q, k, beta, normalize, kernel)
    return kernels.memory_retrieval(q, k, v, window=window, skip=skip, backend=backend)


def recall_all(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: float | torch.Tensor,
    *,
    normalize: bool = True,
    kernel: Kernel = "gaussian",
) -> torch.Tensor:
    """Every query reads every stored pair, with no mask: a persistent table, or a decoding cache
    that holds exactly the pairs visible to the new queries.

    q: (B, H, Tq, D); k: (B, H, N, D) or (H, N, D) for a table shared by the batch; v likewise with
    Dv. Returns (B, H, Tq, Dv); zeros when the memory is empty (N = 0).
    """
    if k.dim() == 3:  # (H, N, D) table -> (B, H, N, D)
        k, v = k.expand(q.shape[0], *k.shape), v.expand(q.shape[0], *v.shape)
    if k.shape[-2] == 0:
        return v.new_zeros(*q.shape[:-1], v.shape[-1])
    q, k = _prepare(q, k, beta, normalize, kernel)
    return F.scaled_dot_product_attention(q, k, v, scale=1.0)


def _prepare(
    q: torch.Tensor, k: torch.Tensor, beta: float | torch.Tensor, normalize: bool, kernel: Kernel
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn Gaussian smoothing into a dot-product softmax: normalise or augment, fold in beta."""
    if normalize:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    elif kernel == "gaussian":
        q = torch.cat([q, q.new_full((*q.shape[:-1], 1), -0.5)], dim=-1)  # (..., D + 1)
        k = torch.cat([k, k.pow(2).sum(-1, keepdim=True)], dim=-1)  # (..., D + 1)
    return q * _bandwidth(beta, q), k


def _bandwidth(beta: float | torch.Tensor, q: torch.Tensor) -> float | torch.Tensor:
    """Broadcast beta against q (B, H, T, D): scalar, per head (H,), or per query (B, H, T)."""
    if not isinstance(beta, torch.Tensor) or beta.dim() == 0:
        return beta
    if beta.dim() == 1:  # (H,) -> (1, H, 1, 1)
        return beta.view(1, -1, 1, 1)
    return beta.unsqueeze(-1)  # (B, H, T) -> (B, H, T, 1)
