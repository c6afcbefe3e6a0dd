"""Training speed of each Memory Mosaic against its baseline at equal parameters (`repro bench train`),
and the interleaved timing the `mmv2-pretrain` speed rows and the GPU check use (`model_speeds`).

Numbers are ratios against the baseline measured in the same process, interleaved in rounds so that
machine noise hits both models alike: each round times `steps` training steps (forward, backward,
AdamW) of every model in turn, then, if asked, greedy decoding through the cache. The ratio of a
round is the mosaic's tokens/s over the baseline's in that round; the table gives the median over
rounds and its range, with the load average before and after.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from repro import results
from repro.bench.decode import decode_speed
from repro.bench.ops import step_profile
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
from repro.models.lm import LanguageModel, next_token_loss
from repro.registry import Benchmark, Option, register
from repro.runtime import pick_device
from repro.track import console, progress


@dataclass
class SpeedConfig:
    """How `model_speeds` measures: untimed warm-up rounds, then interleaved timed rounds."""

    steps: int = 4  # timed training steps per round
    warmup: int = 1  # untimed rounds first
    rounds: int = 3
    decode_prompt: int = 0  # > 0: also time greedy decoding after a prompt of this many tokens
    decode_tokens: int = 64  # one-token steps timed after the prompt
    compile: bool = False  # torch.compile the training step's model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_speeds(
    models: dict[str, LanguageModel], batch: torch.Tensor, cfg: SpeedConfig, label: str | None = None
) -> dict[str, dict[str, list[float]]]:
    """Tokens/s of each model, one value per timed round: "train" (steps on `batch` (B, T + 1) token
    ids, next-token loss, bf16 autocast on CUDA) and, with cfg.decode_prompt > 0, "decode" (one-token
    steps after a prefill of batch[:1, :decode_prompt]). `label`: show a progress bar."""
    device = batch.device
    x, y = batch[:, :-1], batch[:, 1:]
    prompt = batch[:1, : cfg.decode_prompt]
    runners = {f: torch.compile(m) if cfg.compile else m for f, m in models.items()}
    opts = {f: torch.optim.AdamW(m.parameters(), lr=1e-4) for f, m in models.items()}

    def train_speed(f: str) -> float:
        models[f].train()
        _sync(device)
        tick = time.perf_counter()
        for _ in range(cfg.steps):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = next_token_loss(runners[f], (x, y))
            loss.backward()
            opts[f].step()
            opts[f].zero_grad(set_to_none=True)
        _sync(device)
        return cfg.steps * x.numel() / (time.perf_counter() - tick)

    speeds: dict[str, dict[str, list[float]]] = {f: {"train": [], "decode": []} for f in models}
    timed = [False] * cfg.warmup + [True] * cfg.rounds
    with progress(len(timed) * len(models), label) if label else nullcontext() as bar:
        for keep in timed:
            for f in models:
                train_s = train_speed(f)
                decode_s = decode_speed(models[f], prompt, cfg.decode_tokens)[1] if cfg.decode_prompt else None
                if keep:
                    speeds[f]["train"].append(train_s)
                    if decode_s is not None:
                        speeds[f]["decode"].append(decode_s)
                if bar is not None:
                    bar.advance()
    return speeds


@dataclass
class ThroughputConfig:
    """`repro bench train`: each pair at every length, `tokens` tokens per step (batch = tokens / T)."""

    pairs: tuple[str, ...] = ("v1", "v2")  # v1: GPT-2 vs MM v1; v2: the Llama vs MM v2 (bench/pairs.py)
    lengths: tuple[int, ...] = (256, 1024, 2048, 4096)
    tokens: int = 4096  # per training step: batch 16 at T=256 ... 1 at T=4096
    shape: PairShape = field(default_factory=PairShape)  # 4 blocks, d 256, 4 heads, vocab 8192
    steps: int = 2  # timed steps per round
    warmup: int = 1  # untimed rounds
    rounds: int = 5
    compile: bool = False
    device: str = "auto"
    profile: bool = True  # add the operator counts of one step at the first length


def training_throughput(cfg: ThroughputConfig) -> list[dict[str, Any]]:
    """Training tokens/s of each pair's two models at every length, interleaved in one process; one
    row per (pair, length, model) with the paired ratio to the baseline; then, with cfg.profile, one
    row per model with the operator counts of a step at the first length."""
    check_pairs(cfg.pairs)
    device = pick_device(cfg.device)
    g = torch.Generator().manual_seed(0)
    speed_cfg = SpeedConfig(steps=cfg.steps, warmup=cfg.warmup, rounds=cfg.rounds, compile=cfg.compile)
    rows = []
    for pair in cfg.pairs:
        for T in cfg.lengths:
            models = {f: m.to(device) for f, m in build_pair(pair, cfg.shape, T).items()}
            batch = torch.randint(cfg.shape.vocab_size, (max(1, cfg.tokens // T), T + 1), generator=g).to(device)
            load = os.getloadavg()[0]
            speeds = {f: s["train"] for f, s in model_speeds(models, batch, speed_cfg, f"train {pair} T={T}").items()}
            rows += speed_rows(pair, T, models, speeds, load, batch=batch.shape[0])
            del models
    return rows + (training_profile(cfg) if cfg.profile else [])


def training_profile(cfg: ThroughputConfig) -> list[dict[str, Any]]:
    """Operator counts of one training step of each model at the first length (bench/ops.py)."""
    T = cfg.lengths[0]
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(cfg.shape.vocab_size, (max(1, cfg.tokens // T), T + 1), generator=g)
    rows = []
    for pair in cfg.pairs:
        for family, model in build_pair(pair, cfg.shape, T).items():
            step = f"training, T={T}, batch {batch.shape[0]}"
            rows.append({"pair": pair, "model": family, "step": step, **step_profile(model, batch)})
    return rows


def write_throughput_report(
    table: list[dict[str, Any]], cfg: ThroughputConfig, machine: dict[str, Any], out_dir: Path
) -> list[Path]:
    speeds, profile = split_table(table)
    timing = f"{cfg.steps} training steps (forward, backward, AdamW) of {cfg.tokens} tokens per model per round"
    timing += f", after {cfg.warmup} warm-up round(s), {'compiled' if cfg.compile else 'eager'}"
    shapes = [shape_text(pair, build_pair(pair, cfg.shape, max(cfg.lengths))) for pair in cfg.pairs]
    notes = report_notes(machine, "Training", cfg.rounds, timing, shapes)
    extra = {"Operators per training step (torch.profiler; top-level aten ops)": profile} if profile else None
    return results.write_table(speeds, out_dir, "Training throughput, mosaics vs baselines, same run", notes, extra)


def _lengths(text: str) -> tuple[int, ...]:
    """ "256,1k,4k" -> (256, 1024, 4096)."""
    from repro.errors import UserError

    try:
        return tuple(int(float(x[:-1]) * 1024) if x.lower().endswith("k") else int(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"--lengths {text}: expected numbers such as 256,1k,4096.") from None


def _pairs(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


@register
class BenchTrain(Benchmark):
    """`repro bench train`: training tokens/s of each mosaic against its baseline at equal parameters,
    at every length, in one process."""

    name = "bench-train"
    paper_ref = "Memory Mosaics speed (reference memory-mosaics.md §7): mosaics vs GPT-2 / Llama tokens/s"
    preset_costs = {
        "smoke": "seconds (1 block, width 32, T = 16 and 32)",
        "cpu": "~6 min on 2 idle cores (4 blocks, width 256, T = 256..4096, 5 rounds, both pairs)",
        "paper": "GPU: 12 blocks, width 768, T = 1k..4k, compiled",
    }
    options = (
        Option("--pairs", "pairs", "v1: GPT-2 vs MM v1; v2: the Llama vs MM v2 (comma list).", parse=_pairs),
        Option("--lengths", "lengths", "Context lengths, all in this run (e.g. 256,1k,2k,4k).", parse=_lengths),
        Option("--tokens", "tokens", "Tokens per training step (batch = tokens / length)."),
        Option("--rounds", "rounds", "Interleaved measurement rounds."),
        Option("--steps", "steps", "Timed steps per round."),
        Option("--compile", "compile", "torch.compile every model.", is_flag=True),
    )

    def presets(self) -> dict[str, ThroughputConfig]:
        return {
            "smoke": ThroughputConfig(lengths=(16, 32), tokens=64, shape=TINY, steps=1, warmup=0, rounds=1),
            "cpu": ThroughputConfig(),
            "paper": ThroughputConfig(
                lengths=(1024, 2048, 4096),
                tokens=16384,
                compile=True,
                shape=PairShape(n_layer=12, n_head=12, n_embd=768, vocab_size=32768),
            ),  # fmt: skip
        }

    def check(self, cfg: ThroughputConfig) -> None:
        check_pairs(cfg.pairs)  # an unknown pair is one sentence, before anything is measured

    def measure(self, cfg: ThroughputConfig) -> list[dict[str, Any]]:
        table = training_throughput(cfg)
        for r in split_table(table)[0]:
            speed = f"{r['tok/s median']:9.0f} tok/s  ratio {r['ratio']}"
            console.print(f"{r['pair']} T={r['T']:5d} {r['model']:10s} {speed}")
        return table

    def write(self, table: list[dict], cfg: ThroughputConfig, machine: dict, out_dir: Path) -> list[Path]:
        return write_throughput_report(table, cfg, machine, out_dir)
