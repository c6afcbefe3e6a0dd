"""Training throughput of the rich-features image models (issue 17): images/s of the ResNet training
step the transfer experiments run, against the forward+backward floor of the same batch, per model
and memory format, interleaved in rounds (`repro bench images --models resnet8,resnet16,towers4x8`)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from repro import results
from repro.registry import Benchmark, Option, register
from repro.runtime import pick_device
from repro.track import console, progress


@dataclass
class ResNetBenchConfig:
    models: tuple[str, ...] = ("resnet8", "resnet16")  # resnet<W> or towers<N>x<W>; the first is the baseline
    batch_size: int = 128
    formats: tuple[str, ...] = ("channels_last", "contiguous")
    steps: int = 4
    warmup: int = 2
    rounds: int = 3
    n_class: int = 5
    device: str = "auto"


def _image_model(name: str, n_class: int) -> torch.nn.Module:
    import re

    from repro.errors import UserError
    from repro.models.registry import build_model
    from repro.models.resnet import ResNetConfig, Towers

    m = re.fullmatch(r"resnet(\d+)|towers(\d+)x(\d+)", name)
    if not m:
        raise UserError(f"image model '{name}': write resnet<width> (e.g. resnet8) or towers<n>x<width>.")
    if m.group(1):
        return build_model("resnet", width=int(m.group(1)), n_class=n_class)
    return Towers.build(int(m.group(2)), ResNetConfig(width=int(m.group(3)), n_class=n_class))


def resnet_throughput(cfg: ResNetBenchConfig) -> pd.DataFrame:
    """Images/s of the training step the rich-features experiments run (uint8 NHWC batch from the
    array cache -> normalise -> pad-crop + flip on tensors -> forward + backward + SGD step) against
    the floor of the same batch (forward + backward of an already prepared batch, no optimizer), per
    model and memory format, interleaved in rounds. `step / floor` near 1 means input and optimizer
    cost nothing next to the network."""
    import numpy as np
    import torch.nn.functional as F

    from repro.data.vision import augment, to_tensor

    device = pick_device(cfg.device)
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (8 * cfg.batch_size, 32, 32, 3), dtype=np.uint8)  # stands in for the .npy cache
    labels = torch.from_numpy(rng.integers(0, cfg.n_class, len(pool)))
    cases: dict[tuple[str, str], Any] = {}
    for name in cfg.models:
        for fmt in cfg.formats:
            torch.manual_seed(0)
            model = _image_model(name, cfg.n_class).to(device)
            memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
            model = model.to(memory_format=memory_format)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            cases[(name, fmt)] = (model, opt, fmt == "channels_last")

    def batch(i: int, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(pool), (cfg.batch_size,), generator=torch.Generator().manual_seed(i))
        x = to_tensor(pool[idx.numpy()], channels_last=channels_last)
        return augment(x, torch.Generator().manual_seed(i)).to(device), labels[idx].to(device)

    fixed = {cl: batch(0, cl) for cl in (True, False)}

    def timed(key: tuple[str, str], steps: int, floor: bool) -> tuple[float, float]:
        """(images per wall second, images per CPU second of this process)."""
        model, opt, cl = cases[key]
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(steps):
            x, y = fixed[cl] if floor else batch(i + 1, cl)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if floor:
                model.zero_grad(set_to_none=True)
            else:
                opt.step()
                opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        n = steps * cfg.batch_size
        return n / (time.perf_counter() - start), n / max(1e-9, time.process_time() - cpu)

    speeds: dict[tuple[str, str, bool], list[tuple[float, float]]] = {(*k, f): [] for k in cases for f in (False, True)}
    with progress(cfg.rounds * len(speeds), "bench resnet") as bar:
        for key in cases:
            timed(key, cfg.warmup, False)
        for _ in range(cfg.rounds):
            for name, fmt, floor in speeds:
                speeds[(name, fmt, floor)].append(timed((name, fmt), cfg.steps, floor))
                bar.advance()

    def median(key: tuple[str, str, bool], which: int = 0) -> float:
        return statistics.median(v[which] for v in speeds[key])

    base = median((cfg.models[0], cfg.formats[0], False))
    rows = []
    for name, fmt in cases:
        step, floor = (median((name, fmt, f)) for f in (False, True))
        params = sum(p.numel() for n, p in cases[(name, fmt)][0].named_parameters() if "head" not in n)
        rows.append(
            {
                "model": name,
                "memory format": fmt,
                "backbone params (M)": round(params / 1e6, 3),
                "train step img/s": round(step, 1),
                "fwd+bwd floor img/s": round(floor, 1),
                "step / floor": round(step / floor, 3),
                # on a shared machine a process gets a fraction of a core; per CPU-second of this
                # process is what one idle core would do (with 1 torch thread)
                "train step img per CPU-s": round(median((name, fmt, False), 1), 1),
                f"step ratio vs {cfg.models[0]} {cfg.formats[0]}": round(step / base, 3),
            }
        )
    return pd.DataFrame(rows)


def write_resnet_report(table: list[dict], cfg: ResNetBenchConfig, machine: dict, out_dir: Path) -> list[Path]:
    notes = [
        f"{results.machine_note(machine)} Batch {cfg.batch_size} of 32x32 RGB, {cfg.n_class} classes; "
        f"{cfg.rounds} interleaved rounds of {cfg.steps} steps after {cfg.warmup} warm-up.",
        "train step = uint8 NHWC batch -> normalise -> pad-4 crop + flip on tensors -> forward, backward, SGD "
        "(momentum, wd); floor = forward + backward of one prepared batch. On a shared machine the absolute "
        "numbers depend on the load; the ratios measured in one run are the comparable part.",
    ]
    return results.write_table(table, out_dir, "ResNet training throughput, same run", notes)


@register
class BenchImages(Benchmark):
    """`repro bench images`: images/s of the rich-features training step against its floor."""

    name = "bench-images"
    paper_ref = "Rich-features experiments' ResNet training step (issue 17): images/s against the fwd+bwd floor"
    preset_costs = {
        "smoke": "seconds (width 4, batch 8)",
        "cpu": "about a minute on 2 cores (resnet8, resnet16, batch 128)",
        "paper": "GPU: the same models at batch 512",
    }
    options = (
        Option("--models", "models", "resnet<W> or towers<N>x<W>, comma-separated; the first is the baseline."),
        Option("--batch-size", "batch_size", "Images per step."),
        Option("--rounds", "rounds", "Interleaved measurement rounds."),
        Option("--steps", "steps", "Timed steps per round."),
    )

    def presets(self) -> dict[str, ResNetBenchConfig]:
        return {
            "smoke": ResNetBenchConfig(
                models=("resnet4",), batch_size=8, formats=("contiguous",), steps=1, warmup=0, rounds=1
            ),  # fmt: skip
            "cpu": ResNetBenchConfig(),
            "paper": ResNetBenchConfig(batch_size=512),
        }

    def check(self, cfg: ResNetBenchConfig) -> None:
        for name in cfg.models:
            _image_model(name, cfg.n_class)  # a bad name fails before anything is measured

    def measure(self, cfg: ResNetBenchConfig) -> list[dict[str, Any]]:
        table = resnet_throughput(cfg)
        console.print(table.to_string(index=False))
        return table.to_dict("records")

    def write(self, table: list[dict], cfg: ResNetBenchConfig, machine: dict, out_dir: Path) -> list[Path]:
        return write_resnet_report(table, cfg, machine, out_dir)
