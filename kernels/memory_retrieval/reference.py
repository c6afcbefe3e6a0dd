"""Specification of `memory_retrieval`: explicit scores, explicit mask, float32 math."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repro.kernels.dispatch import register
from repro.kernels.memory_retrieval.mask import visible_mask


def check_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None, skip: int | None) -> None:
    """q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv), and a mask in the vocabulary of mask.py."""
    if q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1] or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match")
    if skip is None:
        if window is not None:
            raise ValueError("a window needs a causal mask: give skip >= 0 with it")
        return
    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    if window is not None and window <= skip:
        raise ValueError(f"window ({window}) must exceed skip ({skip}) or every memory is empty")


def softmax_scale(scale: float | None, D: int) -> float:
    """None is attention's usual 1/sqrt(D) (SDPA's default); memories fold their bandwidth into q
    and pass 1."""
    return D**-0.5 if scale is None else scale


@register("memory_retrieval", "reference")
def memory_retrieval(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int | None = None,
    skip: int | None = 1,
    q_start: int = 0,
    k_start: int = 0,
    scale: float | None = 1.0,
    dropout_p: float = 0.0,
    query_chunk: int | None = None,  # a memory bound for the fast paths; the specification ignores it
) -> torch.Tensor:
    check_args(q, k, v, window, skip)
    Tq, Tk = q.shape[-2], k.shape[-2]
    scores = (q.float() @ k.float().transpose(-1, -2)) * softmax_scale(scale, q.shape[-1])  # (B, H, Tq, Tk)
    seen = visible_mask(Tq, Tk, window=window, skip=skip, q_start=q_start, k_start=k_start, device=q.device)
    empty = ~seen.any(-1, keepdim=True)  # (Tq, 1): rows with nothing to retrieve
    scores = scores.masked_fill(~seen, float("-inf")).masked_fill(empty, 0.0)
    weights = torch.softmax(scores, dim=-1).masked_fill(empty, 0.0)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return (weights @ v.float()).to(v.dtype)  # (B, H, Tq, Dv)
