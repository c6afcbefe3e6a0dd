"""One tiny training run through `repro.train.loop.train`, for tests/test_fsdp.py: launched by `torchrun`
(gloo on CPU) or called in-process. Rank 0 writes the losses and the exported checkpoint.

    torchrun --nproc_per_node 2 tests/fsdp_worker.py RUN_DIR --strategy fsdp --steps 6 --die-at 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from repro.models.lm import LanguageModel
from repro.models.registry import build_model
from repro.runtime import RunContext, init_distributed
from repro.track import Tracker
from repro.train import distributed
from repro.train.loop import LoopConfig, train
from repro.train.optim import OptimConfig

V, T, B = 61, 16, 2  # vocabulary, context, sequences per micro-batch


class Killed(Exception):
    """Stands in for a SIGKILL after the last checkpoint: the run stops without saving anything more."""


def build(family: str) -> LanguageModel:
    shape = dict(n_layer=2, n_head=2, n_embd=32, block_size=T, vocab_size=V, ffn_size=48)
    if family == "llama":
        return build_model("llama", **shape)
    # m fixed (min = max): its draw would otherwise differ between 2 ranks x 1 and 1 rank x 2 micro-batches
    return build_model("mosaic_v2", **shape, short_window=4, long_skip_min=3, long_skip_max=3, query_chunk=8)


def batch_fn(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + i)  # a pure function of i, as the loop requires
    x = torch.randint(V, (B, T + 1), generator=g)
    return x[:, :-1], x[:, 1:]


def lm_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())


def run(
    run_dir: Path,
    family: str,
    strategy: str,
    steps: int,
    accum: int,
    checkpoint_every: int = 0,
    die_at: int | None = None,
    activation_checkpointing: bool = False,
    amp: str = "off",
    compile: bool = False,
) -> list[float] | None:
    """Train `steps` steps; with `die_at`, stop (as if killed) when step `die_at` asks for its batch.
    Returns the losses, or None when killed."""
    rank, world_size = distributed.world()
    run_dir.mkdir(parents=True, exist_ok=True)
    loop = LoopConfig(
        accum=accum,
        log_every=1,
        checkpoint_every=checkpoint_every,
        amp=amp,
        compile=compile,
        strategy=strategy,
        activation_checkpointing=activation_checkpointing,
    )
    torch.manual_seed(0)
    with distributed.build_context(loop):
        model = build(family)
    tracker = Tracker(run_dir, "fsdp-test", {}, use_wandb=False, enabled=rank == 0)
    ctx = RunContext("fsdp-test", "smoke", "default", 0, run_dir, torch.device("cpu"), tracker)
    optim = OptimConfig(lr=3e-3, schedule="cosine", warmup_steps=1, beta2=0.95, weight_decay=0.1, grad_clip=1.0)

    def batches(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if die_at is not None and i >= die_at * accum * world_size:
            raise Killed
        return batch_fn(i)

    try:
        losses = train(model, batches, lm_loss, optim, steps, ctx, family, loop=loop)
    except Killed:
        return None
    finally:
        tracker.close()
    distributed.export(model, run_dir / "export" / family)
    return losses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir", type=Path)
    p.add_argument("--families", default="llama,mosaic_v2")
    p.add_argument("--strategy", default="fsdp")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--die-at", type=int, default=None)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--amp", default="off")
    p.add_argument("--compile", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rank = init_distributed()
    out = {}
    for family in a.families.split(","):
        losses = run(
            a.run_dir / family,
            family,
            a.strategy,
            a.steps,
            a.accum,
            a.checkpoint_every,
            a.die_at,
            a.activation_checkpointing,
            a.amp,
            a.compile,
        )
        out[family] = losses
    if rank == 0:
        (a.run_dir / "losses.json").write_text(json.dumps(out))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    sys.exit(main())
