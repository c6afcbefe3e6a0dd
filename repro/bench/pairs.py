"""What the mosaic-vs-baseline benchmarks (`train.py`, `decode.py`) share: the pairs at equal
parameters, their shapes and parameter counts, and the one row format (with the threads and load
average every timing is reported beside) and notes of their tables.

A pair is built through `repro.models.pairing`, the pairing the experiments use: "v1" is GPT-2 and
Memory Mosaics v1, "v2" the Llama and Memory Mosaics v2. The baseline comes first.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Any

import torch

from repro import kernels, results
from repro.errors import UserError
from repro.models.lm import LanguageModel
from repro.models.pairing import PAIR, PAIR_V1, ShapeV1, ShapeV2, build_pair_model, build_v1_pair_model

PAIRS = {"v1": PAIR_V1, "v2": PAIR}


@dataclass
class PairShape:
    """The shape both members of a pair share (v2: the Llama's SwiGLU is `ffn_mult` x d, the mosaic's
    is narrower to match its parameters; short-term window h, long-term skip m ~ U[m_min, m_max])."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    vocab_size: int = 8192
    ffn_mult: float = 3.0  # ShapeV2's default proportion (mmv2-pretrain's cpu preset)
    short_window: int = 32
    long_skip_min: int = 8
    long_skip_max: int = 32


TINY = PairShape(n_layer=1, n_head=2, n_embd=32, vocab_size=64, short_window=8, long_skip_min=2, long_skip_max=8)


def check_pairs(pairs: tuple[str, ...]) -> None:
    unknown = [p for p in pairs if p not in PAIRS]
    if unknown or not pairs:
        raise UserError(f"pairs {', '.join(unknown) or '(none)'}: choose from {', '.join(PAIRS)}.")


def build_pair(pair: str, shape: PairShape, block_size: int) -> dict[str, LanguageModel]:
    """{family: model} for the pair, baseline first, dropout 0, freshly initialised (seed 0)."""
    torch.manual_seed(0)
    if pair == "v1":
        s1 = ShapeV1(n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.n_embd)
        return {f: build_v1_pair_model(f, s1, shape.vocab_size, block_size) for f in PAIR_V1}
    s2 = ShapeV2(
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        n_embd=shape.n_embd,
        ffn_size=int(shape.ffn_mult * shape.n_embd),
        short_window=shape.short_window,
        long_skip_min=shape.long_skip_min,
        long_skip_max=shape.long_skip_max,
        query_chunk=max(block_size, 512),  # no query chunking inside what is timed
    )
    return {f: build_pair_model(f, s2, shape.vocab_size, block_size) for f in PAIR}


def param_counts(model: LanguageModel) -> dict[str, float]:
    """Parameters in millions: all, and without the embedding, position and head tables."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    tables |= {id(model.lm_head.weight)}
    rest = sum(p.numel() for p in model.parameters() if id(p) not in tables)
    return {"params (M)": round(model.num_params() / 1e6, 3), "non-embedding (M)": round(rest / 1e6, 3)}


def shape_text(pair: str, models: dict[str, LanguageModel]) -> str:
    """The configuration that was timed, in words (each family's distinguishing fields)."""
    parts = []
    for family, model in models.items():
        c = model.config
        extra = ""
        if family == "mosaic":
            extra = f", p-mem {c.pmem_pairs()} pairs/head"
        elif family in ("llama", "mosaic_v2"):
            extra = f", SwiGLU {c.ffn_size}"
        if family == "mosaic_v2":
            extra += f", h {c.short_window}, m {c.long_skip_min}-{c.long_skip_max}"
        parts.append(f"{family}: {c.n_layer} blocks, d {c.n_embd}, {c.n_head} heads, vocab {c.vocab_size}{extra}")
    return "; ".join(parts)


def speed_rows(
    pair: str, T: int, models: dict[str, LanguageModel], speeds: dict[str, list[float]], load: float, **extra: Any
) -> list[dict[str, Any]]:
    """Rows for one timed pair: tokens/s median and range per model, and the paired ratio (median
    over rounds of the model's speed over the baseline's in the same round); `load`: the 1-min load
    average before the pair was timed (the one after is read here)."""
    base = list(models)[0]
    rows = []
    for family, model in models.items():
        ratios = [m / b for m, b in zip(speeds[family], speeds[base], strict=True)]
        rows.append(
            {
                "pair": pair,
                "T": T,
                **extra,
                "model": family,
                **param_counts(model),
                "tok/s median": round(statistics.median(speeds[family]), 1),
                "tok/s min-max": f"{min(speeds[family]):.0f}-{max(speeds[family]):.0f}",
                "ratio": round(statistics.median(ratios), 3),
                "ratio min-max": f"{min(ratios):.2f}-{max(ratios):.2f}",
                "threads": torch.get_num_threads(),
                "load before/after": f"{load:.2f}/{os.getloadavg()[0]:.2f}",
            }
        )
    return rows


def split_table(table: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A benchmark's stored table -> (speed rows, operator-count rows), with whole numbers as ints
    again (the run directory keeps every number as a float)."""
    whole = [{k: int(v) if isinstance(v, float) and v.is_integer() and k != "ratio" else v for k, v in r.items()}
             for r in table]  # fmt: skip
    return [r for r in whole if "ops" not in r], [r for r in whole if "ops" in r]


def report_notes(machine: dict[str, Any], kind: str, rounds: int, timing: str, shapes: list[str]) -> list[str]:
    """The notes under a benchmark table: machine, backends, method, shapes, pairing, the target."""
    return [
        f"{results.machine_note(machine)} Kernels: {kernels.choices()}.",
        f"{kind}: {rounds} interleaved rounds in one process ({timing}); `ratio` is the median over rounds of the "
        "mosaic's tokens/s over its baseline's in the same round (baseline rows: 1).",
        "Shapes: " + " | ".join(shapes) + ".",
        "Pairs at equal parameters (repro.models.pairing): v1 = GPT-2 vs Memory Mosaics v1 (equal block weights, "
        "12 d^2; GPT-2 also has its position table), v2 = the Llama vs Memory Mosaics v2 (the mosaic's SwiGLU "
        "narrowed to equal parameters).",
        "Timings only count on an idle machine: the 1-min load average is given before and after each pair. "
        "Issue 27's target: each mosaic >= 0.9x its baseline for training at T = 256-2048 and for decoding.",
    ]
