"""Memory Mosaics v1 and v2 written as the papers state them: the reference of the models' fast paths.

The models (`mosaic.py`, `mosaic_v2.py`) compute the same functions faster: projections that read the
same input fused into one matmul, sqrt(beta) carried on v1's keys, beta and the value scale applied to
the persistent table instead of every query and output, values only for the T-1 completed pairs and
queries shifted so that the retrieval is causal, v2's two memories run as one set of 2H heads (and a
dropped long-term memory as W_o's first half instead of zeros), v1's 1/sqrt(d) logit scale folded into
the final norm, parameter-only constants kept between no-grad steps. Here each memory is computed
apart, in the papers' formulas, on the `reference` kernels, whole sequences from position 0 (no
cache): tests/test_mosaic_reference.py holds the models to these logits and their gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from repro.models.layers import merge_heads, split_heads
from repro.models.memory import associative_recall
from repro.models.mosaic import EXP_SCALE, MAX_LOG_SCALE, ContextMemory, MemoryMosaic, PersistentMemory, leaky_average
from repro.models.mosaic_v2 import (
    ALPHA_MAX,
    BETA_LOG_MAX,
    GATE_LOG_MAX,
    VALUE_LOG_MAX,
    MemoryMosaicV2,
    MemoryV2,
    MosaicV2Block,
    gated_leaky_scan,
    visible_pairs,
)

REF = "reference"  # the kernels' specification backend


def mosaic_v1_logits(model: MemoryMosaic, idx: torch.Tensor) -> torch.Tensor:
    """idx (B, T) -> logits (B, T, V) of a v1 model in eval mode (no dropout)."""
    x = model.wte(idx)  # (B, T, C)
    for block in model.blocks:
        x = x + _v1_context(block.cmem, block.ln_1(x))
        x = x + _v1_persistent(block.pmem, block.ln_2(x))
    x = model.ln_f(x)
    if model.config.head_scale == "inv_sqrt_width":
        x = x / math.sqrt(model.config.n_embd)
    return model.lm_head(x)


def _v1_keys(keys, x: torch.Tensor) -> torch.Tensor:
    """Unit leaky averages of W_phi x (B, H, T, D)."""
    k = split_heads(keys.proj(x), keys.n_head)  # (B, H, T, D)
    avg, _ = leaky_average(k, EXP_SCALE * keys.leak.abs(), backend=REF)
    return F.normalize(avg, dim=-1)


def _v1_beta(keys) -> torch.Tensor:
    return torch.exp(2 * torch.clamp(EXP_SCALE * keys.bandwidth, max=MAX_LOG_SCALE))  # (H,)


def _v1_context(m: ContextMemory, x: torch.Tensor) -> torch.Tensor:
    """k_t unit, v_j = e^{10 nu} normalize((1 - c) W_psi x_{j+1} + c W_psi x_j); query t reads j < t."""
    k = _v1_keys(m.keys, x)
    u = split_heads(m.value_proj(x), m.n_head)  # (B, H, T, D)
    ahead = F.pad(u[:, :, 1:], (0, 0, 0, 1))  # W_psi x_{t+1}; row T-1 is never read
    c = m.value_mix.view(1, -1, 1, 1)
    v = F.normalize((1 - c) * ahead + c * u, dim=-1) * torch.exp(EXP_SCALE * m.value_scale).view(1, -1, 1, 1)
    y = associative_recall(k, k, v, _v1_beta(m.keys), normalize=False, kernel="dot", skip=1, backend=REF)
    return m.c_proj(merge_heads(y))


def _v1_persistent(m: PersistentMemory, x: torch.Tensor) -> torch.Tensor:
    """Unit queries read the whole (H, N, D) table, copied for every batch row; outputs x e^{10 nu}."""
    q = _v1_keys(m.queries, x)
    B = q.shape[0]
    keys, values = (t.expand(B, *t.shape) for t in (m.table_keys, m.table_values))  # (B, H, N, D)
    y = associative_recall(q, keys, values, _v1_beta(m.queries), normalize=False, kernel="dot", skip=None, backend=REF)
    return m.c_proj(merge_heads(y * torch.exp(EXP_SCALE * m.value_scale).view(1, -1, 1, 1)))


def mosaic_v2_logits(model: MemoryMosaicV2, idx: torch.Tensor) -> torch.Tensor:
    """idx (B, T) -> logits (B, T, V) of a v2 model in eval mode (m = m_min)."""
    skip = model.config.long_skip_min
    x = model.wte(idx)  # (B, T, C)
    for block in model.blocks:
        x = _v2_block(block, x, skip, model.use_long_term, model.config.n_head)
    return model.lm_head(model.norm(x))


def _v2_block(block: MosaicV2Block, x: torch.Tensor, skip: int, use_long: bool, H: int) -> torch.Tensor:
    h = block.mem_norm(x)
    heads = [_v2_memory(block.short, h, 1, H)]  # (B, T, C)
    if block.long is not None:  # the ablation feeds W_o zeros where the long-term heads were
        heads.append(_v2_memory(block.long, h, skip, H) if use_long else torch.zeros_like(heads[0]))
    x = x + block.wo(torch.cat(heads, dim=-1))  # (B, T, M C) -> (B, T, C)
    return x + block.pmem(block.ffn_norm(x))


def _v2_memory(mem: MemoryV2, h: torch.Tensor, skip: int, H: int) -> torch.Tensor:
    """One memory: gated unit keys, v1's values with alpha_psi, adaptive beta(n); heads (B, T, C)."""
    kx, vx, bw = mem.keys, mem.values, mem.bandwidth
    u = split_heads(kx.w_phi(h), H)  # (B, H, T, D)
    g = torch.exp(kx.w_g(h).float().clamp(max=GATE_LOG_MAX)).transpose(1, 2)  # (B, T, H) -> (B, H, T)
    lam = torch.exp(-kx.w_lambda(h).float().abs()).transpose(1, 2)  # (B, H, T)
    k = F.normalize(gated_leaky_scan(u, g, lam, backend=REF)[0], dim=-1)
    w = split_heads(vx.w_psi(h), H)  # (B, H, T, D)
    ahead = F.pad(w[:, :, 1:], (0, 0, 0, 1))  # W_psi x_{t+1}; row T-1 is never read
    gamma = vx.mix.view(1, -1, 1, 1)
    alpha = torch.exp(vx.scale.abs().clamp(max=VALUE_LOG_MAX)).view(1, -1, 1, 1)
    v = alpha * F.normalize(gamma * w + (1 - gamma) * ahead, dim=-1)
    n = visible_pairs(torch.arange(h.shape[1], device=h.device), mem.window, skip)  # (T,)
    beta0 = torch.exp(bw.theta0.clamp(max=BETA_LOG_MAX))[:, None]  # (H, 1)
    beta1 = torch.exp(bw.theta1.clamp(max=BETA_LOG_MAX))[:, None]
    alpha_n = bw.theta_alpha.abs().clamp(max=ALPHA_MAX)[:, None]
    beta = (beta1 * n.clamp(min=1).float()[None] ** alpha_n + beta0)[None]  # (1, H, T)
    y = associative_recall(k, k, v, beta, normalize=False, kernel="dot", window=mem.window, skip=skip, backend=REF)
    return merge_heads(y)
