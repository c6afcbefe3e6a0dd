"""`memory_retrieval` on PyTorch's fused scaled_dot_product_attention (the CPU default).

Three paths, all exact (masks from `mask.py`, the one vocabulary):

- no mask (`skip=None`, a persistent table): one SDPA call;
- queries and keys at the same positions (a training sequence): shifting queries by `skip` turns
  "j <= t - skip" into the ordinary causal mask, so SDPA's fused (flash) kernels apply with
  `is_causal=True` and nothing T x T is materialised. The short-term window needs an explicit band:
  queries run in blocks of `block` rows, each against only the band of keys it can see, a
  (block, block + window) mask per call, O(T * window) in all, forward and backward;
- queries after a cache, or any call with `query_chunk` (long inputs without gradients): chunks of
  queries, each against only the keys some query of the chunk can see, with an explicit mask, so
  memory is O(chunk x T). A single query that sees every key it is given takes no mask at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repro.kernels.dispatch import register
from repro.kernels.memory_retrieval.mask import key_span, visible_mask
from repro.kernels.memory_retrieval.reference import check_args

BLOCK = 512  # query rows per SDPA call in the windowed and offset cases


@register("memory_retrieval", "torch")
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
    query_chunk: int | None = None,
    block: int = BLOCK,
) -> torch.Tensor:
    check_args(q, k, v, window, skip)
    Tq, Tk = q.shape[-2], k.shape[-2]
    if Tq == 0 or Tk == 0:
        return v.new_zeros(*q.shape[:-1], v.shape[-1])
    if skip is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, dropout_p=dropout_p)
    if q_start == k_start and Tq == Tk and (query_chunk is None or query_chunk >= Tq):
        return _aligned(q, k, v, window, skip, scale, dropout_p, block)
    chunk = query_chunk if query_chunk is not None and query_chunk < Tq else block
    return _chunked(q, k, v, window, skip, q_start, k_start, scale, dropout_p, chunk)


def _aligned(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None,
    skip: int,
    scale: float | None,
    dropout_p: float,
    block: int,
) -> torch.Tensor:
    """Queries and keys at positions 0..T-1 (B, H, T, *)."""
    B, H, T, _ = q.shape
    if skip >= T:  # every row sees nothing
        return v.new_zeros(B, H, T, v.shape[-1])
    n = T - skip
    qs, ks, vs = q[..., skip:, :], k[..., :n, :], v[..., :n, :]  # (B, H, n, *): query i is t = i + skip
    if window is None or window - skip >= n:  # the window never bites: plain causal
        out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, dropout_p=dropout_p)
        outs = [out]
    else:
        outs = []
        for i0 in range(0, n, block):
            i1 = min(i0 + block, n)
            lo = max(0, i0 - window + skip + 1)  # first key any query of the block can see
            band = visible_mask(
                i1 - i0, i1 - lo, window=window, skip=skip, q_start=i0 + skip, k_start=lo, device=q.device
            )
            qb, kb, vb = qs[..., i0:i1, :], ks[..., lo:i1, :], vs[..., lo:i1, :]
            outs.append(F.scaled_dot_product_attention(qb, kb, vb, attn_mask=band, scale=scale, dropout_p=dropout_p))
    if skip == 0:
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)
    empty = v.new_zeros(B, H, skip, v.shape[-1])  # the first `skip` rows see nothing
    return torch.cat([empty, *outs], dim=-2)


def _chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None,
    skip: int,
    q_start: int,
    k_start: int,
    scale: float | None,
    dropout_p: float,
    chunk: int,
) -> torch.Tensor:
    """Queries at q_start.. (B, H, Tq, D) against keys at k_start.. (B, H, Tk, *), `chunk` queries
    at a time; rows with nothing visible return 0."""
    B, H, Tq, _ = q.shape
    Tk = k.shape[-2]
    outs = []
    for s in range(0, Tq, chunk):
        qc = q[:, :, s : s + chunk]  # (B, H, c, D)
        c = qc.shape[2]
        lo, hi = key_span(q_start + s, q_start + s + c - 1, window=window, skip=skip)
        a, b = max(lo, k_start), min(hi, k_start + Tk - 1)  # the keys this chunk sees, absolute
        if b < a:
            outs.append(v.new_zeros(B, H, c, v.shape[-1]))
            continue
        seen = visible_mask(c, b - a + 1, window=window, skip=skip, q_start=q_start + s, k_start=a, device=q.device)
        kk, vv = k[:, :, a - k_start : b - k_start + 1], v[:, :, a - k_start : b - k_start + 1]
        if c == 1 and bool(seen.all()):  # one decoding step that reads every key it is given
            outs.append(F.scaled_dot_product_attention(qc, kk, vv, scale=scale, dropout_p=dropout_p))
            continue
        empty = ~seen.any(-1, keepdim=True)  # (c, 1)
        out = F.scaled_dot_product_attention(qc, kk, vv, attn_mask=seen | empty, scale=scale, dropout_p=dropout_p)
        outs.append(out.masked_fill(empty, 0.0))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def flash_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain causal SDPA (skip 0, scale 1) forced onto its flash backend: not a backend of the op but
    the yardstick `repro bench kernels` times the backends against (CUDA only)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)
