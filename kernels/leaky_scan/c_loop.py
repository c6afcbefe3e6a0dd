"""`leaky_scan` as a C loop on the CPU (`scan.c`, built by `repro.kernels.native`): the CPU default
when a C compiler is present; without one, or when the build fails, the torch backend serves the call.

One pass over the sequence per (batch, head) with the state in a register-sized buffer, forward and
backward, so a scan costs a few memory passes instead of the torch backend's chunked matmuls, decay
products and per-chunk state loop. Inputs keep their strides: the models' split heads (a (B, T, H, D)
buffer seen as (B, H, T, D)) and v1's per-head decay (a (H,) tensor broadcast to (B, H, T)) are read
in place, and y is laid out like x. float64 inputs go to the torch backend (the C loop is float32).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

import repro.kernels.native as native
from repro.kernels.dispatch import register
from repro.kernels.leaky_scan.reference import check_args
from repro.kernels.leaky_scan.torch_chunk import leaky_scan as torch_leaky_scan

SOURCE = Path(__file__).with_name("scan.c")


def _lib() -> ctypes.CDLL:
    lib = native.load(SOURCE)
    lib.leaky_scan_fwd.restype = lib.leaky_scan_bwd.restype = None
    return lib


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if t is None else t.data_ptr())


def _strides(t: torch.Tensor | None, n: int = 3) -> list[ctypes.c_int64]:
    """The first n element strides (B, H, T) of t; zeros for an absent tensor."""
    return [ctypes.c_int64(0 if t is None else t.stride(i)) for i in range(n)]


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.float()


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _scan(
    x: torch.Tensor, g: torch.Tensor | None, lam: torch.Tensor, state: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, H, T, D), g (B, H, T) or None, lam (B, H, T), state (B, H, D) or None, all float32 ->
    y (B, H, T, D) laid out like x, final (B, H, D)."""
    B, H, T, D = x.shape
    x = _unit_last(x)
    state = None if state is None else state.contiguous()
    y = torch.empty_like(x)
    final = x.new_empty(B, H, D)
    dims = [ctypes.c_int64(n) for n in (B, H, T, D)]
    _lib().leaky_scan_fwd(
        _ptr(x), *_strides(x), _ptr(g), *_strides(g), _ptr(lam), *_strides(lam), _ptr(state),
        _ptr(y), *_strides(y), _ptr(final), *dims,
    )  # fmt: skip
    return y, final


# the op autograd and torch.compile see; a call that needs neither (a decoding step) skips its
# dispatch, which costs more than the loop itself at T = 1
_fwd = torch.library.custom_op("repro::leaky_scan_c_fwd", _scan, mutates_args=())


@_fwd.register_fake
def _(x, g, lam, state):
    B, H, _, D = x.shape
    return torch.empty_like(x), x.new_empty(B, H, D)


@torch.library.custom_op("repro::leaky_scan_c_bwd", mutates_args=())
def _bwd(
    dy: torch.Tensor, dfinal: torch.Tensor, x: torch.Tensor, g: torch.Tensor | None, lam: torch.Tensor,
    state: torch.Tensor | None, y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The gradients (dx laid out like x, dg (B, H, T), zeros when g is None, dlam (B, H, T), dstate)."""
    B, H, T, D = x.shape
    dy, x, y = _unit_last(dy), _unit_last(x), _unit_last(y)
    dfinal = dfinal.contiguous()
    state = None if state is None else state.contiguous()
    dx = torch.empty_like(x)
    dg = x.new_zeros(B, H, T) if g is None else x.new_empty(B, H, T)
    dlam, dstate = x.new_empty(B, H, T), x.new_empty(B, H, D)
    dims = [ctypes.c_int64(n) for n in (B, H, T, D)]
    _lib().leaky_scan_bwd(
        _ptr(dy), *_strides(dy), _ptr(dfinal), _ptr(x), *_strides(x), _ptr(g), *_strides(g),
        _ptr(lam), *_strides(lam), _ptr(state), _ptr(y), *_strides(y), _ptr(dx), *_strides(dx),
        _ptr(None if g is None else dg), _ptr(dlam), _ptr(dstate), *dims,
    )  # fmt: skip
    return dx, dg, dlam, dstate


@_bwd.register_fake
def _(dy, dfinal, x, g, lam, state, y):
    B, H, T, D = x.shape
    return torch.empty_like(x), x.new_empty(B, H, T), x.new_empty(B, H, T), x.new_empty(B, H, D)


def _setup_context(ctx, inputs, output):
    x, g, lam, state = inputs
    ctx.has_g, ctx.has_state = g is not None, state is not None
    ctx.save_for_backward(x, g, lam, state, output[0])


def _backward(ctx, dy, dfinal):
    x, g, lam, state, y = ctx.saved_tensors
    dy = torch.zeros_like(y) if dy is None else dy
    dfinal = x.new_zeros(x.shape[0], x.shape[1], x.shape[3]) if dfinal is None else dfinal
    dx, dg, dlam, dstate = _bwd(dy, dfinal, x, g, lam, state, y)
    return dx, dg if ctx.has_g else None, dlam, dstate if ctx.has_state else None


_fwd.register_autograd(_backward, setup_context=_setup_context)


@register("leaky_scan", "c")
def leaky_scan(
    x: torch.Tensor, g: torch.Tensor | None, lam: torch.Tensor | float, state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    check_args(x, state)
    if x.device.type != "cpu":
        raise ValueError(f"leaky_scan[c] runs on the CPU, got a tensor on {x.device}")
    if x.dtype == torch.float64 or native.library(SOURCE) is None:  # the C loop is float32 and needs a build
        return torch_leaky_scan(x, g, lam, state)
    B, H, T, _ = x.shape
    if not isinstance(lam, torch.Tensor):
        lam = torch.tensor(float(lam))
    if lam.dim() == 1 and lam.shape[0] == H:  # per head, constant over time: read in place (stride 0)
        lam = lam.view(1, H, 1)
    x, g, lam, state = (None if t is None else _f32(t) for t in (x, g, lam, state))
    plain = not torch.compiler.is_compiling() and not (
        torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, g, lam, state))
    )
    if plain and T == 1:  # one decoding step: y = g x + lam state, cheaper in two torch ops than in the loop
        y = x if g is None else x * g[..., None]  # (B, H, 1, D)
        if state is not None:
            y = torch.addcmul(y, lam[..., None], state[:, :, None])
        elif g is None:
            y = y.clone()  # a new tensor, never the input itself
        return y, y[:, :, 0]
    args = (x, None if g is None else g.expand(B, H, T), lam.expand(B, H, T), state)
    if not plain:
        return _fwd(*args)
    return _scan(*args)
