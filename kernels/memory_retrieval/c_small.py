"""`memory_retrieval` as C loops for small head dimensions (`small.c`, built by `repro.kernels.native`).

SDPA's fused CPU kernel is tuned for attention heads of 64 and more; at the three-moons memory's 2 or
6 dimensions its per-block overheads dominate and it runs several times slower than the few vector
passes per query that `small.c` makes. So the `c` backend serves float32 CPU calls with head
dimensions up to SMALL_D and more than one query itself (any mask of mask.py, any offsets, forward
and backward, without attention dropout) and hands every other call to the torch backend: larger
heads, other dtypes, dropout, empty memories, one-query decoding steps (one SDPA call, where the C
path copies the cache: three-moons' evaluation ran 2x slower on it), and any call when no C compiler
is found or the build failed. The batch x heads rows are split across torch's thread count: each
slice is one ctypes call, which releases the GIL.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
from pathlib import Path

import torch

import repro.kernels.native as native
from repro.kernels.dispatch import register
from repro.kernels.memory_retrieval.reference import check_args, softmax_scale
from repro.kernels.memory_retrieval.torch_sdpa import memory_retrieval as torch_retrieval

SOURCE = Path(__file__).with_name("small.c")
SMALL_D = 16  # largest head dimension (queries/keys and values) served here
_POOL = concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="retrieval_c")


def _lib() -> ctypes.CDLL:
    lib = native.load(SOURCE)
    lib.retrieval_fwd.restype = lib.retrieval_bwd.restype = None
    return lib


def _run(fn: ctypes._CFuncPtr, tensors: list[torch.Tensor], BH: int, sizes: list[int], scale: float) -> None:
    """fn(*tensor pointers, bh_lo, bh_hi, *sizes, scale) over slices of the BH rows, in parallel."""
    ptrs = [ctypes.c_void_p(t.data_ptr()) for t in tensors]
    tail = [ctypes.c_int64(n) for n in sizes] + [ctypes.c_float(scale)]
    parts = max(1, min(torch.get_num_threads(), BH))
    bounds = [BH * p // parts for p in range(parts + 1)]
    slices = [(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False) if hi > lo]
    calls = [(*ptrs, ctypes.c_int64(lo), ctypes.c_int64(hi), *tail) for lo, hi in slices]
    if len(calls) == 1:
        fn(*calls[0])
        return
    for f in [_POOL.submit(fn, *c) for c in calls]:
        f.result()


@torch.library.custom_op("repro::retrieval_c_fwd", mutates_args=())
def _fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: int, k_start: int, skip: int, window: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (BH, Tq, D), k (BH, Tk, D), v (BH, Tk, Dv) float32 -> out (BH, Tq, Dv), lse (BH, Tq).
    skip/window < 0: none."""
    BH, Tq, D = q.shape
    Tk, Dv = k.shape[1], v.shape[2]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out, lse = q.new_empty(BH, Tq, Dv), q.new_empty(BH, Tq)
    sizes = [Tq, Tk, D, Dv, q_start, k_start, skip, window]
    _run(_lib().retrieval_fwd, [q, k, v, out, lse], BH, sizes, scale)
    return out, lse


@_fwd.register_fake
def _(q, k, v, q_start, k_start, skip, window, scale):
    return q.new_empty(q.shape[0], q.shape[1], v.shape[2]), q.new_empty(q.shape[0], q.shape[1])


@torch.library.custom_op("repro::retrieval_c_bwd", mutates_args=())
def _bwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor,
    q_start: int, k_start: int, skip: int, window: int, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    BH, Tq, D = q.shape
    Tk, Dv = k.shape[1], v.shape[2]
    dout = dout.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    sizes = [Tq, Tk, D, Dv, q_start, k_start, skip, window]
    _run(_lib().retrieval_bwd, [q, k, v, out, lse, dout, dq, dk, dv], BH, sizes, scale)
    return dq, dk, dv


@_bwd.register_fake
def _(q, k, v, out, lse, dout, q_start, k_start, skip, window, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, *ctx.mask = inputs
    ctx.save_for_backward(q.contiguous(), k.contiguous(), v.contiguous(), *output)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _bwd(q, k, v, out, lse, dout, *ctx.mask)
    return dq, dk, dv, None, None, None, None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)


@register("memory_retrieval", "c")  # calls with dropout go to the torch backend from here
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
    query_chunk: int | None = None,  # memory is O(Tq x D) here whatever the chunk
) -> torch.Tensor:
    small = max(q.shape[-1], v.shape[-1]) <= SMALL_D and q.shape[-2] > 1 and q.device.type == "cpu"
    ours = small and k.shape[-2] > 0 and q.dtype == k.dtype == v.dtype == torch.float32 and dropout_p == 0
    if not ours or native.library(SOURCE) is None:
        return torch_retrieval(q, k, v, window=window, skip=skip, q_start=q_start, k_start=k_start, scale=scale,
                               dropout_p=dropout_p, query_chunk=query_chunk)  # fmt: skip
    check_args(q, k, v, window, skip)
    *batch, Tq, D = q.shape
    flat = [x.reshape(-1, x.shape[-2], x.shape[-1]) for x in (q, k, v)]  # (B, H, T, *) -> (BH, T, *)
    mask = (q_start, k_start, -1 if skip is None else skip, -1 if window is None else window)
    out, _ = _fwd(*flat, *mask, float(softmax_scale(scale, D)))
    return out.view(*batch, Tq, v.shape[-1])
