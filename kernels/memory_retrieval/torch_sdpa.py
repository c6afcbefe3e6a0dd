"""`memory_retrieval` on PyTorch's fused scaled_dot_product_attention (the CPU default).

Shifting queries by `skip` turns "j <= t - skip" into the ordinary causal mask, so SDPA's fused
(flash) kernels apply with `is_causal=True` and nothing T x T is ever materialised. The short-term
window needs an explicit band mask; a (T, T) mask would cost O(T^2) memory, so the queries run in
blocks of `block` rows, each against only the band of keys it can see: a (block, block + window)
mask per call, O(T * window) in all, forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repro.kernels import register
from repro.kernels.memory_retrieval.reference import check_args

BLOCK = 512  # query rows per SDPA call in the windowed case


@register("memory_retrieval", "torch")
def memory_retrieval(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int | None = None,
    skip: int = 1,
    block: int = BLOCK,
) -> torch.Tensor:
    check_args(q, k, v, window, skip)
    B, H, T, _ = q.shape
    empty = v.new_zeros(B, H, min(skip, T), v.shape[-1])  # the first `skip` rows see nothing
    if skip >= T:
        return empty
    n = T - skip
    qs, ks, vs = q[..., skip:, :], k[..., :n, :], v[..., :n, :]  # (B, H, n, *): query i is t = i + skip
    if window is None or window - skip >= n:  # the window never bites: plain causal
        return torch.cat([empty, F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=1.0)], dim=-2)
    width = window - skip  # query i sees keys i - width < j <= i (never empty: j = i is visible)
    outs = [empty]
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        lo = max(0, i0 - width + 1)  # first key any query of the block can see
        i = torch.arange(i0, i1, device=q.device)[:, None]
        j = torch.arange(lo, i1, device=q.device)[None, :]
        band = (j <= i) & (j > i - width)  # (i1 - i0, i1 - lo)
        qb, kb, vb = qs[..., i0:i1, :], ks[..., lo:i1, :], vs[..., lo:i1, :]
        outs.append(F.scaled_dot_product_attention(qb, kb, vb, attn_mask=band, scale=1.0))
    return torch.cat(outs, dim=-2)
