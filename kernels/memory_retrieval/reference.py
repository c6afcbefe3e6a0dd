"""Specification of `memory_retrieval`: explicit scores, explicit mask, float32 math."""

from __future__ import annotations

import torch

from repro.kernels import register


def visible_mask(T: int, *, window: int | None, skip: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, T) bool: query t sees key j iff t - window < j <= t - skip."""
    t = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    visible = j <= t - skip
    if window is not None:
        visible &= j > t - window
    return visible


def check_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None, skip: int) -> None:
    if q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match")
    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    if window is not None and window <= skip:
        raise ValueError(f"window ({window}) must exceed skip ({skip}) or every memory is empty")


@register("memory_retrieval", "reference")
def memory_retrieval(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int | None = None, skip: int = 1
) -> torch.Tensor:
    check_args(q, k, v, window, skip)
    T = q.shape[-2]
    scores = q.float() @ k.float().transpose(-1, -2)  # (B, H, T, T)
    visible = visible_mask(T, window=window, skip=skip, device=q.device)
    empty = ~visible.any(-1, keepdim=True)  # (T, 1): rows with nothing to retrieve
    scores = scores.masked_fill(~visible, float("-inf")).masked_fill(empty, 0.0)
    weights = torch.softmax(scores, dim=-1).masked_fill(empty, 0.0)
    return (weights @ v.float()).to(v.dtype)  # (B, H, T, Dv)
