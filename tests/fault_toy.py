"""A small experiment for the fault-injection tests: a real run through `runtime.launch`, the training
loop, the tracker and the rows, fast enough to kill and resume many times.

Not registered with the suite (it is no paper result): tests pass an instance to `runtime.launch`, and
`python tests/fault_toy.py run fault-toy ...` registers it in that process only and runs the CLI, so a
test can signal or kill a real `repro` process.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from repro.registry import Experiment
from repro.runtime import RunContext
from repro.train.loop import LoopConfig, train
from repro.train.optim import OptimConfig


@dataclass
class ToyConfig:
    steps: int = 40
    batch_size: int = 32
    width: int = 32
    dropout: float = 0.1  # uses the torch RNG, so a resume must restore it to follow the same curve
    pause_s: float = 0.0  # sleep per step, so a test can signal a process mid-run
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-2, schedule="cosine", warmup_steps=3, grad_clip=0.0)
    )
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(log_every=1, checkpoint_every=5))
    device: str = "cpu"


class FaultToy(Experiment):
    name = "fault-toy"
    paper_ref = "none (test scaffolding)"
    claim = "none"
    preset_costs = {"smoke": "~1 s", "cpu": "~1 s", "paper": "~1 s"}

    def presets(self) -> dict[str, ToyConfig]:
        return {"smoke": ToyConfig(), "cpu": ToyConfig(), "paper": ToyConfig()}

    def memory_estimate(self, cfg: ToyConfig) -> int:
        return 4 * cfg.batch_size * cfg.width

    def run(self, cfg: ToyConfig, ctx: RunContext) -> list[dict[str, Any]]:
        torch.manual_seed(ctx.seed)
        model = nn.Sequential(nn.Linear(4, cfg.width), nn.Tanh(), nn.Dropout(cfg.dropout), nn.Linear(cfg.width, 1))

        def batch_fn(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            if cfg.pause_s:
                time.sleep(cfg.pause_s)
            g = torch.Generator().manual_seed(ctx.seed * 1_000_003 + i)
            x = torch.randn(cfg.batch_size, 4, generator=g)
            return x, x.sum(-1, keepdim=True).sin()

        def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            return (m(batch[0]) - batch[1]).pow(2).mean()

        losses = train(model, batch_fn, loss_fn, cfg.optim, cfg.steps, ctx, "toy", loop=cfg.loop)
        rows = [ctx.row(model="mlp", split="train", metric="loss", value=v, step=i) for i, v in enumerate(losses)]
        x, y = batch_fn(-1)
        with torch.no_grad():
            held = (model(x) - y).pow(2).mean().item()
        rows.append(ctx.row(model="mlp", split="heldout", metric="mse", value=held, step=cfg.steps))
        return rows

    def report(self, df: Any, out_dir: Path) -> list[Path]:
        return []


if __name__ == "__main__":
    from repro import registry
    from repro.cli import main

    registry.register(FaultToy)
    sys.argv[0] = "repro"
    main()
