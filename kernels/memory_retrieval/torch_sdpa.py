"""`memory_retrieval` on PyTorch's fused scaled_dot_product_attention (the CPU default).

Shifting queries by `skip` turns "j <= t - skip" into the ordinary causal mask, so SDPA's fused
kernels apply; the short-term window adds an explicit band mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repro.kernels import register
from repro.kernels.memory_retrieval.reference import check_args


@register("memory_retrieval", "torch")
def memory_retrieval(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int | None = None, skip: int = 1
) -> torch.Tensor:
    check_args(q, k, v, window, skip)
    B, H, T, _ = q.shape
    empty = v.new_zeros(B, H, min(skip, T), v.shape[-1])  # the first `skip` rows see nothing
    if skip >= T:
        return empty
    qs, ks, vs = q[..., skip:, :], k[..., : T - skip, :], v[..., : T - skip, :]  # (B, H, T - skip, *)
    if window is None:
        out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=1.0)
    else:
        i = torch.arange(T - skip, device=q.device)[:, None]
        j = torch.arange(T - skip, device=q.device)[None, :]
        band = (j <= i) & (j > i + skip - window)  # query t = i + skip sees t - window < j <= t - skip
        out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=band, scale=1.0)
    return torch.cat([empty, out], dim=-2)
