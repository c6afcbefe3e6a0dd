"""`leaky_scan` in Triton: a chunked parallel scan, forward and backward, fp32 state.

    y_t = g_t * x_t + lam_t * y_{t-1}

One program owns a (batch*head, block of D channels) pair and walks the sequence in chunks of C steps.
Inside a chunk, the affine maps h -> lam_t h + g_t x_t compose with `tl.associative_scan` (the operator
(a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2) is associative, needs no logarithms and is exact for lam = 0);
across chunks the state is carried in registers. Each element of x is read once and each element of y
written once, so the op is bound by memory bandwidth.

The backward is the same scan run in reverse time on the adjoint z_t = dy_t + lam_{t+1} z_{t+1}
(the chunk is loaded back to front, so the forward scan operator applies unchanged), then
dx_t = g_t z_t, dg_t = sum_d z_t x_t, dlam_t = sum_d z_t y_{t-1}, dstate = lam_0 z_0. The reductions
over D are written per block of channels and summed by the launcher.
"""

from __future__ import annotations

import collections
import os

import torch
import triton
import triton.language as tl

from repro.kernels.dispatch import register
from repro.kernels.leaky_scan.reference import check_args, expand_gates

LAUNCHES: collections.Counter = collections.Counter()  # kernel launches per kind, for the tests


@triton.jit
def _compose(a1, b1, a2, b2):
    """Apply h -> a1 h + b1, then h -> a2 h + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _last_row(y, C: tl.constexpr):
    rows = tl.arange(0, C)
    return tl.sum(tl.where(rows[:, None] == C - 1, y, 0.0), axis=0)


@triton.jit
def _fwd_kernel(X, G, L, S0, Y, SF, T, D, C: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_d = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    X += bh * T * D
    Y += bh * T * D
    G += bh * T
    L += bh * T
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    h = tl.load(S0 + bh * D + offs_d, mask=dmask, other=0.0)  # (BLOCK_D,) fp32
    for t0 in range(0, T, C):
        offs_t = t0 + tl.arange(0, C)
        tmask = offs_t < T
        mask = tmask[:, None] & dmask[None, :]
        x = tl.load(X + offs_t[:, None] * D + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        g = tl.load(G + offs_t, mask=tmask, other=0.0)
        lam = tl.load(L + offs_t, mask=tmask, other=1.0)  # past T: identity steps, the state passes through
        a = tl.broadcast_to(lam[:, None], (C, BLOCK_D))
        acum, local = tl.associative_scan((a, g[:, None] * x), 0, _compose)
        y = local + acum * h[None, :]
        tl.store(Y + offs_t[:, None] * D + offs_d[None, :], y, mask=mask)
        h = _last_row(y, C)
    tl.store(SF + bh * D + offs_d, h, mask=dmask)


@triton.jit
def _bwd_kernel(
    X, G, L, S0, Y, DY, DSF, DX, DG, DL, DS0, T, D, BH, C: tl.constexpr, BLOCK_D: tl.constexpr
):  # fmt: skip
    pid_d = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    X += bh * T * D
    Y += bh * T * D
    DY += bh * T * D
    DX += bh * T * D
    G += bh * T
    L += bh * T
    DG += (pid_d * BH + bh) * T  # partial sums over this block of channels: (n_dblocks, B*H, T)
    DL += (pid_d * BH + bh) * T
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    s0 = tl.load(S0 + bh * D + offs_d, mask=dmask, other=0.0)
    z = tl.load(DSF + bh * D + offs_d, mask=dmask, other=0.0)  # adjoint entering from the future
    n_chunks = tl.cdiv(T, C)
    for c in range(0, n_chunks):
        t0 = (n_chunks - 1 - c) * C
        offs_t = t0 + C - 1 - tl.arange(0, C)  # back to front
        tmask = offs_t < T
        mask = tmask[:, None] & dmask[None, :]
        dy = tl.load(DY + offs_t[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
        nxt = tl.load(L + offs_t + 1, mask=offs_t + 1 < T, other=1.0)  # lam_{t+1}; 1 at t = T-1 (z_T = dSF)
        a = tl.broadcast_to(nxt[:, None], (C, BLOCK_D))
        acum, local = tl.associative_scan((a, dy), 0, _compose)
        zt = local + acum * z[None, :]  # (C, BLOCK_D): z_t for the chunk, back to front
        z = _last_row(zt, C)  # z at the chunk's first step
        x = tl.load(X + offs_t[:, None] * D + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        g = tl.load(G + offs_t, mask=tmask, other=0.0)
        prev = tl.load(Y + (offs_t[:, None] - 1) * D + offs_d[None, :], mask=mask & (offs_t[:, None] >= 1), other=0.0)
        prev = tl.where(offs_t[:, None] == 0, s0[None, :], prev)  # y_{-1} = state
        tl.store(DX + offs_t[:, None] * D + offs_d[None, :], (g[:, None] * zt).to(DX.dtype.element_ty), mask=mask)
        tl.store(DG + offs_t, tl.sum(zt * x, axis=1), mask=tmask)
        tl.store(DL + offs_t, tl.sum(zt * prev, axis=1), mask=tmask)
    tl.store(DS0 + bh * D + offs_d, tl.load(L) * z, mask=dmask & (T > 0))


def _config(x: torch.Tensor, D: int) -> dict:
    if os.environ.get("TRITON_INTERPRET") == "1" or x.device.type == "cpu":
        return {"C": 16, "BLOCK_D": min(64, max(16, triton.next_power_of_2(D)))}
    # GPU: 64-step chunks, 32 channels per program so that B*H*D/32 programs fill the machine
    return {"C": 64, "BLOCK_D": 32, "num_warps": 4}


@torch.library.custom_op("repro::leaky_scan_fwd", mutates_args=())
def _fwd(x: torch.Tensor, g: torch.Tensor, lam: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, H, T, D); g, lam (B, H, T) fp32; state (B, H, D) fp32 -> y (B, H, T, D), final (B, H, D), fp32."""
    B, H, T, D = x.shape
    x, g, lam, state = x.contiguous(), g.contiguous(), lam.contiguous(), state.contiguous()
    y = torch.empty(B, H, T, D, dtype=torch.float32, device=x.device)
    final = torch.empty(B, H, D, dtype=torch.float32, device=x.device)
    cfg = _config(x, D)
    _fwd_kernel[(triton.cdiv(D, cfg["BLOCK_D"]), B * H)](x, g, lam, state, y, final, T, D, **cfg)
    LAUNCHES["fwd"] += 1
    return y, final


@_fwd.register_fake
def _(x, g, lam, state):
    B, H, T, D = x.shape
    return x.new_empty(B, H, T, D, dtype=torch.float32), x.new_empty(B, H, D, dtype=torch.float32)


@torch.library.custom_op("repro::leaky_scan_bwd", mutates_args=())
def _bwd(
    dy: torch.Tensor, dfinal: torch.Tensor, x: torch.Tensor, g: torch.Tensor, lam: torch.Tensor,
    state: torch.Tensor, y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    B, H, T, D = x.shape
    cfg = _config(x, D)
    nd = triton.cdiv(D, cfg["BLOCK_D"])
    dy, dfinal, x = dy.float().contiguous(), dfinal.float().contiguous(), x.contiguous()
    dx = torch.empty_like(x)
    dg = torch.empty(nd, B * H, T, dtype=torch.float32, device=x.device)
    dlam = torch.empty(nd, B * H, T, dtype=torch.float32, device=x.device)
    dstate = torch.empty(B, H, D, dtype=torch.float32, device=x.device)
    _bwd_kernel[(nd, B * H)](
        x, g.contiguous(), lam.contiguous(), state.contiguous(), y.contiguous(), dy, dfinal,
        dx, dg, dlam, dstate, T, D, B * H, **cfg,
    )  # fmt: skip
    LAUNCHES["bwd"] += 1
    return dx, dg.sum(0).view(B, H, T), dlam.sum(0).view(B, H, T), dstate


@_bwd.register_fake
def _(dy, dfinal, x, g, lam, state, y):
    return torch.empty_like(x), torch.empty_like(g), torch.empty_like(lam), torch.empty_like(state)


def _setup_context(ctx, inputs, output):
    x, g, lam, state = inputs
    y, _ = output
    ctx.save_for_backward(x, g, lam, state, y)


def _backward(ctx, dy, dfinal):
    x, g, lam, state, y = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(y)
    if dfinal is None:
        dfinal = torch.zeros_like(state)
    return _bwd(dy, dfinal, x, g, lam, state, y)


_fwd.register_autograd(_backward, setup_context=_setup_context)


@register("leaky_scan", "triton")
def leaky_scan(
    x: torch.Tensor, g: torch.Tensor | None, lam: torch.Tensor | float, state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    check_args(x, state)
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"leaky_scan[triton] takes fp32, fp16 or bf16 inputs, got {x.dtype}")
    B, H, T, D = x.shape
    g, lam = expand_gates(x, g, lam)
    state = x.new_zeros(B, H, D, dtype=torch.float32) if state is None else state.float()
    if T == 0:
        return x.new_zeros(B, H, 0, D, dtype=torch.float32), state
    return _fwd(x, g, lam, state)
