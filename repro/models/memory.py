"""The associative memory every Memory Mosaic is built from.

An associative memory stores key/value pairs (k_j, v_j) and answers a query q with Gaussian kernel
smoothing:

    f(q) = sum_j exp(-beta/2 |q - k_j|^2) v_j / sum_j exp(-beta/2 |q - k_j|^2)

Expanding the square, exp(-beta/2 |q - k_j|^2) is proportional (over j) to exp(beta (q.k_j - |k_j|^2/2)).
When every key has the same norm (L2-normalised keys), the |k_j|^2 term is constant and the memory is
exactly softmax attention with scale beta. With raw keys we keep the exact Gaussian by appending one
coordinate: q' = [q, -1/2], k' = [k, |k|^2] gives q'.k' = q.k - |k|^2/2. Either way the retrieval
itself is one call to the `memory_retrieval` kernel (strictly causal by default: query t reads only
pairs j < t), in training, decoding and long evaluation alike; the masks are the kernels' vocabulary
(`repro.kernels.memory_retrieval.mask`).
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
    skip: int | None = 1,
    q_start: int = 0,
    k_start: int = 0,
    dropout_p: float = 0.0,
    query_chunk: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Retrieve from the causal memory of pairs (k_j, v_j), t - window < j <= t - skip, for each
    query q_t.

    q: (B, H, Tq, D) at absolute positions q_start..; k: (B, H, Tk, D), v: (B, H, Tk, Dv) at
    k_start.. (the same positions in training; the new tokens and the cache when decoding). beta: a
    float, a per-head (H,) tensor, or a per-query (B, H, Tq) tensor (v2's adaptive bandwidth).
    `normalize` L2-normalises queries and keys. `kernel="gaussian"` is exact Gaussian smoothing;
    `kernel="dot"` drops the |k_j|^2 term (softmax(beta q.k), as the official three-moons code does
    with raw keys). dropout_p, query_chunk: see `kernels.memory_retrieval`. Returns (B, H, Tq, Dv).
    """
    q, k = _prepare(q, k, beta, normalize, kernel)
    return kernels.memory_retrieval(
        q, k, v, window=window, skip=skip, q_start=q_start, k_start=k_start, dropout_p=dropout_p,
        query_chunk=query_chunk, backend=backend,
    )  # fmt: skip


def recall_all(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: float | torch.Tensor,
    *,
    normalize: bool = True,
    kernel: Kernel = "gaussian",
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Every query reads every stored pair, with no mask (skip=None): a persistent table, or a
    decoding cache that holds exactly the pairs visible to the new queries.

    q: (B, H, Tq, D); k: (B, H, N, D) or (H, N, D) for a table shared by the batch; v likewise with
    Dv. Returns (B, H, Tq, Dv); zeros when the memory is empty (N = 0).
    """
    if k.dim() == 3:  # a (H, N, D) table shared by the batch: the batch's queries read it as one sequence
        B, H, T, _ = q.shape
        if isinstance(beta, torch.Tensor) and beta.dim() == 3:  # per query (B, H, T) -> (1, H, B T)
            beta = beta.transpose(0, 1).reshape(1, H, B * T)
        if B > 1:
            q = q.transpose(0, 1).reshape(1, H, B * T, q.shape[-1])  # (B, H, T, D) -> (1, H, B T, D)
        y = associative_recall(q, k[None], v[None], beta, normalize=normalize, kernel=kernel, skip=None,
                               dropout_p=dropout_p)  # fmt: skip
        return y if B == 1 else y.view(H, B, T, v.shape[-1]).transpose(0, 1)  # (1, H, B T, Dv) -> (B, H, T, Dv)
    return associative_recall(q, k, v, beta, normalize=normalize, kernel=kernel, skip=None, dropout_p=dropout_p)


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
