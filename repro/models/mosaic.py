"""Memory Mosaics (v1) language model, as in the official `Library` (StackAssoMem), reference 1.2.

Blocks of a contextual memory (keys from a leaky average, values that look one step ahead, strictly
causal retrieval) and a persistent memory (a learned key/value table in the MLP's place), both built
on the shared `repro.models.memory` functions. The three-moons memory is `repro.models.moon_memory`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from repro import kernels
from repro.models.layers import TimeBuffer, derived, fused_linear, merge_heads, split_heads, unit
from repro.models.lm import DecodeCache, LanguageModel, run_blocks
from repro.models.memory import associative_recall, recall_all
from repro.models.registry import register_model

EXP_SCALE = 10.0  # per-head scalars enter as 10|theta| or exp(10 p): the official reparametrisation
MAX_LOG_SCALE = 5.0  # clamp on 10 kappa: the key scale exp(10 kappa) stays fp16-safe


@dataclass
class MosaicConfig:
    """Defaults: the small `debug` size; `small` (the registry's variant) is the paper's GPT-2 shape."""

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    block_size: int = 128  # training context; no position encoding, so inputs may be longer
    vocab_size: int = 512
    bias: bool = False  # biases in Linear and LayerNorm layers
    pmem_size: int | None = None  # persistent pairs per head; None: 3.5 n_embd rounded (2688 at d=768)
    ic_dropout: float = 0.05  # dropout on the memories' attention weights
    hd_dropout: float = 0.05  # dropout on each memory's output (residual branch)
    # The Library multiplies the logits by 1/sqrt(d) and draws Linear weights N(0, 1/fan_in): tuned for
    # d 768 and 80k steps. At d 128 and a few hundred steps the scaled tied head cannot grow large enough
    # and the model underfits (reports/tinystories-ood), so small presets turn the scale off.
    head_scale: Literal["inv_sqrt_width", "none"] = "inv_sqrt_width"  # logits x 1/sqrt(n_embd), or x 1
    init: Literal["library", "nanogpt"] = "library"  # library: N(0, 1/fan_in); nanogpt: N(0, 0.02)

    def pmem_pairs(self) -> int:
        """3.5 d pairs make a block's parameters match a GPT-2 block: 3d^2 + 2d^2 + 7d^2 = 12d^2."""
        return self.pmem_size if self.pmem_size is not None else math.floor(3.5 * self.n_embd + 0.5)


def leaky_average(
    x: torch.Tensor, decay_rate: torch.Tensor, state: torch.Tensor | None = None, *, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """y_t = sum_{tau <= t} exp(-lambda_h (t - tau)) x_tau + exp(-lambda_h (t + 1)) state, per head.

    x: (B, H, T, D); decay_rate lambda: (H,), >= 0; state: (B, H, D), the average just before x
    (a decoding cache), or None. Returns y (B, H, T, D) and the new state y_{T-1} (B, H, D), in
    float32 (float64 stays float64). This is the `leaky_scan` kernel with unit gates and a per-head
    constant decay exp(-lambda_h): O(T) memory, unlike the official regular version's T x T matrix.
    """
    return kernels.leaky_scan(x, None, torch.exp(-decay_rate), state, backend=backend)


class LeakyAverageKeys(nn.Module):
    """Keys (or queries) k_t = normalize(sum_{tau<=t} exp(-lambda_h (t - tau)) W x_tau), per head,
    and the kernel bandwidth beta_h = exp(min(10 kappa_h, 5))^2.

    lambda_h = 10|theta_h|, theta initialised to linspace(0.5, 5, H)/10: per-step decays from 0.61
    to 0.0067. The official regular version also multiplies the average by (1 - e^-lambda); the
    normalisation cancels that factor, so we leave it out. beta is a square because the c-mem scales
    both query and key by exp(min(10 kappa, 5)) and the p-mem scales the query by its square: either
    way the logit is beta * cos(q, k).
    """

    def __init__(self, cfg: MosaicConfig):
        super().__init__()
        H = cfg.n_head
        self.n_head = H
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)  # W_phi
        self.leak = nn.Parameter(torch.linspace(0.5, 5.0, H) / EXP_SCALE)  # theta
        self.bandwidth = nn.Parameter(torch.full((H,), 1.0 / EXP_SCALE))  # kappa: beta = e^2 at init

    def sqrt_beta(self) -> torch.Tensor:
        """exp(min(10 kappa, 5)) (H,): what the c-mem multiplies both queries and keys by."""
        return derived(self, "sqrt_beta", self._sqrt_beta, [self.bandwidth])

    def _sqrt_beta(self) -> torch.Tensor:
        return torch.exp(torch.clamp(EXP_SCALE * self.bandwidth, max=MAX_LOG_SCALE))

    def _decay(self) -> torch.Tensor:
        return torch.exp(-EXP_SCALE * self.leak.abs())

    def beta(self) -> torch.Tensor:
        return self.sqrt_beta() ** 2  # (H,)

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None, scale: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> unit keys (B, H, T, D), times a per-head `scale` (H,) if given, in the
        projection's dtype (the autocast dtype under AMP), and the new running average (B, H, D) in
        float32."""
        return self.average(self.proj(x), state, scale)

    def average(
        self, projected: torch.Tensor, state: torch.Tensor | None = None, scale: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` from W_phi x (B, T, C), for callers that compute the projection themselves."""
        k = split_heads(projected, self.n_head)  # (B, H, T, D)
        # leaky_average(k, 10 |theta|, state), with the per-head decay exp(-10 |theta|) kept between
        # decoding steps
        decay = derived(self, "decay", self._decay, [self.leak])
        avg, state = kernels.leaky_scan(k, None, decay, state)
        return unit(avg, scale, k.dtype), state


@dataclass
class MosaicLayerCache:
    """One block's decoding state after reading tokens 0..t-1 (shapes per batch row and head)."""

    key_state: torch.Tensor | None = None  # (B, H, D) c-mem leaky average at t-1 (float32)
    keys: TimeBuffer = field(default_factory=TimeBuffer)  # (B, H, t, D) c-mem keys of every token
    values: TimeBuffer = field(default_factory=TimeBuffer)  # (B, H, t-1, D) pairs 0..t-2 (pair j needs x_{j+1})
    value_proj: torch.Tensor | None = None  # (B, H, D) W_psi x_{t-1}: half of pair t-1's value
    query_state: torch.Tensor | None = None  # (B, H, D) p-mem leaky average at t-1 (float32)


@dataclass
class MosaicCache(DecodeCache):
    layers: list[MosaicLayerCache] = field(default_factory=list)


class ContextMemory(nn.Module):
    """Contextual memory: y_t = sum_{j<t} softmax_j(beta_h k_t . k_j) v_j per head, then c_proj.

    The key is also the query. The value looks one step ahead, v_j = e^{10 nu_h} normalize(
    (1 - c_h) W_psi x_{j+1} + c_h W_psi x_j), so the memory is strictly causal: query t reads
    pairs j <= t-1 only, and position 0 outputs 0. As in the official code, keys (and so queries)
    carry sqrt(beta_h) = exp(min(10 kappa_h, 5)): one tensor serves as both, and the cache stores it.
    """

    def __init__(self, cfg: MosaicConfig):
        super().__init__()
        H = cfg.n_head
        if cfg.n_embd % H:
            raise ValueError(f"n_head={H} must divide n_embd={cfg.n_embd}")
        self.n_head = H
        self.keys = LeakyAverageKeys(cfg)
        self.value_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)  # W_psi
        self.value_mix = nn.Parameter(torch.rand(H))  # c_h ~ U(0, 1)
        self.value_scale = nn.Parameter(torch.full((H,), -0.5 / EXP_SCALE))  # nu: scale e^-0.5 at init
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.attn_dropout = cfg.ic_dropout
        self.resid_dropout = nn.Dropout(cfg.hd_dropout)

    def _values(self, now: torch.Tensor, ahead: torch.Tensor) -> torch.Tensor:
        """W_psi x_j and W_psi x_{j+1} (B, H, n, D) -> the pairs' values (B, H, n, D)."""
        mix, scale = derived(self, "mix_scale", self._mix_scale, [self.value_mix, self.value_scale])
        mixed = torch.lerp(ahead, now, mix if mix.dtype == now.dtype else mix.to(now.dtype))  # c now + (1 - c) ahead
        return unit(mixed, scale, now.dtype)

    def _mix_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.value_mix.view(1, -1, 1, 1), torch.exp(EXP_SCALE * self.value_scale)

    def forward(self, x: torch.Tensor, cache: MosaicLayerCache | None = None) -> torch.Tensor:
        state = None if cache is None else cache.key_state
        phi, psi = fused_linear(x, [[self.keys.proj], [self.value_proj]])  # W_phi x, W_psi x in one matmul
        k, key_state = self.keys.average(phi, state, self.keys.sqrt_beta())  # (B, H, T, D): sqrt(beta) k_t
        u = split_heads(psi, self.n_head)  # (B, H, T, D): W_psi x_t
        if cache is None or cache.keys.length == 0:
            v = self._values(u[:, :, :-1], u[:, :, 1:])  # (B, H, T-1, D): pairs 0..T-2 (pair T-1 waits for x_T)
            y = merge_heads(self._recall(k, v))  # (B, T-1, C): queries 1..T-1
            y = F.pad(y, (0, 0, 1, 0))  # (B, T, C): query 0 has no pair to read
            if cache is not None:
                cache.keys.append(k), cache.values.append(v)
        else:
            t0 = cache.keys.length
            before = cache.value_proj[:, :, None]  # (B, H, 1, D): x_{t-1} of the first new token
            if u.shape[2] > 1:
                before = torch.cat([before, u[:, :, :-1]], dim=2)  # (B, H, T, D)
            values = cache.values.append(self._values(before, u))  # (B, H, t0 + T - 1, D): pairs 0..t0+T-2
            keys = cache.keys.append(k)  # (B, H, t0 + T, D)
            # new queries at positions t0.. read the cached pairs 0..t0+T-2, strictly causally
            y = associative_recall(k, keys[:, :, :-1], values, 1.0, normalize=False, kernel="dot", skip=1, q_start=t0)
            y = merge_heads(y)  # (B, T, C)
        if cache is not None:
            cache.key_state, cache.value_proj = key_state, u[:, :, -1]
        return self.resid_dropout(self.c_proj(y))

    def _recall(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Strictly causal retrieval over one whole sequence of keys k (B, H, T, D) and values of
        pairs 0..T-2: queries 1..T-1 read keys 0..T-2, which is causal once shifted (the kernel's
        fast path), with the official attention dropout in training. Returns (B, H, T-1, D). The keys
        are unit vectors times sqrt(beta), so the Gaussian kernel is a plain dot product (kernel="dot",
        no renormalising, bandwidth 1)."""
        p = self.attn_dropout if self.training else 0.0
        q, keys = k[:, :, 1:], k[:, :, :-1]  # (B, H, T-1, D): query t = i + 1 reads pairs j <= t - 1
        return associative_recall(q, keys, v, 1.0, normalize=False, kernel="dot", skip=1, q_start=1, dropout_p=p)


class PersistentMemory(nn.Module):
    """Persistent memory: a learned table of pmem_size (key, value) pairs per head, read with no
    mask by a leaky-average query; the p-mem takes the MLP's place (reference 1.2)."""

    def __init__(self, cfg: MosaicConfig):
        super().__init__()
        H, D, N = cfg.n_head, cfg.n_embd // cfg.n_head, cfg.pmem_pairs()
        self.n_head = H
        self.queries = LeakyAverageKeys(cfg)
        self.table_keys = nn.Parameter(torch.randn(H, N, D) / math.sqrt(D))  # P_k ~ N(0, 1/d_h)
        self.table_values = nn.Parameter(torch.randn(H, N, D) / math.sqrt(D))  # P_v ~ N(0, 1/d_h)
        self.value_scale = nn.Parameter(torch.full((H,), -0.5 / EXP_SCALE))  # nu
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.attn_dropout = cfg.ic_dropout
        self.resid_dropout = nn.Dropout(cfg.hd_dropout)

    def forward(self, x: torch.Tensor, cache: MosaicLayerCache | None = None) -> torch.Tensor:
        q, state = self.queries(x, None if cache is None else cache.query_state)  # (B, H, T, D) unit
        if cache is not None:
            cache.query_state = state
        p = self.attn_dropout if self.training else 0.0  # the official dropout on the attention weights
        # beta and the value scale go on the (H, N, D) table, not on every (B, H, T, D) query and output
        params = [self.table_keys, self.table_values, self.queries.bandwidth, self.value_scale]
        keys, values = derived(self, "table", self._scaled_table, params)
        y = recall_all(q, keys, values, 1.0, normalize=False, kernel="dot", dropout_p=p)
        return self.resid_dropout(self.c_proj(merge_heads(y)))

    def _scaled_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        keys = self.table_keys * self.queries.beta().view(-1, 1, 1)  # (H, N, D)
        return keys, self.table_values * torch.exp(EXP_SCALE * self.value_scale).view(-1, 1, 1)


class MosaicBlock(nn.Module):
    """Pre-LN: x += CMem(LN1(x)); x += PMem(LN2(x))."""

    def __init__(self, cfg: MosaicConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.cmem = ContextMemory(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.pmem = PersistentMemory(cfg)

    def forward(self, x: torch.Tensor, cache: MosaicLayerCache | None = None) -> torch.Tensor:
        x = x + self.cmem(self.ln_1(x), cache)
        return x + self.pmem(self.ln_2(x), cache)


class MemoryMosaic(LanguageModel):
    """Memory Mosaics v1 language model: token embedding (no position encoding: the leaky averages
    carry order), n_layer mosaic blocks, final LayerNorm, tied head, logits scaled by 1/sqrt(d)
    (config.head_scale; the Library's choice, off at small width)."""

    config_class = MosaicConfig

    def __init__(self, config: MosaicConfig):
        super().__init__(config)
        cfg = config
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList([MosaicBlock(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # tied: one (V, C) matrix
        self._init_weights()

    def _init_weights(self) -> None:
        """Official Library init: every Linear N(0, 1/fan_in), c_proj N(0, 1/fan_in/n_layer).

        The Library also draws the Embedding from N(0, 1), but its tied head Linear is initialised
        after it and overwrites the shared matrix, which therefore starts at N(0, 1/d); we keep that
        effective init. The p-mem tables and the per-head scalars are set in their modules.
        init="nanogpt" is the authors' nanoMosaics init instead: N(0, 0.02), c_proj N(0, 0.02/sqrt(2L)).
        """
        if self.config.init == "nanogpt":
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, mean=0.0, std=0.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))
            return
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=1 / math.sqrt(module.weight.shape[1]))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                std = 1 / math.sqrt(p.shape[1]) / math.sqrt(self.config.n_layer)
                nn.init.normal_(p, mean=0.0, std=std)

    def new_cache(self, batch_size: int) -> MosaicCache:
        return MosaicCache(batch_size, layers=[MosaicLayerCache() for _ in range(self.config.n_layer)])

    def forward(self, idx: torch.Tensor, cache: MosaicCache | None = None) -> torch.Tensor:
        x = self.wte(idx)  # (B, T, C)
        x = run_blocks(self.blocks, x, cache)
        if self.config.head_scale == "inv_sqrt_width":
            # the 1/sqrt(d) logit scale folded into the final norm's (C,) affine: same logits, no extra
            # pass over (B, T, C) and none over the much larger (B, T, V)
            s = 1.0 / math.sqrt(self.config.n_embd)
            ln = self.ln_f
            bias = None if ln.bias is None else ln.bias * s
            x = F.layer_norm(x, ln.normalized_shape, ln.weight * s, bias, ln.eps)
        else:
            x = self.ln_f(x)
        return self.lm_head(x)  # (B, T, V)


# The paper's shape is GPT-2 small's (reference 1.2: d 768, 12 heads, context 512, vocab 50304); pmem
# 3.5 d = 2688 pairs. `dropout` sets both dropouts, so one set of shape overrides builds either family.
MOSAIC_SMALL = dict(n_layer=12, n_head=12, n_embd=768, block_size=512, vocab_size=50304)
register_model(
    "mosaic",
    MosaicConfig,
    MemoryMosaic,
    {"debug": {}, "small": MOSAIC_SMALL},
    label="Memory Mosaic",
    aliases={"dropout": ("ic_dropout", "hd_dropout")},
)
