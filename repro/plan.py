"""`repro plan`: what a preset costs before anything is allocated.

For each model of an experiment's preset (built on the meta device) and each training stage:
parameters, forward FLOPs per token, tokens to train, memory per GPU under DDP and under FSDP, with
and without per-block activation checkpointing, and GPU-hours at a stated utilisation.

Memory per GPU, in bytes (P parameters, N GPUs; AdamW with fp32 master weights, as the loop runs):

- DDP: weights 4P + gradients 4P + DDP's bucket copy of the gradients 4P + AdamW moments 8P;
- FSDP (`repro.train.distributed.shard`): the same 16P sharded over N, plus the units in flight: the
  root (embedding, head) gathered in bf16 with its bf16 gradient, two blocks gathered in bf16 (the
  running one and the prefetched next) and one block's gradient in bf16 plus its fp32 reduce copy;
- activations: traced, not guessed. The model's forward and loss run once on fake tensors (no memory
  is allocated) at the stage's micro-batch and context in the compute dtype, with the kernel backend
  the target uses (Triton on GPUs, whose custom ops have fake implementations); every tensor saved
  for the backward is summed once per storage, parameters excluded. With activation checkpointing a
  block keeps only its input, and one block at a time is recomputed during the backward. The loss
  backward also holds a transient gradient the size of the largest saved tensor outside the blocks
  (the fp32 log-probabilities).

GPU-hours: 3 x forward FLOPs per token (forward + backward; activation recomputation is not counted
as useful work, the MFU convention) x tokens / (utilisation x peak bf16 FLOP/s).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from repro import hardware
from repro.errors import UserError

GB = 1e9
HEADROOM = 0.9  # usable share of a GPU's memory: the CUDA context, NCCL buffers and fragmentation take the rest


@dataclass
class PlanStage:
    name: str
    micro_batch: int  # sequences per micro-batch on one GPU
    context: int
    steps: int


@dataclass
class PlanModel:
    label: str
    build: Callable[[], nn.Module]  # called under torch.device("meta")
    note: str = ""


@dataclass
class PlanSpec:
    models: list[PlanModel]
    stages: list[PlanStage]
    accum: int  # micro-batches per step on each GPU
    activation_checkpointing: bool = False  # what the preset runs with
    strategy: str = "ddp"


@dataclass
class Activations:
    """Bytes saved for the backward by one forward + loss (see the module docstring)."""

    total: int  # everything, no checkpointing
    block_inputs: int  # sum of the blocks' inputs (what checkpointing keeps)
    largest_block: int  # the most any one block saves (recomputed one at a time)
    outside_blocks: int  # embedding, final norm, head, loss
    loss_transient: int  # largest saved tensor outside the blocks

    def peak(self, checkpointing: bool) -> int:
        kept = self.block_inputs + self.outside_blocks + self.largest_block if checkpointing else self.total
        return kept + self.loss_transient


def _blocks(model: nn.Module) -> list[nn.Module]:
    from repro.train.distributed import blocks_of

    return blocks_of(model)


@contextmanager
def _kernel_backend(name: str | None):
    old = os.environ.get("REPRO_KERNELS")
    if name is not None:
        os.environ["REPRO_KERNELS"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("REPRO_KERNELS", None)
        else:
            os.environ["REPRO_KERNELS"] = old


def trace_activations(
    build: Callable[[], nn.Module],
    micro_batch: int,
    context: int,
    dtype: torch.dtype = torch.bfloat16,
    backend: str | None = None,
) -> Activations:
    """Run forward + loss of `build()` once on fake tensors and account every tensor saved for the
    backward (module docstring). Nothing of the model's or the activations' size is allocated."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with torch.device("meta"):
        model = build()
    model.train()
    if hasattr(model, "long_skip"):  # MM v2 draws m with .item(), which fake tensors cannot answer
        m = model.config.long_skip_min
        model.long_skip = lambda: m
    blocks = _blocks(model)
    saved: dict[int, int] = {}
    per_block = [dict() for _ in blocks]
    inputs = [0] * len(blocks)
    current: list[int | None] = [None]
    with FakeTensorMode(allow_non_fake_inputs=True), _kernel_backend(backend):
        for module in model.modules():  # fake parameters in the compute dtype (what a bf16 policy runs)
            for name, p in list(module._parameters.items()):
                if p is not None:
                    module._parameters[name] = nn.Parameter(torch.empty(p.shape, dtype=dtype))
        params = {p.untyped_storage()._cdata for p in model.parameters()}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage._cdata not in params:
                saved[storage._cdata] = storage.nbytes()
                if current[0] is not None:
                    per_block[current[0]][storage._cdata] = storage.nbytes()
            return t

        def enter(i: int) -> Callable:
            def hook(_module: nn.Module, args: tuple) -> None:
                current[0] = i
                inputs[i] = sum(a.untyped_storage().nbytes() for a in args if isinstance(a, torch.Tensor))

            return hook

        def leave(_module: nn.Module, _args: tuple, _out: Any) -> None:
            current[0] = None

        handles = [b.register_forward_pre_hook(enter(i)) for i, b in enumerate(blocks)]
        handles += [b.register_forward_hook(leave) for b in blocks]
        vocab = model.config.vocab_size
        x = torch.randint(vocab, (micro_batch, context))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = model(x)
            F.cross_entropy(logits.flatten(0, 1).float(), x.flatten())  # the loop's lm loss
        for h in handles:
            h.remove()
    in_blocks = set().union(*[set(b) for b in per_block]) if blocks else set()
    outside = {k: v for k, v in saved.items() if k not in in_blocks}
    return Activations(
        total=sum(saved.values()),
        block_inputs=sum(inputs),
        largest_block=max((sum(b.values()) for b in per_block), default=0),
        outside_blocks=sum(outside.values()),
        loss_transient=max(outside.values(), default=0),
    )


@dataclass
class Sizes:
    params: int
    block_params: int  # the largest block
    root_params: int  # parameters outside the blocks (embedding, head, norms)


def sizes(model: nn.Module) -> Sizes:
    blocks = _blocks(model)
    total = sum(p.numel() for p in model.parameters())
    in_blocks = sum(p.numel() for b in blocks for p in b.parameters())
    largest = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0)
    return Sizes(total, largest, total - in_blocks)


def memory_per_gpu(s: Sizes, strategy: str, gpus: int, activations: int) -> dict[str, float]:
    """Bytes per GPU by component (module docstring); `activations` from `Activations.peak`."""
    P = s.params
    if strategy == "single":  # one process, no wrapper: the loop's plain path
        parts = {"weights": 4 * P, "gradients": 4 * P, "optimizer": 8 * P, "in flight": 0}
    elif strategy == "ddp":
        parts = {"weights": 4 * P, "gradients": 8 * P, "optimizer": 8 * P, "in flight": 0}
    else:
        in_flight = 2 * 2 * s.root_params + 2 * 2 * s.block_params + (2 + 4) * s.block_params
        parts = {"weights": 4 * P / gpus, "gradients": 4 * P / gpus, "optimizer": 8 * P / gpus, "in flight": in_flight}
    parts["activations"] = activations
    parts["total"] = sum(parts.values())
    return parts


@dataclass
class PlanResult:
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per model x stage x strategy x ckpt
    models: list[dict[str, Any]] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)


def plan(
    spec: PlanSpec,
    gpus: int,
    gpu_memory_gb: float,
    peak_tflops: float,
    mfu: float,
    dtype: torch.dtype = torch.bfloat16,
    backend: str | None = None,
) -> PlanResult:
    out = PlanResult()
    usable = gpu_memory_gb * GB * HEADROOM
    for pm in spec.models:
        with torch.device("meta"):
            model = pm.build()
        s = sizes(model)
        fpt = {st.name: model.flops_per_token(st.context) for st in spec.stages}
        out.models.append(
            {
                "model": pm.label + (f" ({pm.note})" if pm.note else ""),
                "params": s.params,
                "GFLOPs/token @256": model.flops_per_token(256) / 1e9,
                **{f"GFLOPs/token @{st.context}": fpt[st.name] / 1e9 for st in spec.stages},
            }
        )
        for st in spec.stages:
            act = trace_activations(pm.build, st.micro_batch, st.context, dtype, backend)
            global_batch = st.micro_batch * spec.accum * gpus
            tokens = st.steps * global_batch * st.context
            gpu_hours = 3 * fpt[st.name] * tokens / (mfu * peak_tflops * 1e12) / 3600
            for strategy in ("ddp", "fsdp"):
                for ckpt in (False, True):
                    mem = memory_per_gpu(s, strategy, gpus, act.peak(ckpt))
                    out.rows.append(
                        {
                            "model": pm.label,
                            "stage": st.name,
                            "micro-batch x context": f"{st.micro_batch} x {st.context}",
                            "global batch": global_batch,
                            "tokens": tokens,
                            "GPU-hours": gpu_hours,
                            "strategy": strategy,
                            "act. ckpt": ckpt,
                            **{k: v / GB for k, v in mem.items()},
                            "fits": mem["total"] <= usable,
                        }
                    )
            out.advice += _advice(pm.label, st, s, act, gpus, usable, spec.accum)
    return out


def _advice(label: str, st: PlanStage, s: Sizes, act: Activations, gpus: int, usable: float, accum: int) -> list[str]:
    """Plain sentences: what fits, and if nothing does, the smallest change that would."""
    where = f"{label}, {st.name} ({st.micro_batch} x {st.context} per micro-batch, {gpus} GPUs)"
    fits = [
        (strategy, ckpt)
        for strategy in ("ddp", "fsdp")
        for ckpt in (False, True)
        if memory_per_gpu(s, strategy, gpus, act.peak(ckpt))["total"] <= usable
    ]
    if fits:
        ways = [f"{strategy.upper()}" + (" with activation checkpointing" if ckpt else "") for strategy, ckpt in fits]
        return [f"{where}: fits with " + "; ".join(ways) + "."]
    ddp_states = memory_per_gpu(s, "ddp", gpus, 0)["total"]
    text = (
        f"{where}: does not fit in {usable / GB:.0f} GB usable per GPU (DDP's replicated weights, gradients and "
        f"AdamW state alone take {ddp_states / GB:.0f} GB). "
    )
    fixes = []
    for n in (2**k for k in range(0, 16)):  # more GPUs: only the sharded states shrink
        if n > gpus and memory_per_gpu(s, "fsdp", n, act.peak(True))["total"] <= usable:
            fixes.append(f"FSDP with activation checkpointing on {n} GPUs (--gpus {n})")
            break
    per_seq = act.peak(True) / st.micro_batch  # activations grow with the micro-batch, about linearly
    room = usable - memory_per_gpu(s, "fsdp", gpus, 0)["total"]
    if room > 0 and math.floor(room / per_seq) >= 1:
        mb = 2 ** int(math.log2(math.floor(room / per_seq)))
        if mb < st.micro_batch:
            keep = accum * st.micro_batch // mb
            fixes.append(
                f"FSDP with activation checkpointing at micro-batch {mb} (--set {st.name}.batch_size={mb} "
                f"--set loop.accum={keep} keeps the global batch)"
            )
    if fixes:
        return [text + "Would fit: " + "; or ".join(fixes) + "."]
    floor = memory_per_gpu(s, "fsdp", 1 << 15, per_seq)["total"] / HEADROOM
    return [
        text + f"No number of GPUs or micro-batch fits it: one sequence of {st.context} tokens needs "
        f"{per_seq / GB:.0f} GB of activations even with checkpointing, so it needs GPUs of at least "
        f"{floor / GB:.0f} GB (--gpu-memory), or a shorter context."
    ]


def check_spec(spec: Any, name: str) -> PlanSpec:
    if not isinstance(spec, PlanSpec):
        raise UserError(f"experiment '{name}' has no training plan; `repro plan` supports mmv2-pretrain.")
    return spec


def gpu_specs(gpu: str, gpu_memory_gb: float | None) -> tuple[float, float]:
    """(peak dense bf16 TFLOP/s, GB) of a GPU model, from `repro.hardware`'s data sheets."""
    spec = hardware.gpu(gpu)
    if gpu_memory_gb is not None and gpu_memory_gb <= 0:
        raise UserError(f"--gpu-memory {gpu_memory_gb:g}: give the GB of memory per GPU, a positive number.")
    return spec.flops / 1e12, gpu_memory_gb or spec.memory_gb


def _md(rows: list[dict[str, Any]]) -> list[str]:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    return lines + ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows] + [""]


def render(result: PlanResult, header: str, memory: float, backend: str, gpus: int) -> str:
    """The plan as markdown: models, training cost, memory per GPU, then the plain sentences."""
    models = [
        {
            "model": m["model"],
            "params": f"{m['params'] / 1e9:.3f}B",
            **{k: f"{v:.2f}" for k, v in m.items() if k.startswith("GFLOPs")},
        }
        for m in result.models
    ]
    cost = [
        {
            "model": r["model"],
            "stage": r["stage"],
            "micro-batch x context": r["micro-batch x context"],
            "global batch": r["global batch"],
            "tokens": f"{r['tokens']:.3g}",
            "GPU-hours": f"{r['GPU-hours']:,.0f}",
            f"days on {gpus} GPUs": f"{r['GPU-hours'] / gpus / 24:,.1f}",
        }
        for r in result.rows[::4]
    ]
    cols = ("weights", "gradients", "optimizer", "in flight", "activations", "total")
    mem = [
        {
            "model": r["model"],
            "stage": r["stage"],
            "strategy": r["strategy"],
            "act. ckpt": "yes" if r["act. ckpt"] else "no",
            **{c: f"{r[c]:.1f}" for c in cols},
            "fits": "yes" if r["fits"] else "NO",
        }
        for r in result.rows
    ]
    lines = [header, "", "## Models (meta device)", "", *_md(models), "## Training cost", "", *_md(cost)]
    lines += [f"## Memory per GPU, GB ({HEADROOM:.0%} of {memory:.0f} GB usable)", "", *_md(mem), "## Verdict", ""]
    lines += [f"- {a}" for a in result.advice] + [""]
    lines.append(
        f"Activations traced once on fake tensors (bytes saved for the backward, once per storage) with the "
        f"'{backend}' kernels in bf16; GPU-hours = 3 x forward FLOPs x tokens / (MFU x peak). Formulas: repro/plan.py."
    )
    return "\n".join(lines) + "\n"


def gpu_backend() -> str:
    """The kernels to trace with: what a GPU run uses (Triton: its custom ops have fake implementations),
    or the torch backend where Triton is not installed (it saves more, see the plan's footnote)."""
    import importlib.util

    return "triton" if importlib.util.find_spec("triton") is not None else "torch"


def print_plan(
    spec: PlanSpec, title: str, *, gpus: int, gpu: str, gpu_memory_gb: float | None, mfu: float, out: Any = None
) -> PlanResult:
    """Compute the plan, print it as markdown (and write it to `out` when given); returns it."""
    from repro.track import console

    if gpus < 1 or not 0 < mfu <= 1:
        raise UserError("--gpus must be >= 1 and --mfu in (0, 1].")
    peak, memory = gpu_specs(gpu, gpu_memory_gb)
    backend = gpu_backend()
    result = plan(spec, gpus, memory, peak, mfu, backend=backend)
    header = (
        f"# Plan: {title}\n\n{gpus} x {gpu} ({memory:.0f} GB, {peak:.0f} TFLOP/s dense bf16 peak), {mfu:.0%} MFU "
        f"assumed; {spec.accum} micro-batches per step per GPU; the preset runs {spec.strategy}"
        + (" with activation checkpointing." if spec.activation_checkpointing else ".")
    )
    text = render(result, header, memory, backend, gpus)
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    if out is not None:
        from pathlib import Path

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    return result
