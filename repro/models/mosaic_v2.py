"""Memory Mosaics v2 (arXiv 2507.03285, NeurIPS 2025): reference memory-mosaics.md §4.

Three changes to v1 (§4.1), each cited where it is built below:

1. adaptive bandwidth beta = beta1 * n^alpha + beta0, n the number of pairs the query sees in that
   memory, with App. Table 6's reparameterisation and init (`AdaptiveBandwidth`);
2. a gated, time-variant key extractor k_bar_T = g_T W_phi x_T + lambda_T k_bar_{T-1}, g_T =
   exp(W_g x_T), lambda_T = exp(-|W_lambda x_T|), k_T = Norm(k_bar_T) (`GatedKeys`,
   `gated_leaky_scan`); the value extractor is v1's (`ValueExtractor`);
3. three memory levels: a short-term memory over pairs [t-h+1, t-1], a long-term memory over pairs
   [1, t-m] (m ~ U[m_min, m_max] per training forward, m = m_min at inference), both concatenated
   and projected by W_o, and a SwiGLU persistent memory; no position encoding anywhere.

The Table 6 init (truncated normals) is `repro.models.layers.v2_init`, shared with the Llama
baseline. Memories call `repro.models.memory.associative_recall` (the `memory_retrieval` kernel) for
whole training sequences, for long inputs without gradients (in query chunks, so no T x T matrix is
ever built and memory grows linearly with T) and after a decoding cache (queries and keys at their
absolute positions).
`drop_long_term_memory()` is the paper's Table 2 ablation switch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from repro import kernels
from repro.errors import UserError
from repro.models.layers import (
    RMSNorm,
    SwiGLU,
    TimeBuffer,
    derived,
    fused_linear,
    merge_heads,
    split_heads,
    unit,
    v2_init,
)
from repro.models.lm import DecodeCache, LanguageModel, run_blocks
from repro.models.memory import associative_recall
from repro.models.registry import register_model

BETA_LOG_MAX = 10.0  # Table 6: beta0 = e^min(theta, 10), beta1 = e^min(theta, 10)
ALPHA_MAX = 1.0  # Table 6: alpha = min(|theta|, 1)
VALUE_LOG_MAX = 15.0  # Table 6 / §4.1.2: alpha_psi = e^min(|theta|, 15)
GATE_LOG_MAX = 30.0  # ours: clamp on W_g x before exp, a float32 overflow guard (never hit at init)


@dataclass
class MosaicV2Config:
    """Defaults: the small `debug` size. The paper's sizes (§4.2) are the registry's variants
    (bottom of this file): `large` is 32 layers, d 4096, 32 heads, SwiGLU d' 14336, context 4096,
    h = 256, m ~ U[64, 256], vocab 128256 (Llama 3's, which makes the paper's 9.9B come out)."""

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    block_size: int = 128  # training context; no position encoding, so inputs may be longer
    vocab_size: int = 512
    ffn_size: int = 192  # persistent memory (SwiGLU) hidden size d': 6144 small, 14336 large
    dropout: float = 0.0  # residual branches; the paper gives none
    bias: bool = False
    # debug sizes are small enough that a 60-token test crosses the window, the skip and the chunks
    short_window: int = 8  # h: the short-term memory holds pairs t-h+1 .. t-1 (paper 256)
    long_skip_min: int = 3  # m at inference, and the low end of its training range (paper 64)
    long_skip_max: int = 6  # m ~ U[m_min, m_max] during training (paper 256)
    long_term: bool = True  # False: no long-term memory at all (the 8.3B row of §4.2)
    query_chunk: int = 16  # queries per retrieval chunk for long inputs without gradients
    norm_eps: float = 1e-5


def gated_leaky_scan(
    x: torch.Tensor,
    g: torch.Tensor,
    lam: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y_t = g_t x_t + lam_t y_{t-1}, y_{-1} = state (0 when None): v2's gated key average (§4.1.2).

    x: (B, H, T, D); g, lam: (B, H, T) with g > 0 and 0 <= lam <= 1; state: (B, H, D) or None.
    Returns y (B, H, T, D) and y_{T-1} (B, H, D), in float32 (float64 stays float64). The
    `leaky_scan` kernel (chunked torch on CPU, Triton on CUDA), exact at lam = 0.
    """
    return kernels.leaky_scan(x, g, lam, state, backend=backend)


def visible_pairs(positions: torch.Tensor, window: int | None, skip: int) -> torch.Tensor:
    """n at each absolute query position: pairs j with t - window < j <= t - skip, j >= 0."""
    hi = positions - skip
    lo = (positions - window + 1).clamp(min=0) if window is not None else torch.zeros_like(positions)
    return (hi - lo + 1).clamp(min=0)


class AdaptiveBandwidth(nn.Module):
    """beta(n) = beta1 n^alpha + beta0 per head (§4.1.1, App. Table 6): beta0 = e^min(theta0, 10),
    beta1 = e^min(theta1, 10), both theta 1.5 at init (e^1.5 ~ 4.48); alpha = min(|theta_a|, 1),
    theta_a = 1/3 at init (the AMISE rate). So beta0 >= 0, beta1 > 0, 0 <= alpha <= 1."""

    def __init__(self, n_head: int):
        super().__init__()
        self.theta0 = nn.Parameter(torch.full((n_head,), 1.5))
        self.theta1 = nn.Parameter(torch.full((n_head,), 1.5))
        self.theta_alpha = nn.Parameter(torch.full((n_head,), 1.0 / 3.0))

    def forward(self, n: torch.Tensor) -> torch.Tensor:
        """n (T,) pair counts -> beta (1, H, T). n = 0 (an empty memory, output 0 anyway) is
        raised to 1 so that d(n^alpha)/d(alpha) = n^alpha log n stays finite."""
        params = [self.theta0, self.theta1, self.theta_alpha]
        beta0, beta1, alpha = derived(self, "coefficients", self._coefficients, params)  # (H, 1) each
        return (beta1 * n.clamp(min=1).to(beta0.dtype)[None] ** alpha + beta0)[None]  # (1, H, T)

    def at(self, n: int) -> torch.Tensor:
        """beta for one query that sees n pairs: (1, H, 1)."""
        beta0, beta1, alpha = derived(
            self, "coefficients", self._coefficients, [self.theta0, self.theta1, self.theta_alpha]
        )
        return (beta1 * torch.pow(float(max(n, 1)), alpha) + beta0)[None]

    def _coefficients(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        beta0 = torch.exp(self.theta0.clamp(max=BETA_LOG_MAX))[:, None]  # (H, 1)
        beta1 = torch.exp(self.theta1.clamp(max=BETA_LOG_MAX))[:, None]
        return beta0, beta1, self.theta_alpha.abs().clamp(max=ALPHA_MAX)[:, None]


class GatedKeys(nn.Module):
    """k_T = Norm(k_bar_T), k_bar_T = g_T W_phi x_T + lambda_T k_bar_{T-1}, g_T = exp(W_g x_T),
    lambda_T = exp(-|W_lambda x_T|): one scalar gate pair per head (§4.1.2). Keys are also queries,
    as in v1. The parameters of one memory's extractor; the block runs its memories' extractors
    together (`MosaicV2Block.keys_values`)."""

    def __init__(self, cfg: MosaicV2Config):
        super().__init__()
        self.w_phi = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.w_g = nn.Linear(cfg.n_embd, cfg.n_head, bias=cfg.bias)
        self.w_lambda = nn.Linear(cfg.n_embd, cfg.n_head, bias=cfg.bias)


class ValueExtractor(nn.Module):
    """v1's value extractor (§4.1.2, "unchanged from v1"; `repro.models.mosaic.ContextMemory`):
    v_T = alpha_psi Norm(gamma W_psi x_T + (1 - gamma) W_psi x_{T+1}), per head, gamma ~ U(0, 1);
    with Table 6's scale alpha_psi = e^min(|theta|, 15), theta = 0 at init (scale 1). The parameters
    of one memory's extractor, run by the block like the keys."""

    def __init__(self, cfg: MosaicV2Config):
        super().__init__()
        self.w_psi = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.mix = nn.Parameter(torch.rand(cfg.n_head))  # gamma
        self.scale = nn.Parameter(torch.zeros(cfg.n_head))  # theta of alpha_psi

    def alpha(self) -> torch.Tensor:
        return torch.exp(self.scale.abs().clamp(max=VALUE_LOG_MAX))  # (H,)


@dataclass
class MemoryCacheV2:
    """One memory's pairs after tokens 0..t-1. The short-term memory keeps only the pairs a future
    query can see (the last h-1), so its work per new token is bounded."""

    keys: TimeBuffer = field(default_factory=TimeBuffer)  # (B, H, n, D) unit keys of tokens start..t-1
    values: TimeBuffer = field(default_factory=TimeBuffer)  # (B, H, n-1, D) pairs start..t-2 (j needs x_{j+1})
    start: int = 0  # absolute position of keys[:, :, 0]


@dataclass
class MosaicV2LayerCache:
    short: MemoryCacheV2 = field(default_factory=MemoryCacheV2)
    long: MemoryCacheV2 = field(default_factory=MemoryCacheV2)
    key_state: torch.Tensor | None = None  # (B, M H, D) the memories' gated averages at t-1 (float32)
    value_proj: torch.Tensor | None = None  # (B, M H, D) their W_psi x_{t-1}


@dataclass
class MosaicV2Cache(DecodeCache):
    layers: list[MosaicV2LayerCache] = field(default_factory=list)


class MemoryV2(nn.Module):
    """One contextual associative memory of v2 with its own W_phi, W_psi and beta (§4.1.3):
    short-term (window=h, skip 1: pairs t-h+1..t-1) or long-term (window None, skip m: pairs
    0..t-m). Its keys and values come from the block (`MosaicV2Block.keys_values`, both memories at
    once); `forward` retrieves and returns the heads side by side (B, T, C), before W_o."""

    def __init__(self, cfg: MosaicV2Config, window: int | None):
        super().__init__()
        self.window, self.chunk = window, cfg.query_chunk
        self.keys = GatedKeys(cfg)
        self.values = ValueExtractor(cfg)
        self.bandwidth = AdaptiveBandwidth(cfg.n_head)

    def forward(
        self, k: torch.Tensor, v: torch.Tensor, t0: int, skip: int, cache: MemoryCacheV2 | None = None
    ) -> torch.Tensor:
        """Unit keys k (B, H, T, D) of tokens t0.., and the values v of pairs t0-1.. (B, H, T, D)
        after a cache (pair t0-1 completed by token t0), or of pairs 0..T-2 (B, H, T-1, D) at t0 = 0."""
        T = k.shape[2]
        if T == 1:  # a decoding step: its pair count is a number, no position tensor needed
            lo = 0 if self.window is None else max(0, t0 - self.window + 1)
            beta = self.bandwidth.at(max(0, t0 - skip - lo + 1))  # (1, H, 1)
        else:
            beta = self.bandwidth(visible_pairs(torch.arange(t0, t0 + T, device=k.device), self.window, skip))
        # unit keys: the Gaussian kernel is a dot product (kernel="dot", no renormalising)
        recall = dict(normalize=False, kernel="dot", window=self.window, skip=skip)
        if t0 == 0:
            m = min(skip, T)  # queries m.. read keys 0..T-1-m, causal once shifted (the kernel's fast path)
            # without gradients (long evaluations), queries in chunks keep memory linear in T
            chunk = None if torch.is_grad_enabled() else self.chunk
            q, kv = k[:, :, m:], slice(0, T - m)
            y = associative_recall(q, k[:, :, kv], v[:, :, kv], beta[:, :, m:], **recall, q_start=m, query_chunk=chunk)
            y = F.pad(merge_heads(y), (0, 0, m, 0))  # (B, T, C): the first m queries see no pair
            if cache is not None:
                cache.keys.append(k), cache.values.append(v)
        else:
            values = cache.values.append(v)  # (B, H, n + T - 1, D): pairs start..t0+T-2
            keys = cache.keys.append(k)  # (B, H, n + T, D)
            # the new queries (positions t0..) read the cached pairs (positions start..)
            y = associative_recall(
                k, keys[:, :, :-1], values, beta, **recall, q_start=t0, k_start=cache.start, query_chunk=self.chunk
            )
            y = merge_heads(y)  # (B, T, C)
        if cache is not None and self.window is not None:  # forget the pairs no future query can see
            drop = max(0, t0 + T - self.window + 1 - cache.start)
            cache.keys.drop_front(drop), cache.values.drop_front(drop)
            cache.start += drop
        return y


class MosaicV2Block(nn.Module):
    """x += W_o [short(RMSNorm(x)) | long(RMSNorm(x))]; x += SwiGLU(RMSNorm(x)) (§4.1.3). The norm
    is not named in the reference; we use the Llama baseline's RMSNorm pre-norm."""

    def __init__(self, cfg: MosaicV2Config):
        super().__init__()
        self.n_head = cfg.n_head
        self.mem_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.short = MemoryV2(cfg, window=cfg.short_window)
        self.long = MemoryV2(cfg, window=None) if cfg.long_term else None
        self.wo = nn.Linear(cfg.n_embd * (2 if cfg.long_term else 1), cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.ffn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.pmem = SwiGLU(cfg.n_embd, cfg.ffn_size, cfg.bias, cfg.dropout)

    def forward(
        self, x: torch.Tensor, skip: int, use_long: bool, cache: MosaicV2LayerCache | None = None
    ) -> torch.Tensor:
        mems = [self.short] + ([self.long] if self.long is not None and use_long else [])
        t0 = 0 if cache is None else cache.short.start + cache.short.keys.length
        k, v = self.keys_values(self.mem_norm(x), mems, t0, cache)  # (B, M H, T, D), (B, M H, T or T-1, D)
        H = self.n_head
        caches = [None, None] if cache is None else [cache.short, cache.long]
        heads = [
            mem(k[:, i * H : (i + 1) * H], v[:, i * H : (i + 1) * H], t0, s, c)
            for i, (mem, s, c) in enumerate(zip(mems, (1, skip), caches, strict=False))
        ]  # (B, T, C) each
        if len(heads) == 2:
            out = self.wo(torch.cat(heads, dim=-1))  # (B, T, 2C) -> (B, T, C)
        else:  # no long-term memory, or the Table 2 ablation: W_o's long-term half would read zeros
            out = F.linear(heads[0], self.wo.weight[:, : heads[0].shape[-1]], self.wo.bias)
        x = x + self.resid_dropout(out)
        return x + self.pmem(self.ffn_norm(x))

    def keys_values(
        self, h: torch.Tensor, mems: list[MemoryV2], t0: int, cache: MosaicV2LayerCache | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of every memory in `mems` from the normalised input h (B, T, C), as
        one set of M H heads: the extractors' arithmetic is the same per head, so both memories share
        one matmul, one gated scan and one normalisation (half the tensor ops of running them apart).

        Returns unit keys (B, M H, T, D) and values (B, M H, T-1, D) of pairs 0..T-2 at t0 = 0, or
        (B, M H, T, D) of pairs t0-1.. after a cache (whose state it advances)."""
        groups = [[getattr(m.keys, w) for m in mems] for w in ("w_phi", "w_g", "w_lambda")]
        phi, zg, zl, psi = fused_linear(h, [*groups, [m.values.w_psi for m in mems]])  # (B, T, MC|MH|MH|MC)
        MH = zg.shape[-1]
        u = split_heads(phi, MH)  # (B, M H, T, D)
        g = torch.exp(zg.float().clamp(max=GATE_LOG_MAX)).transpose(1, 2)  # (B, T, M H) -> (B, M H, T)
        lam = torch.exp(-zl.float().abs()).transpose(1, 2)  # (B, M H, T)
        avg, state = gated_leaky_scan(u, g, lam, None if cache is None else cache.key_state)
        k = unit(avg, dtype=u.dtype)
        w = split_heads(psi, MH)  # (B, M H, T, D): W_psi x_t
        params = [p for m in mems for p in (m.values.mix, m.values.scale)]
        gamma, alpha = derived(self, f"values{len(mems)}", lambda: self._mix_scale(mems), params)
        if t0 == 0:
            now, ahead = w[:, :, :-1], w[:, :, 1:]  # pairs 0..T-2 (pair T-1 waits for x_T)
        else:
            now, ahead = cache.value_proj[:, :, None], w  # x_{t-1}, x_t of the first new token
            if w.shape[2] > 1:
                now = torch.cat([now, w[:, :, :-1]], dim=2)  # (B, M H, T, D)
        gamma = gamma if gamma.dtype == w.dtype else gamma.to(w.dtype)
        v = unit(torch.lerp(ahead, now, gamma), alpha, w.dtype)  # gamma now + (1 - gamma) ahead
        if cache is not None:
            cache.key_state, cache.value_proj = state, w[:, :, -1]
        return k, v

    @staticmethod
    def _mix_scale(mems: list[MemoryV2]) -> tuple[torch.Tensor, torch.Tensor]:
        gamma = torch.cat([m.values.mix for m in mems]).view(1, -1, 1, 1)  # (1, M H, 1, 1)
        return gamma, torch.cat([m.values.alpha() for m in mems])  # (M H,)


class MemoryMosaicV2(LanguageModel):
    """Memory Mosaics v2 language model: token embedding (no position encoding, §4.1), n_layer v2
    blocks, final RMSNorm, untied classifier (untied as in Llama: the paper's 9.9B needs it)."""

    config_class = MosaicV2Config

    def __init__(self, config: MosaicV2Config):
        super().__init__(config)
        cfg = config
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_head={cfg.n_head} must divide n_embd={cfg.n_embd}")
        if not 1 <= cfg.long_skip_min <= cfg.long_skip_max:
            raise ValueError(f"need 1 <= long_skip_min <= long_skip_max, got {cfg.long_skip_min}, {cfg.long_skip_max}")
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList([MosaicV2Block(cfg) for _ in range(cfg.n_layer)])
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        v2_init(self, self.blocks, cfg.n_embd)
        self.use_long_term = cfg.long_term  # runtime switch, not saved: see drop_long_term_memory

    def drop_long_term_memory(self, drop: bool = True) -> None:
        """The paper's ablation (Tables 2, 9, 10): remove the long-term memory after training (its
        W_o inputs become 0). Set it before decoding starts; `drop=False` puts it back."""
        if not self.config.long_term:
            raise UserError("this mosaic_v2 model was built without long-term memory (long_term=false).")
        self.use_long_term = not drop

    def long_skip(self) -> int:
        """m: drawn from U[m_min, m_max] (torch's global generator) at each training forward, so
        every layer of one step shares it; m_min at inference (§4.1.3)."""
        c = self.config
        if self.training and c.long_skip_max > c.long_skip_min:
            return int(torch.randint(c.long_skip_min, c.long_skip_max + 1, ()))
        return c.long_skip_min

    def new_cache(self, batch_size: int) -> MosaicV2Cache:
        return MosaicV2Cache(batch_size, layers=[MosaicV2LayerCache() for _ in range(self.config.n_layer)])

    def forward(self, idx: torch.Tensor, cache: MosaicV2Cache | None = None) -> torch.Tensor:
        skip = self.long_skip()
        x = self.wte(idx)  # (B, T, C)
        x = run_blocks(self.blocks, x, cache, skip, self.use_long_term)
        return self.lm_head(self.norm(x))  # (B, T, V)

    def flops_per_token(self, context: int) -> float:
        """Forward FLOPs per token averaged over a `context`-token sequence, by the rule of
        `Llama.flops_per_token`: 2 per matmul weight (W_phi, W_psi, W_g, W_lambda per memory, W_o,
        SwiGLU, classifier) plus 4 d per visible pair per memory per layer (short: min(t, h-1);
        long: t-m+1 with m = m_min). Large config at context 256: 18.9 GFLOPs, 15.6 without
        long-term memory (§4.2)."""
        c = self.config
        d, H, L = c.n_embd, c.n_head, c.n_layer
        n_mem = 2 if c.long_term else 1
        matmul = L * (n_mem * (2 * d * d + 2 * d * H) + n_mem * d * d + 3 * d * c.ffn_size) + d * c.vocab_size
        t = torch.arange(context, device="cpu")  # plain numbers, also under a meta device context
        pairs = visible_pairs(t, c.short_window, 1).double().mean().item()
        if c.long_term:
            pairs += visible_pairs(t, None, c.long_skip_min).double().mean().item()
        return 2 * matmul + 4 * d * L * pairs


def mosaic_v2_ffn_for(n_params_per_layer: int, cfg: MosaicV2Config) -> int:
    """The SwiGLU width d' that gives a v2 block `n_params_per_layer` matmul weights (used to pair
    a mosaic with a transformer at equal parameters; rounded down)."""
    d, H = cfg.n_embd, cfg.n_head
    n_mem = 2 if cfg.long_term else 1
    rest = n_mem * (2 * d * d + 2 * d * H) + n_mem * d * d
    return max(1, math.floor((n_params_per_layer - rest) / (3 * d)))


# §4.2: the llama-1.5B and llama-8B scales, h = 256, m ~ U[64, 256], vocab 128256, context 4096.
_PAPER = dict(
    block_size=4096, vocab_size=128256, short_window=256, long_skip_min=64, long_skip_max=256, query_chunk=1024
)
MOSAIC_V2_SIZES = {
    "small": dict(n_layer=24, n_head=16, n_embd=2048, ffn_size=6144, **_PAPER),
    "large": dict(n_layer=32, n_head=32, n_embd=4096, ffn_size=14336, **_PAPER),
    "large-no-long-term": dict(n_layer=32, n_head=32, n_embd=4096, ffn_size=14336, long_term=False, **_PAPER),
}
register_model("mosaic_v2", MosaicV2Config, MemoryMosaicV2, {"debug": {}, **MOSAIC_V2_SIZES}, label="Memory Mosaics v2")
