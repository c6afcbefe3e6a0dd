"""Kernels, behind one dispatch.

Each op lives in `kernels/<op>/`: `reference.py` is the specification (plain PyTorch, float32 math,
every mask materialised), further files are fast paths registered under a backend name. Models call
only the public functions below. Backends:

- `reference`: the specification itself (slow, for tests and debugging);
- `torch`: exact PyTorch compositions built on fused torch ops (SDPA), the CPU default where an op
  has no `c` backend or no C compiler is found;
- `c`: small C loops for the CPU, compiled at first use with the system compiler (`native.py`) into
  a cache outside the source tree, the CPU default when a compiler is on PATH; calls a loop does not
  cover, and every call when no compiler is found or the build fails, run on `torch`;
- `triton`: GPU kernels (used automatically on CUDA when triton imports; the `gpu` extra). On CPU
  they run only under `TRITON_INTERPRET=1`, for the tests.

Ops: `memory_retrieval` (softmax retrieval under the one masking vocabulary of
`memory_retrieval/mask.py`: causal, strictly causal, window, skip, at any query/key offset; every
associative memory and every attention layer calls it, in training, decoding and long evaluation) and
`leaky_scan` (the gated leaky average that makes the keys). `choices()` gives the backend each op would
use now; `CALLS` counts the calls each backend served.

The choice per call: the explicit `backend=` argument, then the `REPRO_KERNELS` environment
variable, then auto. It is recorded in each run's `env.json`. One exception to auto: a call with
attention dropout goes to the torch backend when the automatic choice (Triton) has no dropout; an
explicit choice without dropout is an error instead.
"""

from __future__ import annotations

import torch

import repro.kernels.leaky_scan  # noqa: F401  (registers the ops' backends)
import repro.kernels.memory_retrieval  # noqa: F401
from repro.kernels.dispatch import BACKENDS, CALLS, backend, choices, implementation, register


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
    backend: str | None = None,
) -> torch.Tensor:
    """Masked softmax retrieval: out_t = sum_{j in S(t)} softmax_j(scale q_t . k_j) v_j.

    q: (B, H, Tq, D) at absolute positions q_start..; k: (B, H, Tk, D) and v: (B, H, Tk, Dv) at
    k_start.. (a decoding step passes its new queries and the whole cache). S(t) = {j : t - window <
    j <= t - skip} (`memory_retrieval/mask.py`): skip=0 causal, skip=1 strictly causal, skip=m v2's
    long-term memory, window=h v2's short-term memory, skip=None no mask (a persistent table). Rows
    with an empty S(t) return zeros. scale=1: memories fold their bandwidth into q; scale=None:
    attention's 1/sqrt(D). dropout_p: on the attention weights (training). query_chunk: process at
    most this many queries at once, so memory stays O(chunk x Tk) (long inputs without gradients).
    """
    impl = implementation("memory_retrieval", backend, dropout=dropout_p > 0)
    return impl(
        q, k, v, window=window, skip=skip, q_start=q_start, k_start=k_start, scale=scale, dropout_p=dropout_p,
        query_chunk=query_chunk,
    )  # fmt: skip


def leaky_scan(
    x: torch.Tensor,
    g: torch.Tensor | None,
    lam: torch.Tensor | float,
    state: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated leaky average: y_t = g_t * x_t + lam_t * y_{t-1}, with y_{-1} = state (zeros if None).

    x: (B, H, T, D). g: (B, H, T) per-position input gates (v2's exp(W_g x_t)), or None for 1.
    lam: (B, H, T) per-position decays in [0, 1] (v2's exp(-|W_lam x_t|)); or a per-head (H,)
    tensor, constant over time (v1: lam_h = exp(-decay_rate_h)); or a float. state: (B, H, D).
    Returns y (B, H, T, D) and the final state y_{T-1} (B, H, D), both float32 (the state is always
    accumulated in float32; float64 inputs stay float64 on the reference and torch backends).
    Differentiable in x, g, lam and state.
    """
    return implementation("leaky_scan", backend)(x, g, lam, state)


__all__ = ["BACKENDS", "CALLS", "backend", "choices", "implementation", "leaky_scan", "memory_retrieval", "register"]
