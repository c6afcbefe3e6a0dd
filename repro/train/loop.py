"""The training loop every experiment uses: schedule, clipping, logging, progress bar, resume.

`batch_fn(step)` must be a pure function of the step (seed its generator from it), so a run killed
and resumed from a checkpoint sees the same batches and follows the same loss curve.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from repro.runtime import RunContext
from repro.track import progress
from repro.train.optim import OptimConfig, build_optimizer, lr_at


def train(
    model: nn.Module,
    batch_fn: Callable[[int], Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    cfg: OptimConfig,
    steps: int,
    ctx: RunContext,
    name: str,
    *,
    log_every: int = 10,
    checkpoint_every: int = 100,
) -> list[float]:
    """Train `model` for `steps` steps; returns the loss of every step (resumed steps included)."""
    opt = build_optimizer(model, cfg)
    state_name = f"{name}.train"
    losses: list[float] = []
    start = 0
    saved = ctx.load_state(state_name)
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        start, losses = saved["step"], saved["losses"]
    model.train()
    with progress(steps, f"train {name}") as bar:
        bar.advance(start)
        for step in range(start, steps):
            lr = lr_at(step, steps, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = loss_fn(model, batch_fn(step))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(loss.item())
            if step % log_every == 0 or step == steps - 1:
                ctx.tracker.log(step, **{f"{name}/loss": losses[-1], f"{name}/lr": lr})
            bar.advance(loss=losses[-1])
            done = step + 1
            if checkpoint_every and (done % checkpoint_every == 0 or done == steps):
                state = {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "step": done,
                    "losses": losses,
                }
                ctx.save_state(state_name, state)
    model.eval()
    return losses
