"""Each Memory Mosaic and its transformer baseline at equal parameters.

- v2: Memory Mosaics v2 and the Llama, the pair that mmv2-pretrain, long-context-adaptation, the
  GPU check and `repro bench train|decode` compare. The paper pairs equal widths (9.9B vs 8.8B at
  the large size); at CPU scale we pair equal parameter counts instead, by giving the mosaic a
  narrower SwiGLU (`mosaic_v2_ffn_for`), unless a width is set.
- v1: Memory Mosaics (v1) and GPT-2, as the v1 paper and tinystories-ood pair them: the same
  shape, the mosaic's persistent memory holding 3.5 d pairs per head so that a block has GPT-2's 12
  d^2 weights. GPT-2 also has a (block_size, d) position table, which the mosaic does not need.
"""

from __future__ import annotations

from dataclasses import dataclass

from repro.models import registry
from repro.models.lm import LanguageModel
from repro.models.mosaic_v2 import mosaic_v2_ffn_for

PAIR = ("llama", "mosaic_v2")
PAIR_V1 = ("gpt2", "mosaic")


@dataclass
class ShapeV2:
    """One shape for both members of the pair (nanoGPT-style names; v2's memory sizes h and m)."""

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    ffn_size: int = 384  # the transformer's SwiGLU width
    mosaic_ffn_size: int | None = None  # None: chosen so both models have equal parameters
    short_window: int = 32  # h (paper 256)
    long_skip_min: int = 8  # m at inference (paper 64)
    long_skip_max: int = 32  # m ~ U[m_min, m_max] in training (paper 256)
    query_chunk: int = 512
    dropout: float = 0.0
    rope_theta: float = 10000.0
    vocab_size: int | None = None  # None: the tokenizer's, padded to a multiple of 64

    @classmethod
    def smoke(cls) -> ShapeV2:
        """The seconds-scale shape every `smoke` preset of the pair uses (tests run it)."""
        return cls(
            n_layer=1,
            n_head=2,
            n_embd=32,
            ffn_size=96,
            short_window=8,
            long_skip_min=2,
            long_skip_max=8,
            query_chunk=64,
        )


def build_pair_model(
    family: str, shape: ShapeV2, vocab_size: int, block_size: int, long_term: bool = True
) -> LanguageModel:
    """A Llama or an MM v2 of one shape, through the model registry; the mosaic's SwiGLU width
    matches the Llama's parameters unless `shape.mosaic_ffn_size` is set."""
    common = dict(
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        n_embd=shape.n_embd,
        block_size=block_size,
        vocab_size=vocab_size,
        dropout=shape.dropout,
    )
    if family == "llama":
        return registry.build_model("llama", **common, ffn_size=shape.ffn_size, rope_theta=shape.rope_theta)
    cfg = registry.model_config(
        "mosaic_v2",
        **common,
        short_window=shape.short_window,
        long_skip_min=shape.long_skip_min,
        long_skip_max=shape.long_skip_max,
        long_term=long_term,
        query_chunk=shape.query_chunk,
    )
    d = shape.n_embd
    ffn_size = shape.mosaic_ffn_size or mosaic_v2_ffn_for(4 * d * d + 3 * d * shape.ffn_size, cfg)
    return registry.build_model("mosaic_v2", **{**vars(cfg), "ffn_size": ffn_size})


@dataclass
class ShapeV1:
    """One shape for GPT-2 and Memory Mosaics v1 (the p-mem size follows from the width)."""

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0


def build_v1_pair_model(family: str, shape: ShapeV1, vocab_size: int, block_size: int) -> LanguageModel:
    """GPT-2 or a Memory Mosaic (v1) of one shape, through the model registry; the mosaic's p-mem has
    its default 3.5 d pairs (equal block parameters)."""
    if family not in PAIR_V1:
        raise ValueError(f"the v1 pair is {PAIR_V1}, not {family!r}")
    return registry.build_model(family, **vars(shape), block_size=block_size, vocab_size=vocab_size)
