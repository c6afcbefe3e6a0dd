"""The training loop every experiment uses: schedule, accumulation, clipping, mixed precision,
optional torch.compile, periodic evaluation, throughput, progress bar, checkpoints and resume,
and data-parallel training under `torchrun`: DDP, or FSDP2 with sharded checkpoints for models that
do not fit one GPU (`LoopConfig.strategy`; the wrapping and checkpoint formats live in
`repro.train.distributed`).

`batch_fn(i)` returns micro-batch number i (i = step * accum + micro, times the world size plus the
rank under DDP/FSDP). It must be a pure function of i (seed its generator from it), so a run killed and
resumed from a checkpoint sees the same batches and follows the same loss curve.

Every step checks that the loss and the gradient norm are finite: a diverged run stops there (the last
good checkpoint stays, the run is marked failed) instead of training on NaN. SIGINT/SIGTERM are
answered at the end of the current step: a checkpoint of that step (RNG included), then Interrupted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from repro import runtime
from repro.errors import Interrupted, RunFailed
from repro.runtime import RunContext
from repro.track import progress
from repro.train import distributed
from repro.train.optim import LoopConfig, OptimConfig, build_optimizer, lr_at


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


def train(
    model: nn.Module,
    batch_fn: Callable[[int], Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    cfg: OptimConfig,
    steps: int,
    ctx: RunContext,
    name: str,
    *,
    loop: LoopConfig | None = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    tokens_per_batch: int = 0,
) -> list[float]:
    """Train `model` for `steps` optimizer steps; returns the loss of every step (resumed included).

    `eval_fn(model)` returns named scalars, logged as `{name}/{key}` every `loop.eval_every` steps and
    at the end. `tokens_per_batch` (per micro-batch) turns on the `tok_per_s` metric.
    """
    loop = loop or LoopConfig()
    rank, world_size = distributed.world()
    use_bf16 = loop.amp == "bf16" or (loop.amp == "auto" and ctx.device.type == "cuda")
    runner = distributed.wrap(model, loop, ctx.device, use_bf16)  # the model, or its DDP/FSDP/compiled form
    opt = build_optimizer(model, cfg)
    state_name = f"{name}.train"
    losses: list[float] = []
    start = 0
    saved = distributed.load_state(ctx, state_name, model, opt, loop)
    accum = distributed.global_batch_accum(saved, loop)
    if saved is not None:
        start, losses = saved["step"], saved["losses"]
        if "rng" in saved:  # dropout masks continue exactly where the killed run was
            torch.set_rng_state(saved["rng"])
        if torch.cuda.is_available() and saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
    sharded = distributed.is_sharded(model)

    def evaluate(step: int) -> None:
        if eval_fn is None or (rank != 0 and not sharded):  # a sharded forward needs every rank
            return
        model.eval()
        with torch.no_grad(), torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            scalars = eval_fn(model)
        model.train()
        if rank == 0:
            ctx.tracker.log(step, **{f"{name}/{k}": v for k, v in scalars.items()})

    def checkpoint(done: int) -> None:
        """Every rank calls it: DCP saves are collective; under DDP only rank 0 writes."""
        if not distributed.all_finite(model):  # never save a broken model
            raise RunFailed(
                f"training {name} diverged before step {done} (weights are no longer finite); try a lower "
                f"learning rate (optim.lr is {cfg.lr:g}) or gradient clipping (optim.grad_clip=1)"
            )
        state = {
            "step": done,
            "losses": losses,
            "global_batch": accum * world_size,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        distributed.save_state(ctx, state_name, model, opt, loop, state)

    model.train()
    with runtime.defer_signals(), progress(steps, f"train {name}") as bar:
        bar.advance(start)
        tick, tokens = time.perf_counter(), 0
        for step in range(start, steps):
            lr = lr_at(step, steps, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            total = 0.0
            for micro in range(accum):
                batch = to_device(batch_fn((step * accum + micro) * world_size + rank), ctx.device)
                sync = micro == accum - 1 or world_size == 1
                with (
                    torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=use_bf16),
                    distributed.no_sync(runner) if not sync else nullcontext(),
                ):
                    loss = loss_fn(runner, batch) / accum
                loss.backward()
                total += loss.item()
                tokens += tokens_per_batch * world_size
            if cfg.grad_clip > 0:
                grad_norm = distributed.value(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            else:
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                grad_norm = distributed.value(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
            step_loss = _mean_across_ranks(total, ctx.device) if world_size > 1 else total
            if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                raise RunFailed(  # before the update: the model and the last checkpoint stay finite
                    f"training {name} diverged at step {step} (loss {step_loss:.3g}, gradient norm "
                    f"{grad_norm:.3g}); try a lower learning rate (optim.lr is {cfg.lr:g}) or gradient "
                    "clipping (optim.grad_clip=1)"
                )
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(step_loss)
            done = step + 1
            if rank == 0 and (step % loop.log_every == 0 or done == steps):
                elapsed = time.perf_counter() - tick
                extra = {f"{name}/tok_per_s": tokens / elapsed} if tokens_per_batch and elapsed > 0 else {}
                ctx.tracker.log(step, **{f"{name}/loss": losses[-1], f"{name}/lr": lr}, **extra)
                tick, tokens = time.perf_counter(), 0
            if loop.eval_every and done % loop.eval_every == 0 and done != steps:
                evaluate(done)
            bar.advance(loss=losses[-1])
            saved_now = loop.checkpoint_every and (done % loop.checkpoint_every == 0 or done == steps)
            if saved_now:
                checkpoint(done)
            signum = _signal_on_any_rank(ctx.device) if world_size > 1 else runtime.pending_signal()
            if signum is not None:  # SIGINT/SIGTERM arrived during this step
                if not saved_now:
                    checkpoint(done)
                raise Interrupted(f"interrupted at step {done}; rerun the same command to resume", signum)
    evaluate(steps)
    model.eval()
    return losses


def _signal_on_any_rank(device: torch.device) -> int | None:
    """Under DDP every rank stops at the same step when any rank got a signal."""
    t = torch.tensor([runtime.pending_signal() or 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item()) or None


def _mean_across_ranks(value: float, device: torch.device) -> float:
    t = torch.tensor([value], device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()
