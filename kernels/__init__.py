"""Kernels, behind one dispatch.

Each op lives in `kernels/<op>/`: `reference.py` is the specification (plain PyTorch, float32 math,
every mask materialised), further files are fast paths registered under a backend name. Models call
only the public functions below. Backends:

- `reference`: the specification itself (slow, for tests and debugging);
- `torch`: exact PyTorch compositions built on fused torch ops (SDPA), the CPU default;
- `triton`: GPU kernels (used automatically on CUDA once an op registers one).

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
        raise UserError(
            f"REPRO_KERNELS={choice} is not a kernel backend; choose one of {', '.join(BACKENDS)}."
        )
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


import repro.kernels.memory_retrieval  # noqa: E402, F401  (registers the op's backends)


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


__all__ = ["BACKENDS", "backend", "implementation", "memory_retrieval", "register"]
