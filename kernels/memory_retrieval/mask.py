"""The one masking vocabulary of `memory_retrieval`, in absolute positions.

Query t (at absolute position t) sees the key at absolute position j iff

    t - window < j <= t - skip

- `skip=0`: causal (attention: a token reads itself and the past);
- `skip=1`: strictly causal (a memory whose pair j stores x_{j+1} may only be read after t = j + 1);
- `skip=m`: v2's long-term memory, which skips the m most recent pairs;
- `window=h`: v2's short-term memory, the last h - skip pairs only (no lower bound when None);
- `skip=None`: no mask at all (a persistent table; `window` must then be None).

Queries and keys carry their absolute position through `q_start` / `k_start`, so the same words describe
a whole training sequence, a decoding step after a cache, and a block of queries. The reference and the
torch backend build masks only here; the Triton kernels evaluate the same inequality in registers.
"""

from __future__ import annotations

import torch


def visible(q_pos: torch.Tensor, k_pos: torch.Tensor, *, window: int | None, skip: int | None) -> torch.Tensor:
    """(Tq, Tk) bool: query at absolute position q_pos[i] sees the key at k_pos[j]."""
    t, j = q_pos[:, None], k_pos[None, :]
    if skip is None:
        return torch.ones(t.shape[0], j.shape[1], dtype=torch.bool, device=q_pos.device)
    seen = j <= t - skip
    if window is not None:
        seen &= j > t - window
    return seen


def visible_mask(
    n_query: int,
    n_key: int,
    *,
    window: int | None,
    skip: int | None,
    q_start: int = 0,
    k_start: int = 0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """(n_query, n_key) bool for queries at q_start.. and keys at k_start.. (consecutive positions)."""
    q_pos = torch.arange(q_start, q_start + n_query, device=device)
    k_pos = torch.arange(k_start, k_start + n_key, device=device)
    return visible(q_pos, k_pos, window=window, skip=skip)


def key_span(first: int, last: int, *, window: int | None, skip: int | None) -> tuple[int, int]:
    """The absolute key positions [lo, hi] (inclusive) that some query in [first, last] can see."""
    if skip is None:
        return -(2**62), 2**62
    lo = first - window + 1 if window is not None else -(2**62)
    return lo, last - skip
