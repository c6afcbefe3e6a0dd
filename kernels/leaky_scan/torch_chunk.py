"""`leaky_scan` in chunks of PyTorch ops (the CPU default).

Inside a chunk of C steps the recurrence is a (C x C) lower-triangular matmul,
y_t = sum_{tau <= t} (prod_{tau < s <= t} lam_s) g_tau x_tau, whose decay products come from a
cumulative product (exact for lam = 0, no logarithms); all chunks run at once. Across chunks a short
loop carries the state: s_{c+1} = y_local[c, -1] + (prod_{t in c} lam_t) s_c. Memory O(T * (C + D)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repro.kernels.dispatch import register
from repro.kernels.leaky_scan.reference import check_args, expand_gates

CHUNK = 64


@register("leaky_scan", "torch")
def leaky_scan(
    x: torch.Tensor,
    g: torch.Tensor | None,
    lam: torch.Tensor | float,
    state: torch.Tensor | None = None,
    chunk: int = CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_args(x, state)
    B, H, T, D = x.shape
    g, lam = expand_gates(x, g, lam)
    dtype = g.dtype
    with torch.autocast(x.device.type, enabled=False):
        h = x.new_zeros(B, H, D, dtype=dtype) if state is None else state.to(dtype)
        if T == 0:
            return x.new_zeros(B, H, 0, D, dtype=dtype), h
        C = max(1, min(chunk, T))
        N = -(-T // C)  # chunks
        pad = N * C - T  # padded steps: u = 0, lam = 1, so the state passes through them unchanged
        u = F.pad(g[..., None] * x.to(dtype), (0, 0, 0, pad)).view(B, H, N, C, D)
        a = F.pad(lam, (0, pad), value=1.0).view(B, H, N, C)
        i = torch.arange(C, device=x.device)
        below = i[:, None] > i[None, :]  # (C, C): t > tau
        steps = torch.where(below, a[..., :, None], torch.ones((), dtype=dtype, device=x.device))  # (B, H, N, C, C)
        decay = torch.cumprod(steps, dim=-2).masked_fill(i[:, None] < i[None, :], 0.0)  # prod_{tau<s<=t} lam_s
        local = decay @ u  # (B, H, N, C, D): the scan of each chunk from a zero state
        carry = torch.cumprod(a, dim=-1)  # (B, H, N, C): prod_{s<=t} lam_s inside the chunk
        states = []
        for c in range(N):  # state entering each chunk
            states.append(h)
            h = local[:, :, c, -1] + carry[:, :, c, -1, None] * h
        y = local + carry[..., None] * torch.stack(states, dim=2)[:, :, :, None, :]
        return y.view(B, H, N * C, D)[:, :, :T], h
