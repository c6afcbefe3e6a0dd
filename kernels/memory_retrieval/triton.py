"""`memory_retrieval` in Triton: flash-style forward and backward with the Memory Mosaics masks.

    out[t] = sum_{j in S(t)} softmax_j(q_t . k_j) v_j,   S(t) = {j : t - window < j <= t - skip}

The bandwidth (v1's fixed beta, v2's per-query beta(n)) is already folded into q (attention's
1/sqrt(D) is folded in by the wrapper), so this is a dot-product retrieval with a banded causal mask.
Queries and keys may have different lengths and start at different absolute positions (decoding after
a cache, `mask.py`): the wrapper turns the positions into row offsets, so SKIP and WINDOW may be
negative inside the kernels, and a table read without a mask is SKIP = -Tk.
Nothing T x T is stored: the forward runs an online softmax over key blocks and keeps one log-sum-
exp per row (fp32); the backward recomputes the probabilities block by block (FlashAttention-2
split: one kernel for dK/dV looping over queries, one for dQ looping over keys). Each program visits
only the key (or query) blocks that intersect its band, so the short-term window costs O(T * window)
and the long-term skip drops the blocks it hides; blocks wholly inside the band skip the mask.
Rows whose visible set is empty (t < skip) return 0 and receive no gradient. Attention dropout is not
implemented here; the dispatch serves those calls with the torch backend.

Inputs may be fp32, fp16 or bf16 (q, k and v share one dtype); every accumulation is fp32, and fp32
inputs use IEEE fp32 dot products (no TF32). The launchers are wrapped as `torch.library.custom_op`s
with fake (meta) implementations and a registered autograd formula, so `torch.compile` traces around
them as opaque ops. On CPU they run only under `TRITON_INTERPRET=1` (the tests).
"""

from __future__ import annotations

import collections
import os

import torch
import triton
import triton.language as tl

from repro.kernels.dispatch import register
from repro.kernels.memory_retrieval.reference import check_args, softmax_scale

LAUNCHES: collections.Counter = collections.Counter()  # kernel launches per kind, for the tests
NEG = tl.constexpr(-1.0e30)  # a finite "-inf" for the running max: fully masked blocks never give inf - inf


@triton.jit
def _visible(offs_m, offs_n, TQ, TK, WINDOW, SKIP, HAS_WINDOW: tl.constexpr):
    """(M, N) bool: query row offs_m (< TQ) sees key row offs_n (< TK). SKIP and WINDOW are relative to
    the rows (the wrapper subtracts the queries' offset), so they may be negative after a cache."""
    vis = (offs_n[None, :] <= offs_m[:, None] - SKIP) & (offs_n[None, :] < TK) & (offs_m[:, None] < TQ)
    if HAS_WINDOW:
        vis = vis & (offs_n[None, :] > offs_m[:, None] - WINDOW)
    return vis


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b with fp32 accumulation. UPCAST: Triton 3.7's interpreter gets bf16 dots wrong, so under
    TRITON_INTERPRET the (already bf16-rounded) operands are widened to fp32 first (PRECISION is then
    "ieee")."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _load(P, rows, cols, n_rows, n_cols):
    """The (rows, cols) tile of a row-major (n_rows, n_cols) matrix, zero outside it."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(P + rows[:, None] * n_cols + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _store(P, x, rows, cols, n_rows, n_cols):
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    tl.store(P + rows[:, None] * n_cols + cols[None, :], x.to(P.dtype.element_ty), mask=mask)


@triton.jit
def _key_ranges(m0, TK, WINDOW, SKIP, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key blocks for the queries [m0, m0 + BLOCK_M): [lo, edge) and [full_hi, hi) meet a mask edge,
    [full_lo, full_hi) are visible to every query of the block, lie wholly below TK, and skip the mask.
    Numerators are clamped at 0 before dividing (Triton's integer division truncates toward 0)."""
    hi = tl.minimum(TK, m0 + BLOCK_M - SKIP)  # keys past the last query's band are never visible
    full_hi = tl.maximum(m0 - SKIP + 1, 0) // BLOCK_N * BLOCK_N  # blocks wholly <= m0 - skip
    full_hi = tl.minimum(full_hi, TK // BLOCK_N * BLOCK_N)  # ... and wholly inside the keys
    lo = 0
    full_lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(m0 - WINDOW + 1, 0) // BLOCK_N * BLOCK_N  # first block meeting the band
        full_lo = tl.cdiv(tl.maximum(m0 + BLOCK_M - WINDOW, 0), BLOCK_N) * BLOCK_N  # wholly > last t - window
    full_hi = tl.maximum(full_hi, full_lo)
    return lo, tl.minimum(full_lo, hi), full_lo, full_hi, hi


@triton.jit
def _query_ranges(n0, TQ, WINDOW, SKIP, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query blocks that see the keys [n0, n0 + BLOCK_N), split like `_key_ranges`."""
    lo = tl.maximum(n0 + SKIP, 0) // BLOCK_M * BLOCK_M  # the first query that sees key n0 is t = n0 + skip
    full_lo = tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 + SKIP, 0), BLOCK_M) * BLOCK_M  # wholly >= last key + skip
    hi = TQ
    full_hi = TQ  # rows past TQ in the last block load do = 0 and contribute nothing
    if HAS_WINDOW:
        hi = tl.minimum(TQ, n0 + BLOCK_N - 1 + WINDOW)  # the last key is seen up to t = j + window - 1
        full_hi = tl.maximum(n0 + WINDOW, 0) // BLOCK_M * BLOCK_M  # blocks wholly < first key + window
    full_hi = tl.maximum(full_hi, full_lo)
    return lo, tl.minimum(full_lo, hi), full_lo, full_hi, hi


@triton.jit
def _fwd_inner(
    acc, l_i, m_i, q, K, V, offs_m, offs_d, offs_dv, start, stop, TQ, TK, D, DV, WINDOW, SKIP,
    HAS_WINDOW: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    for n0 in range(start, stop, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = _load(K, offs_n, offs_d, TK, D)
        v = _load(V, offs_n, offs_dv, TK, DV)
        s = _dot(q, tl.trans(k), PRECISION, UPCAST)  # (M, N) fp32
        if MASKED:
            s = tl.where(_visible(offs_m, offs_n, TQ, TK, WINDOW, SKIP, HAS_WINDOW), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])  # masked entries: exp(-inf) = 0
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION, UPCAST)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(
    Q, K, V, OUT, LSE, TQ, TK, D, DV, WINDOW, SKIP,
    HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    Q += bh * TQ * D
    K += bh * TK * D
    V += bh * TK * DV
    OUT += bh * TQ * DV
    LSE += bh * TQ

    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = _load(Q, offs_m, offs_d, TQ, D)

    m_i = tl.full([BLOCK_M], NEG, dtype=tl.float32)  # running row max
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running softmax denominator
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    lo, edge, full_lo, full_hi, hi = _key_ranges(m0, TK, WINDOW, SKIP, HAS_WINDOW, BLOCK_M, BLOCK_N)
    args = (q, K, V, offs_m, offs_d, offs_dv)
    sizes = (TQ, TK, D, DV, WINDOW, SKIP, HAS_WINDOW)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, *args, lo, edge, *sizes, True, BLOCK_N, PRECISION, UPCAST)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, *args, full_lo, full_hi, *sizes, False, BLOCK_N, PRECISION, UPCAST)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, *args, full_hi, hi, *sizes, True, BLOCK_N, PRECISION, UPCAST)

    empty = l_i == 0.0  # nothing visible: output 0, log-sum-exp 0 (never used, every p is masked)
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, 0.0, m_i + tl.log(tl.where(empty, 1.0, l_i)))
    _store(OUT, out, offs_m, offs_dv, TQ, DV)
    tl.store(LSE + offs_m, lse, mask=offs_m < TQ)


@triton.jit
def _dkdv_inner(
    dk, dv, k, v, Q, DO, LSE, DELTA, offs_n, offs_d, offs_dv, start, stop, TQ, TK, D, DV, WINDOW, SKIP,
    HAS_WINDOW: tl.constexpr, MASKED: tl.constexpr, BLOCK_M: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    for m0 in range(start, stop, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        q = _load(Q, offs_m, offs_d, TQ, D)
        do = _load(DO, offs_m, offs_dv, TQ, DV)
        lse = tl.load(LSE + offs_m, mask=offs_m < TQ, other=0.0)
        delta = tl.load(DELTA + offs_m, mask=offs_m < TQ, other=0.0)
        s = _dot(q, tl.trans(k), PRECISION, UPCAST)  # (M, N)
        p = tl.exp(s - lse[:, None])
        if MASKED:
            p = tl.where(_visible(offs_m, offs_n, TQ, TK, WINDOW, SKIP, HAS_WINDOW), p, 0.0)
        dv += _dot(tl.trans(p.to(do.dtype)), do, PRECISION, UPCAST)
        dp = _dot(do, tl.trans(v), PRECISION, UPCAST)  # (M, N)
        ds = p * (dp - delta[:, None])
        dk += _dot(tl.trans(ds.to(q.dtype)), q, PRECISION, UPCAST)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV_, TQ, TK, D, DV, WINDOW, SKIP,
    HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    Q += bh * TQ * D
    K += bh * TK * D
    DK += bh * TK * D
    V += bh * TK * DV
    DO += bh * TQ * DV
    DV_ += bh * TK * DV
    LSE += bh * TQ
    DELTA += bh * TQ

    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = _load(K, offs_n, offs_d, TK, D)
    v = _load(V, offs_n, offs_dv, TK, DV)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    lo, edge, full_lo, full_hi, hi = _query_ranges(n0, TQ, WINDOW, SKIP, HAS_WINDOW, BLOCK_M, BLOCK_N)
    args = (k, v, Q, DO, LSE, DELTA, offs_n, offs_d, offs_dv)
    sizes = (TQ, TK, D, DV, WINDOW, SKIP, HAS_WINDOW)
    dk, dv = _dkdv_inner(dk, dv, *args, lo, edge, *sizes, True, BLOCK_M, PRECISION, UPCAST)
    dk, dv = _dkdv_inner(dk, dv, *args, full_lo, full_hi, *sizes, False, BLOCK_M, PRECISION, UPCAST)
    dk, dv = _dkdv_inner(dk, dv, *args, full_hi, hi, *sizes, True, BLOCK_M, PRECISION, UPCAST)
    _store(DK, dk, offs_n, offs_d, TK, D)
    _store(DV_, dv, offs_n, offs_dv, TK, DV)


@triton.jit
def _dq_inner(
    dq, q, do, lse, delta, K, V, offs_m, offs_d, offs_dv, start, stop, TQ, TK, D, DV, WINDOW, SKIP,
    HAS_WINDOW: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    for n0 in range(start, stop, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = _load(K, offs_n, offs_d, TK, D)
        v = _load(V, offs_n, offs_dv, TK, DV)
        s = _dot(q, tl.trans(k), PRECISION, UPCAST)
        p = tl.exp(s - lse[:, None])
        if MASKED:
            p = tl.where(_visible(offs_m, offs_n, TQ, TK, WINDOW, SKIP, HAS_WINDOW), p, 0.0)
        dp = _dot(do, tl.trans(v), PRECISION, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, PRECISION, UPCAST)
    return dq


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, TQ, TK, D, DV, WINDOW, SKIP,
    HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    Q += bh * TQ * D
    K += bh * TK * D
    DQ += bh * TQ * D
    V += bh * TK * DV
    DO += bh * TQ * DV
    LSE += bh * TQ
    DELTA += bh * TQ

    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = _load(Q, offs_m, offs_d, TQ, D)
    do = _load(DO, offs_m, offs_dv, TQ, DV)
    lse = tl.load(LSE + offs_m, mask=offs_m < TQ, other=0.0)
    delta = tl.load(DELTA + offs_m, mask=offs_m < TQ, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo, edge, full_lo, full_hi, hi = _key_ranges(m0, TK, WINDOW, SKIP, HAS_WINDOW, BLOCK_M, BLOCK_N)
    args = (q, do, lse, delta, K, V, offs_m, offs_d, offs_dv)
    sizes = (TQ, TK, D, DV, WINDOW, SKIP, HAS_WINDOW)
    dq = _dq_inner(dq, *args, lo, edge, *sizes, True, BLOCK_N, PRECISION, UPCAST)
    dq = _dq_inner(dq, *args, full_lo, full_hi, *sizes, False, BLOCK_N, PRECISION, UPCAST)
    dq = _dq_inner(dq, *args, full_hi, hi, *sizes, True, BLOCK_N, PRECISION, UPCAST)
    _store(DQ, dq, offs_m, offs_d, TQ, D)


def _config(q: torch.Tensor, D: int, DV: int) -> dict:
    """Block sizes and launch options. The interpreter runs each program in numpy, so small blocks
    keep the tests fast and still cover several blocks per row; on a GPU, the usual flash tiles."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1" or q.device.type == "cpu"
    upcast = interpret and q.dtype == torch.bfloat16
    cfg = {
        "BLOCK_D": max(16, triton.next_power_of_2(D)),
        "BLOCK_DV": max(16, triton.next_power_of_2(DV)),
        # fp32 inputs: exact fp32 products, no TF32; the setting is ignored for 16-bit inputs
        "PRECISION": "ieee" if q.dtype == torch.float32 or upcast else "tf32",
        "UPCAST": upcast,
    }
    if interpret:
        return {**cfg, "BLOCK_M": 32, "BLOCK_N": 32}
    big = max(cfg["BLOCK_D"], cfg["BLOCK_DV"]) > 64 or q.dtype == torch.float32
    if big:
        return {**cfg, "BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
    return {**cfg, "BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}


def _bwd_config(q: torch.Tensor, D: int, DV: int) -> dict:
    cfg = _config(q, D, DV)
    if "num_warps" in cfg:  # GPU: FlashAttention-2's backward tiles (more live tensors than the forward)
        cfg.update(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)
    return cfg


@torch.library.custom_op("repro::memory_retrieval_fwd", mutates_args=())
def _fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None, skip: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv); window and skip relative to the rows.
    Returns out (B, H, Tq, Dv) in v's dtype and the per-row log-sum-exp (B, H, Tq) in fp32."""
    B, H, TQ, D = q.shape
    TK, DV = k.shape[2], v.shape[-1]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty(B, H, TQ, DV, dtype=v.dtype, device=v.device)
    lse = torch.empty(B, H, TQ, dtype=torch.float32, device=q.device)
    cfg = _config(q, D, DV)
    grid = (triton.cdiv(TQ, cfg["BLOCK_M"]), B * H)
    _fwd_kernel[grid](q, k, v, out, lse, TQ, TK, D, DV, window or 0, skip, HAS_WINDOW=window is not None, **cfg)
    LAUNCHES["fwd"] += 1
    return out, lse


@_fwd.register_fake
def _(q, k, v, window, skip):
    return q.new_empty(*q.shape[:-1], v.shape[-1], dtype=v.dtype), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("repro::memory_retrieval_bwd", mutates_args=())
def _bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    window: int | None, skip: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    B, H, TQ, D = q.shape
    TK, DV = k.shape[2], v.shape[-1]
    q, k, v, do = q.contiguous(), k.contiguous(), v.contiguous(), do.contiguous().to(v.dtype)
    delta = (out.float() * do.float()).sum(-1).contiguous()  # (B, H, Tq): rowsum(dO * O) = sum_j p_j dp_j
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    cfg = _bwd_config(q, D, DV)
    common = {"HAS_WINDOW": window is not None, **cfg}
    _bwd_dkdv_kernel[(triton.cdiv(TK, cfg["BLOCK_N"]), B * H)](
        q, k, v, do, lse, delta, dk, dv, TQ, TK, D, DV, window or 0, skip, **common
    )
    _bwd_dq_kernel[(triton.cdiv(TQ, cfg["BLOCK_M"]), B * H)](
        q, k, v, do, lse, delta, dq, TQ, TK, D, DV, window or 0, skip, **common
    )
    LAUNCHES["bwd"] += 1
    return dq, dk, dv


@_bwd.register_fake
def _(do, q, k, v, out, lse, window, skip):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, window, skip = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.window, ctx.skip = window, skip


def _backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _bwd(dout, q, k, v, out, lse, ctx.window, ctx.skip)
    return dq, dk, dv, None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)


@register("memory_retrieval", "triton", dropout=False)
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
    query_chunk: int | None = None,  # the flash loop is O(T) memory already
) -> torch.Tensor:
    """q: (B, H, Tq, D); k: (B, H, Tk, D); v: (B, H, Tk, Dv) -> (B, H, Tq, Dv) in v's dtype (see the
    module docstring and mask.py). No attention dropout: the dispatch sends such calls elsewhere."""
    check_args(q, k, v, window, skip)
    if dropout_p > 0:
        raise ValueError("memory_retrieval[triton] has no attention dropout; use the torch backend for it")
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"memory_retrieval[triton] takes fp32, fp16 or bf16 inputs, got {dtype}")
    TQ, TK = q.shape[-2], k.shape[-2]
    if TQ == 0 or TK == 0:
        return v.new_zeros(*q.shape[:-1], v.shape[-1])
    if scale != 1.0:
        q = q * softmax_scale(scale, q.shape[-1])
    # the kernels compare row indices: move the queries' offset into skip and window (row i of q is
    # absolute position q_start + i, row j of k is k_start + j)
    offset = q_start - k_start
    if skip is None:  # a table: every key is visible to every query
        window, skip = None, -TK
    else:
        skip = skip - offset
        window = None if window is None else window - offset
        if window is not None and window >= TQ + max(skip, 0):  # never bites: the cheaper causal loop
            window = None
    out, _ = _fwd(q.to(dtype), k.to(dtype), v.to(dtype), window, skip)
    return out.to(v.dtype)
