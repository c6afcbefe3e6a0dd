"""The one kernel dispatch: which implementation serves each call of an op (see `repro.kernels`).

Backends register here (`register(op, backend)`); `implementation(op, explicit)` picks one per call:
the explicit argument, then `REPRO_KERNELS`, then auto (Triton on CUDA when it imports; on a CPU-only
machine the C loops where an op has one and a C compiler is found; torch otherwise), and counts the
call in `CALLS`.
"""

from __future__ import annotations

import collections
import importlib.util
import os
from collections.abc import Callable

import torch

import repro.kernels.native as native
from repro.errors import UserError

BACKENDS = ("reference", "torch", "triton", "c")
_IMPLS: dict[str, dict[str, Callable]] = {}
_NO_DROPOUT: set[tuple[str, str]] = set()  # (op, backend) pairs without attention dropout
CALLS: collections.Counter = collections.Counter()  # (op, backend) -> calls served, for tests and checks


def register(op: str, backend_name: str, *, dropout: bool = True) -> Callable[[Callable], Callable]:
    """Register `fn` as `op`'s implementation on `backend_name`; dropout=False: it has no attention
    dropout (the dispatch then serves calls with dropout elsewhere, see the module docstring)."""
    if backend_name not in BACKENDS:
        raise ValueError(f"unknown backend {backend_name!r}")

    def deco(fn: Callable) -> Callable:
        _IMPLS.setdefault(op, {})[backend_name] = fn
        if not dropout:
            _NO_DROPOUT.add((op, backend_name))
        return fn

    return deco


def _triton_usable() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None


def backend(explicit: str | None = None, op: str | None = None) -> str:
    """The backend a call will use (explicit > REPRO_KERNELS > auto)."""
    choice = explicit or os.environ.get("REPRO_KERNELS") or "auto"
    if choice == "auto":
        impls = _IMPLS.get(op, {}) if op is not None else {}
        if "triton" in impls and _triton_usable():
            return "triton"
        if "c" in impls and not torch.cuda.is_available() and native.usable():
            return "c"
        return "torch"
    if choice not in BACKENDS:
        raise UserError(f"REPRO_KERNELS={choice} is not a kernel backend; choose one of {', '.join(BACKENDS)}.")
    return choice


def implementation(op: str, explicit: str | None = None, *, dropout: bool = False) -> Callable:
    """The function that serves this call of `op` (counted in CALLS)."""
    name = backend(explicit, op)
    impls = _IMPLS[op]
    if name == "c" and "c" not in impls:  # the C loops cover some ops; the rest run on torch beside them
        name = "torch"
    if name not in impls:
        raise UserError(
            f"kernel '{op}' has no '{name}' implementation (it has {', '.join(sorted(impls))}); "
            "unset REPRO_KERNELS or choose another backend."
        )
    if dropout and (op, name) in _NO_DROPOUT:
        if explicit or os.environ.get("REPRO_KERNELS"):
            raise UserError(
                f"kernel '{op}' has no attention dropout on the '{name}' backend; set the model's dropout "
                "to 0 or choose REPRO_KERNELS=torch."
            )
        name = "torch"
    CALLS[op, name] += 1
    return impls[name]


def choices() -> dict[str, str]:
    """The backend each op would use now (for a run's env.json)."""
    return {op: backend(op=op) for op in sorted(_IMPLS)}
