"""Specification of `leaky_scan`: the gated leaky average, one step at a time, float32 state.

    y_t = g_t * x_t + lam_t * y_{t-1},   y_{-1} = state (zeros when None)

x: (B, H, T, D); g, lam: (B, H, T), one scalar gate per head and position (broadcast over D).
Returns y (B, H, T, D) and the final state y_{T-1} (B, H, D), both float32 (float64 stays float64).
"""

from __future__ import annotations

import torch

from repro.kernels.dispatch import register


def expand_gates(
    x: torch.Tensor, g: torch.Tensor | None, lam: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """g, lam as (B, H, T) tensors in the state dtype. g=None means 1 (v1). lam may be a float, a
    per-head (H,) tensor (v1's constant decay exp(-lambda_h)) or anything broadcastable to (B, H, T)."""
    B, H, T, _ = x.shape
    dtype = torch.promote_types(x.dtype, torch.float32)
    if not isinstance(lam, torch.Tensor):
        lam = torch.tensor(float(lam), device=x.device)
    if lam.dim() == 1 and lam.shape[0] == H:  # per head, constant over time
        lam = lam.view(1, H, 1)
    lam = lam.to(dtype).expand(B, H, T)
    g = torch.ones((), dtype=dtype, device=x.device).expand(B, H, T) if g is None else g.to(dtype).expand(B, H, T)
    return g, lam


def check_args(x: torch.Tensor, state: torch.Tensor | None) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be (B, H, T, D), got shape {tuple(x.shape)}")
    if state is not None and state.shape != (x.shape[0], x.shape[1], x.shape[3]):
        raise ValueError(f"state must be (B, H, D) = {(x.shape[0], x.shape[1], x.shape[3])}, got {tuple(state.shape)}")


@register("leaky_scan", "reference")
def leaky_scan(
    x: torch.Tensor, g: torch.Tensor | None, lam: torch.Tensor | float, state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    check_args(x, state)
    B, H, T, D = x.shape
    g, lam = expand_gates(x, g, lam)
    dtype = g.dtype
    with torch.autocast(x.device.type, enabled=False):
        h = x.new_zeros(B, H, D, dtype=dtype) if state is None else state.to(dtype)
        ys = []
        # unbind, not x[:, :, t]: indexing's backward would write a full-size zero gradient per step
        for x_t, g_t, lam_t in zip(x.to(dtype).unbind(2), g.unbind(2), lam.unbind(2), strict=True):
            h = g_t[..., None] * x_t + lam_t[..., None] * h  # (B, H, D)
            ys.append(h)
        y = torch.stack(ys, dim=2) if ys else x.new_zeros(B, H, 0, D, dtype=dtype)
    return y, h
