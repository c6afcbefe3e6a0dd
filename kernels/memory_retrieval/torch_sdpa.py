"""`memory_retrieval` on PyTorch's fused scaled_dot_product_attention (the CPU default).

Three paths, all exact (masks from `mask.py`, the one vocabulary):

- no mask (`skip=None`, a persistent table): one SDPA call;
- a whole training sequence, queries and keys at the same positions or with the queries already
  shifted by `skip` (q_start - k_start = skip, as the mosaics call it): shifting turns
  "j <= t - skip" into the ordinary causal mask, so SDPA's fused (flash) kernels apply with
  `is_causal=True` and nothing T x T is materialised. The short-term window needs a band: blocks of
  b >= window queries, each against the 2b keys of its own and the previous block, all in one SDPA
  call under one (b, 2b) band mask, O(T * window) in all, forward and backward;
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

BLOCK = 512  # query rows per SDPA call after a cache
MIN_BAND_BLOCK = 32  # queries per block of the windowed band (at least the window)


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
    whole = query_chunk is None or query_chunk >= Tq
    if whole and Tq == Tk and q_start == k_start:  # a training sequence: shift the queries by skip
        if skip >= Tq:  # every row sees nothing
            return v.new_zeros(*q.shape[:-1], v.shape[-1])
        n = Tq - skip
        out = _shifted(q[..., skip:, :], k[..., :n, :], v[..., :n, :], window, skip, scale, dropout_p)
        return out if skip == 0 else F.pad(out, (0, 0, skip, 0))  # the first `skip` rows see nothing: 0
    if whole and Tq == Tk and q_start - k_start == skip:  # shifted by the caller
        return _shifted(q, k, v, window, skip, scale, dropout_p)
    chunk = query_chunk if query_chunk is not None and query_chunk < Tq else block
    return _chunked(q, k, v, window, skip, q_start, k_start, scale, dropout_p, chunk)


def _shifted(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None,
    skip: int,
    scale: float | None,
    dropout_p: float,
) -> torch.Tensor:
    """Query i (B, H, n, D) reads keys i - (window - skip) < j <= i (B, H, n, *): causal, or a band."""
    n = q.shape[-2]
    if window is None or window - skip >= n:  # the window never bites: plain causal
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, dropout_p=dropout_p)
    return _band(q, k, v, window - skip, scale, dropout_p)


def _band(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, width: int, scale: float | None, p: float) -> torch.Tensor:
    """Query i reads keys i - width < j <= i (B, H, n, *), all blocks in one SDPA call.

    Blocks of b >= width - 1 queries; block m reads the keys of blocks m - 1 and m, (b, 2b) scores
    under one band mask (the first block also masks the padding before key 0), so the work is
    O(n * 2b) and no (n, n) matrix exists, forward or backward. Every row sees its own key."""
    B, H, n, D = q.shape
    b = max(width, MIN_BAND_BLOCK)
    nb = -(-n // b)  # blocks
    # the keys of blocks m - 1 and m for every block m, gathered in one index_select (its backward is one
    # index_add); positions before 0 and after n - 1 are clamped to real keys that the mask hides
    pos = torch.arange(-b, nb * b, device=q.device).view(nb + 1, b)  # (nb + 1, b): block 0 is before key 0
    two = torch.cat([pos[:-1], pos[1:]], dim=1).clamp(0, n - 1).view(-1)  # (nb * 2b,)
    rows = torch.arange(nb * b, device=q.device).clamp(max=n - 1)  # queries, the last repeated to fill
    qb = q if nb * b == n else q.index_select(2, rows)
    r = torch.arange(b, device=q.device)[:, None]  # query row in its block
    c = torch.arange(2 * b, device=q.device)[None, :]  # key column: block m - 1, then block m
    band = (c > r + b - width) & (c <= r + b)  # (b, 2b)
    mask = band.expand(H, nb, b, 2 * b).clone()
    mask[:, 0] &= c >= b  # block 0: no keys before position 0
    # 4-D (heads x blocks as one axis): SDPA's fused CPU kernel takes masks only in 2-D or 4-D
    kb, vb = (x.index_select(2, two).view(B, H * nb, 2 * b, x.shape[-1]) for x in (k, v))
    qb, mask = qb.reshape(B, H * nb, b, D), mask.view(1, H * nb, b, 2 * b)
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale, dropout_p=p)
    return out.reshape(B, H, nb * b, v.shape[-1])[:, :, :n]  # (B, H * nb, b, Dv) -> (B, H, n, Dv)


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
        kk, vv = k[:, :, a - k_start : b - k_start + 1], v[:, :, a - k_start : b - k_start + 1]
        if c == 1:  # one query (a decoding step): its visible keys are exactly [a, b], no mask needed
            outs.append(F.scaled_dot_product_attention(qc, kk, vv, scale=scale, dropout_p=dropout_p))
            continue
        seen = visible_mask(c, b - a + 1, window=window, skip=skip, q_start=q_start + s, k_start=a, device=q.device)
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
