"""Kernels, behind one dispatch.

Each op lives in `kernels/<op>/`: `reference.py` is the specification (plain PyTorch, float32 math,
every mask materialised), further files are fast paths registered under a backend name. Models call
only the public functions below. Backends:

- `reference`: the specification itself (slow, for tests and debugging);
- `torch`: exact PyTorch compositions built on fused torch ops (SDPA), the CPU default;
- `triton`: GPU kernels (used automatically on CUDA when triton imports; the `gpu` extra). On CPU
  they run only under `TRITON_INTERPRET=1`, for the tests.

Ops: `memory_retrieval` (causal softmax retrieval with the Memory Mosaics masks) and `leaky_scan`
(the gated leaky average that makes the keys). `choices()` gives the backend each op would use now.

The choice per call: the explicit `backend=` argument, then the `REPRO_KERNELS` environment
variable, then auto. It is recorded in each run's `env.json`.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import torch

from repro.errors import UserError

BACKENDS = ("reference", "torch", "triton")
_IMPLS: dict[str, dict[str, Callable]] = {}


def register(op: str, backend_name: str) -> Callable[[Callable], Callable]:
    if backend_name not in BACKENDS:
        raise ValueError(f"unknown backend {backend_name!r}")

    def deco(fn: Callable) -> Callable:
        _IMPLS.setdefault(op, {})[backend_name] = fn
        return fn

    return deco


def _triton_usable() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None


def backend(explicit: str | None = None, op: str | None = None) -> str:
    """The backend a call will use (explicit > REPRO_KERNELS > auto)."""
    choice = explicit or os.environ.get("REPRO_KERNELS") or "auto"
    if choice == "auto":
        has_triton = op is None or "triton" in _IMPLS.get(op, {})
        return "triton" if has_triton and _triton_usable() and op is not None else "torch"
    if choice not in BACKENDS:
        raise UserError(f"REPRO_KERNELS={choice} is not a kernel backend; choose one of {', '.join(BACKENDS)}.")
    return choice


def implementation(op: str, explicit: str | None = None) -> Callable:
    name = backend(explicit, op)
    impls = _IMPLS[op]
    if name not in impls:
        raise UserError(
            f"kernel '{op}' has no '{name}' implementation (it has {', '.join(sorted(impls))}); "
            "unset REPRO_KERNELS or choose another backend."
        )
    return impls[name]


def choices() -> dict[str, str]:
    """The backend each op would use now (for a run's env.json)."""
    return {op: backend(op=op) for op in sorted(_IMPLS)}


import repro.kernels.leaky_scan  # noqa: E402, F401  (registers the ops' backends)
import repro.kernels.memory_retrieval  # noqa: E402, F401


def memory_retrieval(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int | None = None,
    skip: int = 1,
    backend: str | None = None,
) -> torch.Tensor:
    """Causal softmax retrieval: out_t = sum_{j in S(t)} softmax_j(q_t . k_j) v_j.

    q, k: (B, H, T, D); v: (B, H, T, Dv). The bandwidth is folded into q by the caller.
    S(t) = {j : t - window < j <= t - skip} (no lower bound when window is None). skip=1 is the
    strictly causal memory; rows with an empty S(t) return zeros.
    """
    return implementation("memory_retrieval", backend)(q, k, v, window=window, skip=skip)


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


__all__ = ["BACKENDS", "backend", "choices", "implementation", "leaky_scan", "memory_retrieval", "register"]
