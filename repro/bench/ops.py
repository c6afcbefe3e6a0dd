"""Operator counts of a training step and of a decoding step (torch.profiler), for the benchmark reports.

On a CPU at these widths a mosaic's step is not bound by arithmetic alone: every tensor op costs a few
microseconds of dispatch, and small element-wise ops each read and write whole activations. So the
reports count, per model, the operators a step launches (top level: an op called by another op is part
of its caller) and the ops that take the most time, beside the timings.
"""

from __future__ import annotations

import collections
from typing import Any

import torch
from torch.profiler import profile

from repro.models.lm import LanguageModel, next_token_loss


def _top_level(prof: Any) -> list[Any]:
    """The aten ops a step launched itself (not those run inside another aten op)."""
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    return [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]


def _summary(prof: Any, top: int) -> dict[str, Any]:
    ops = _top_level(prof)
    calls = collections.Counter(e.name.removeprefix("aten::") for e in ops)
    self_ms: collections.Counter = collections.Counter()
    all_calls: collections.Counter = collections.Counter()  # at every level (mm runs inside linear)
    for e in prof.key_averages():
        if e.key.startswith("aten::"):
            self_ms[e.key.removeprefix("aten::")] += e.self_cpu_time_total / 1e3
            all_calls[e.key.removeprefix("aten::")] += e.count
    total = sum(self_ms.values())
    heavy = ", ".join(f"{n} {ms / total:.0%} ({all_calls[n]})" for n, ms in self_ms.most_common(top))
    busy = ", ".join(f"{n} {c}" for n, c in calls.most_common(top))
    return {"ops": len(ops), "most time (share, calls)": heavy, "most calls": busy}


def step_profile(model: LanguageModel, batch: torch.Tensor, top: int = 6) -> dict[str, Any]:
    """Operator counts of one training step (forward, backward, AdamW) on `batch` (B, T + 1)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = batch[:, :-1], batch[:, 1:]
    model.train()

    def step() -> None:
        next_token_loss(model, (x, y)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (optimizer state, first-call allocations)
    with profile() as prof:
        step()
    return _summary(prof, top)


@torch.no_grad()
def decode_profile(model: LanguageModel, prompt: torch.Tensor, top: int = 6) -> dict[str, Any]:
    """Operator counts of one greedy decoding step after `prompt` (1, P) through the cache."""
    model.eval()
    cache = model.new_cache(1)
    logits = model(prompt, cache)[:, -1]
    logits = model(logits.argmax(-1, keepdim=True), cache)[:, -1]
    with profile() as prof:
        model(logits.argmax(-1, keepdim=True), cache)
    return _summary(prof, top)
