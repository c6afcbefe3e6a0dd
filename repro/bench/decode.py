"""Decoding speed of each Memory Mosaic against its baseline at equal parameters (`repro bench decode`).

Batch 1, greedy: the prompt is read once through the model's cache (timed apart, as prefill tokens/s),
then `new_tokens` tokens are generated one at a time through the cache, which is what is compared. The
models of a pair run in turn within each round (interleaved, one process), so machine noise hits both
alike; the ratio of a round is the mosaic's tokens/s over the baseline's.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from repro import results
from repro.bench.ops import decode_profile
from repro.bench.pairs import (
    TINY,
    PairShape,
    build_pair,
    check_pairs,
    report_notes,
    shape_text,
    speed_rows,
    split_table,
)
from repro.models.lm import LanguageModel
from repro.registry import Benchmark, Option, register
from repro.runtime import pick_device
from repro.track import console, progress


@dataclass
class DecodeConfig:
    pairs: tuple[str, ...] = ("v1", "v2")
    prompt: int = 1024  # tokens read before decoding
    new_tokens: int = 256  # generated one at a time, timed
    shape: PairShape = field(default_factory=PairShape)
    warmup: int = 1  # untimed rounds
    rounds: int = 5
    device: str = "auto"
    profile: bool = True  # the report shows the operators of one decoding step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def decode_speed(model: LanguageModel, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(prefill tokens/s, decoding tokens/s) of greedy decoding after `prompt` (1, P), eval mode."""
    model.eval()
    cache = model.new_cache(prompt.shape[0])
    _sync(prompt.device)
    tick = time.perf_counter()
    logits = model(prompt, cache)[:, -1]
    _sync(prompt.device)
    tock = time.perf_counter()
    for _ in range(new_tokens):
        logits = model(logits.argmax(-1, keepdim=True), cache)[:, -1]
    _sync(prompt.device)
    return prompt.shape[1] / (tock - tick), new_tokens / (time.perf_counter() - tock)


def decode_throughput(cfg: DecodeConfig) -> list[dict[str, Any]]:
    """One row per (pair, model): decoding and prefill tokens/s, the mosaic's ratios to the baseline;
    then, with cfg.profile, one row per model with the operator counts of one decoding step."""
    check_pairs(cfg.pairs)
    device = pick_device(cfg.device)
    prompt = torch.randint(cfg.shape.vocab_size, (1, cfg.prompt), generator=torch.Generator().manual_seed(0))
    rows = []
    for pair in cfg.pairs:
        models = {f: m.to(device) for f, m in build_pair(pair, cfg.shape, cfg.prompt + cfg.new_tokens).items()}
        load = os.getloadavg()[0]
        speeds: dict[str, dict[str, list[float]]] = {f: {"prefill": [], "decode": []} for f in models}
        timed = [False] * cfg.warmup + [True] * cfg.rounds
        with progress(len(timed) * len(models), f"decode {pair}") as bar:
            for keep in timed:
                for f, model in models.items():
                    prefill, decode = decode_speed(model, prompt.to(device), cfg.new_tokens)
                    if keep:
                        speeds[f]["prefill"].append(prefill)
                        speeds[f]["decode"].append(decode)
                    bar.advance()
        decode_rows = speed_rows(pair, cfg.prompt, models, {f: s["decode"] for f, s in speeds.items()}, load)
        prefill_rows = speed_rows(pair, cfg.prompt, models, {f: s["prefill"] for f, s in speeds.items()}, load)
        for d, p in zip(decode_rows, prefill_rows, strict=True):
            d["prefill tok/s"], d["prefill ratio"] = p["tok/s median"], p["ratio"]
        rows += decode_rows
        del models
    return rows + (decoding_profile(cfg) if cfg.profile else [])


def decoding_profile(cfg: DecodeConfig) -> list[dict[str, Any]]:
    """Operator counts of one decoding step of each model after the prompt (bench/ops.py)."""
    prompt = torch.randint(cfg.shape.vocab_size, (1, cfg.prompt), generator=torch.Generator().manual_seed(0))
    rows = []
    for pair in cfg.pairs:
        for family, model in build_pair(pair, cfg.shape, cfg.prompt + cfg.new_tokens).items():
            step = f"one token after {cfg.prompt}"
            rows.append({"pair": pair, "model": family, "step": step, **decode_profile(model, prompt)})
    return rows


def write_decode_report(
    table: list[dict[str, Any]], cfg: DecodeConfig, machine: dict[str, Any], out_dir: Path
) -> list[Path]:
    speeds, profile = split_table(table)
    timing = f"a {cfg.prompt}-token prompt read once through the cache (`prefill` columns), then {cfg.new_tokens} "
    timing += f"greedy one-token steps (the other columns), batch 1, after {cfg.warmup} warm-up round(s)"
    shapes = [shape_text(pair, build_pair(pair, cfg.shape, cfg.prompt + cfg.new_tokens)) for pair in cfg.pairs]
    notes = report_notes(machine, "Decoding", cfg.rounds, timing, shapes)
    extra = {"Operators per decoding step (torch.profiler; top-level aten ops)": profile} if profile else None
    table = [{k: v for k, v in r.items() if k != "T"} for r in speeds]
    return results.write_table(table, out_dir, "Decoding throughput, mosaics vs baselines, same run", notes, extra)


def _pairs(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


@register
class BenchDecode(Benchmark):
    """`repro bench decode`: greedy decoding tokens/s of each mosaic against its baseline at equal
    parameters, batch 1, through the cache, in one process."""

    name = "bench-decode"
    paper_ref = "Memory Mosaics v2 decoding speed (reports/mmv2-pretrain): mosaics vs GPT-2 / Llama tokens/s"
    preset_costs = {
        "smoke": "seconds (1 block, width 32, a 24-token prompt, 4 new tokens)",
        "cpu": "~1 min on 2 idle cores (4 blocks, width 256, 1k prompt, 256 new tokens, 5 rounds, both pairs)",
        "paper": "GPU: 12 blocks, width 768, 4k prompt, 256 new tokens",
    }
    options = (
        Option("--pairs", "pairs", "v1: GPT-2 vs MM v1; v2: the Llama vs MM v2 (comma list).", parse=_pairs),
        Option("--prompt", "prompt", "Prompt tokens read before decoding."),
        Option("--new-tokens", "new_tokens", "Tokens generated one at a time (timed)."),
        Option("--rounds", "rounds", "Interleaved measurement rounds."),
    )

    def presets(self) -> dict[str, DecodeConfig]:
        return {
            "smoke": DecodeConfig(prompt=24, new_tokens=4, shape=TINY, warmup=0, rounds=1),
            "cpu": DecodeConfig(),
            "paper": DecodeConfig(prompt=4096, shape=PairShape(n_layer=12, n_head=12, n_embd=768, vocab_size=32768)),
        }

    def check(self, cfg: DecodeConfig) -> None:
        check_pairs(cfg.pairs)

    def measure(self, cfg: DecodeConfig) -> list[dict[str, Any]]:
        table = decode_throughput(cfg)
        for r in split_table(table)[0]:
            console.print(f"{r['pair']} {r['model']:10s} {r['tok/s median']:8.1f} tok/s  ratio {r['ratio']}")
        return table

    def write(self, table: list[dict], cfg: DecodeConfig, machine: dict, out_dir: Path) -> list[Path]:
        return write_decode_report(table, cfg, machine, out_dir)
