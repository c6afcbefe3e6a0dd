"""`repro bench gpu-check` (`make gpu-check`): everything GPU-specific, measured in one short command on a
machine with one GPU, into a run directory like every runnable (`repro report bench-gpu-check`).

Four parts, each writing its details into the run directory, summarised in one table
(`reports/bench-gpu-check/table.md`):

1. the GPU test tier (`pytest -m gpu`): the Triton kernels against the reference at real sizes;
2. the kernel benchmark (`repro.bench.kernels.run_benchmark`, the same code as `repro bench kernels`):
   memory retrieval and the leaky scan against SDPA's flash kernel at T = 4k..32k, bf16, forward and
   forward + backward, TFLOP/s or GB/s and the fraction of the GPU's peak;
3. training tokens/s of MM v2 and the Llama at equal parameters in one run (`repro.bench.train`):
   bf16 autocast, `torch.compile`, the Triton kernels on;
4. a few FSDP2 steps of the one training loop on the one GPU (a one-rank NCCL group): bf16 mixed
   precision, per-block activation checkpointing and compilation, a sharded (DCP) checkpoint, and the
   measured peak memory beside `repro plan`'s estimate for the same configuration.

Without CUDA it says so in one sentence and exits 2, before anything is written. Budget: under 8
minutes on one H100-class GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from repro.errors import UserError
from repro.registry import Benchmark, Option, register

NO_GPU = (
    "No CUDA GPU is visible on this machine, so there is nothing for `make gpu-check` to measure; run it where one is."
)
LENGTHS = (4096, 8192, 16384, 32768)


def _tests(out: Path) -> dict[str, Any]:
    """The `gpu` tier of the test suite, in a subprocess (its own CUDA context, a time limit)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    (out / "tests.txt").write_text(done.stdout[-20000:] + done.stderr[-5000:])
    last = (done.stdout.strip().splitlines() or ["no output"])[-1]
    return {"part": "GPU tests (pytest -m gpu)", "result": last.strip("= "), "ok": done.returncode == 0}


def _kernels(out: Path) -> dict[str, Any]:
    from repro.bench.kernels import run_benchmark

    lines: list[str] = []
    rows = run_benchmark(LENGTHS, batch=4, heads=16, dim=64, reps=50, echo=lines.append, out_dir=out / "kernels")

    def pick(op: str, case: str, impl: str, T: int) -> Any:
        return next((r for r in rows if (r.op, r.case, r.impl, r.T, r.mode) == (op, case, impl, T, "fwd+bwd")), None)

    parts = []
    for T in (LENGTHS[0], LENGTHS[-1]):
        ours, flash = (
            pick("memory_retrieval", "causal", "triton", T),
            pick("memory_retrieval", "causal", "sdpa-flash", T),
        )
        scan = pick("leaky_scan", "v2", "triton", T)
        if ours and ours.tflops and flash and flash.tflops:
            parts.append(
                f"T={T // 1024}k retrieval {ours.tflops:.0f} TFLOP/s ({_pct(ours.frac_peak)} of peak) vs flash "
                f"{flash.tflops:.0f} ({_pct(flash.frac_peak)})"
            )
        if scan and scan.gbps:
            parts.append(f"scan {scan.gbps:.0f} GB/s ({_pct(scan.frac_peak)})")
    return {"part": "kernels, fwd+bwd bf16 (kernels/bench.md)", "result": "; ".join(parts), "ok": bool(parts)}


def _pct(x: float | None) -> str:
    return "?" if x is None else f"{x:.0%}"


def _equal_size_models(n_layer: int, n_embd: int, n_head: int, block_size: int, vocab: int) -> dict[str, Any]:
    from repro.models.pairing import ShapeV2, build_pair_model

    shape = ShapeV2(n_layer=n_layer, n_head=n_head, n_embd=n_embd, ffn_size=int(3.5 * n_embd), query_chunk=block_size)
    return {f: build_pair_model(f, shape, vocab, block_size) for f in ("llama", "mosaic_v2")}


def _training(
    out: Path,
    shape: dict[str, int] | None = None,
    timing: tuple[int, int, int] = (5, 1, 3),
    compile: bool = True,
    device: str = "cuda",
) -> dict[str, Any]:
    """MM v2 vs Llama training tok/s at equal parameters, measured by the one speed benchmark;
    `timing` = (timed steps per round, warm-up rounds, rounds)."""
    from repro.bench.pairs import PairShape
    from repro.bench.train import ThroughputConfig, training_throughput, write_throughput_report
    from repro.results import machine

    shape = shape or dict(n_layer=8, n_head=16, n_embd=1024, block_size=2048, batch_size=8, vocab_size=32768)
    steps, warmup, rounds = timing
    T = shape["block_size"]
    dims = {k: shape[k] for k in ("n_layer", "n_head", "n_embd", "vocab_size")}
    cfg = ThroughputConfig(
        pairs=("v2",), lengths=(T,), tokens=shape["batch_size"] * T, shape=PairShape(**dims, ffn_mult=3.5),
        steps=steps, warmup=warmup, rounds=rounds, compile=compile, device=device, profile=False,
    )  # fmt: skip
    rows = {r["model"]: r for r in training_throughput(cfg)}
    write_throughput_report(list(rows.values()), cfg, machine(), out / "train_throughput")
    speed = {f: r["tok/s median"] for f, r in rows.items()}
    params = {f: r["params (M)"] for f, r in rows.items()}
    ratio = rows["mosaic_v2"]["ratio"]
    result = f"Llama {speed['llama']:,.0f} tok/s, MM v2 {speed['mosaic_v2']:,.0f} tok/s (x{ratio:.2f}), "
    result += f"{params['llama']:.0f}M vs {params['mosaic_v2']:.0f}M params, T={T}"
    equal = abs(params["mosaic_v2"] / params["llama"] - 1) < 0.01  # the comparison is at equal size
    return {"part": "training tok/s, bf16, compiled, Triton", "result": result, "ok": equal}


def _fsdp(
    out: Path,
    steps: int = 6,
    device: str = "cuda",
    shape: dict[str, int] | None = None,
    batch: int = 4,
    compile: bool = True,
) -> dict[str, Any]:
    """FSDP2 through `repro.train.loop.train` in a one-rank process group (NCCL on CUDA, gloo on CPU for
    the tests), against the planner's estimate (CUDA only: CPU has no allocator statistics)."""
    import torch.distributed as dist

    from repro.plan import memory_per_gpu, sizes, trace_activations
    from repro.runtime import RunContext
    from repro.track import Tracker
    from repro.train import distributed
    from repro.train.loop import LoopConfig, train
    from repro.train.optim import OptimConfig

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    cuda = device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)
    try:
        if cuda:
            torch.cuda.set_device(0)
        shape = shape or dict(n_layer=8, n_embd=1024, n_head=16, block_size=2048, vocab=32768)
        B, T, V = batch, shape["block_size"], shape["vocab"]
        build = lambda: _equal_size_models(**shape)["mosaic_v2"]  # noqa: E731
        torch.manual_seed(0)
        model = build()
        loop = LoopConfig(
            log_every=1,
            checkpoint_every=steps,
            amp="bf16" if cuda else "off",
            compile=compile,
            strategy="fsdp",
            activation_checkpointing=True,
        )
        g = torch.Generator().manual_seed(0)
        data = torch.randint(V, (steps, B, T + 1), generator=g)

        def batch_fn(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return data[i, :, :-1], data[i, :, 1:]

        def lm_loss(m: torch.nn.Module, batch: Any) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(m(x).flatten(0, 1).float(), y.flatten())

        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp)
            tracker = Tracker(run_dir, "gpu-check", {}, use_wandb=False)
            ctx = RunContext("gpu-check", "gpu", "fsdp", 0, run_dir, torch.device(device, 0), tracker)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            tick = time.perf_counter()
            losses = train(model, batch_fn, lm_loss, OptimConfig(lr=3e-4), steps, ctx, "fsdp", loop=loop)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - tick
            peak = torch.cuda.max_memory_allocated() if cuda else 0
            sharded = distributed.is_sharded(model)
            shards = sorted(p.name for p in (run_dir / "state" / "fsdp.train.dcp").iterdir())
            tok_s = [v for _, v in ctx.metric_curve("fsdp/tok_per_s")][2:]  # after compilation
            tracker.close()
        with torch.device("meta"):
            s = sizes(build())
        act = trace_activations(build, B, T, torch.bfloat16 if cuda else torch.float32, "triton" if cuda else "torch")
        planned = memory_per_gpu(s, "fsdp", 1, act.peak(True))["total"]
        record = {
            "losses": losses,
            "seconds": seconds,
            "peak_bytes": peak,
            "planned_bytes": planned,
            "tok_per_s": tok_s,
            "dcp_files": shards,
            "sharded": sharded,
            "params": s.params,
            "shape": shape,
        }
        (out / "fsdp.json").write_text(json.dumps(record, indent=1))
        ok = sharded and all(v == v for v in losses) and losses[-1] < losses[0] and ".metadata" in shards
        speed = f"{sum(tok_s) / len(tok_s):,.0f} tok/s, " if tok_s else ""
        result = (
            f"{steps} steps of MM v2 {s.params / 1e6:.0f}M (bf16, act. ckpt, compiled): loss {losses[0]:.2f} -> "
            f"{losses[-1]:.2f}, {speed}peak {peak / 2**30:.2f} GiB vs planned {planned / 2**30:.2f} GiB"
        )
        return {"part": "FSDP2 steps on one GPU", "result": result, "ok": ok}
    finally:
        dist.destroy_process_group()


PARTS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "tests": _tests,
    "kernels": _kernels,
    "training": _training,
    "fsdp": _fsdp,
}


@dataclass
class GpuCheckConfig:
    skip: list[str] = field(default_factory=list)  # parts to skip: tests, kernels, training, fsdp


@register
class BenchGpuCheck(Benchmark):
    """`repro bench gpu-check`: the GPU test tier, kernels, MM v2 vs Llama speed and FSDP steps."""

    name = "bench-gpu-check"
    paper_ref = "Scale-out (issue 18): Triton kernels, training speed and FSDP2 on one GPU"
    preset_costs = {
        "smoke": "needs a CUDA GPU (the same parts as cpu)",
        "cpu": "needs a CUDA GPU: < 8 min on one H100-class GPU",
        "paper": "needs a CUDA GPU: < 8 min on one H100-class GPU",
    }
    options = (Option("--skip", "skip", "Parts to skip, comma-separated: tests, kernels, training, fsdp."),)

    def presets(self) -> dict[str, GpuCheckConfig]:
        return {p: GpuCheckConfig() for p in ("smoke", "cpu", "paper")}

    def check(self, cfg: GpuCheckConfig) -> None:
        if not torch.cuda.is_available():
            raise UserError(NO_GPU)
        unknown = sorted(set(cfg.skip) - set(PARTS))
        if unknown:
            raise UserError(f"--skip {','.join(unknown)}: choose from {', '.join(PARTS)}.")

    def run(self, cfg: GpuCheckConfig, ctx: Any) -> list[dict[str, Any]]:
        from repro.results import table_rows
        from repro.track import console

        table = []
        for name, fn in PARTS.items():
            if name in cfg.skip:
                continue
            tick = time.perf_counter()
            try:
                row = fn(ctx.run_dir)
            except Exception as e:  # a failed part is reported in the table; the other parts still run
                (ctx.run_dir / f"{name}.error.txt").write_text(traceback.format_exc())
                row = {"part": name, "result": f"FAILED: {type(e).__name__}: {str(e)[:200]}", "ok": False}
            row["ok"] = "yes" if row["ok"] else "NO"
            row["seconds"] = round(time.perf_counter() - tick)
            table.append(row)
            console.print(f"[gpu-check] {row['part']}: {row['result']} ({row['seconds']} s)", highlight=False)
        return table_rows(ctx, table, cfg)

    def report(self, df: Any, out_dir: Path) -> list[Path]:
        from repro.results import machine_note, table_from_rows, write_table

        table, machine, _ = table_from_rows(df)
        failed = [r["part"] for r in table if r.get("ok") != "yes"]
        verdict = f"parts failed: {', '.join(failed)}" if failed else f"all {len(table)} parts passed"
        notes = [machine_note(machine), f"{verdict}; details in the run directory (kernels/, tests.txt, fsdp.json)."]
        return write_table(table, out_dir, "GPU check", notes)
