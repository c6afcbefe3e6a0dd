"""Kernel benchmark: correctness first, then time, peak memory and the fraction of the GPU's peak.

`run_benchmark()` is what `repro bench kernels` runs. It first checks every backend it is about to time
against the reference at odd shapes (outputs and gradients); if anything fails it prints only the
failures and raises, so a speedup is never reported on a red gate. Then, on CUDA, for T = 1k ... 32k:

- `memory_retrieval` (strictly causal, the v2 short-term window, the v2 long-term skip): forward and
  forward+backward time and peak memory of the `triton`, `torch` and `reference` backends and of
  `scaled_dot_product_attention` forced onto its flash backend at the same shape (plain causal),
  achieved TFLOP/s and its fraction of the GPU's dense bf16 peak;
- `leaky_scan`: the same for `triton`, `torch` and `reference`, with achieved GB/s and its fraction of
  the memory bandwidth (the scan reads x and the gates once and writes y once).

Without CUDA the Triton kernels cannot be timed (the interpreter is a correctness tool), so it says so
and runs a small CPU comparison of the `reference` and `torch` backends instead, peak memory measured
as the resident-set growth of a fresh process per point.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from repro import hardware, kernels, results
from repro.errors import RunFailed, UserError
from repro.kernels.memory_retrieval import torch_sdpa
from repro.registry import Benchmark, Option, register

IMPLS = ("triton", "torch", "reference", "sdpa-flash")
RETRIEVAL_MASKS = {"causal": (None, 1), "window": (256, 1), "skip": (None, 64)}  # (window, skip)


@dataclass
class Row:
    op: str
    case: str
    impl: str
    T: int
    mode: str  # "fwd" or "fwd+bwd"
    ms: float | None
    peak_mib: float | None
    tflops: float | None = None
    gbps: float | None = None
    frac_peak: float | None = None  # of FLOP/s (retrieval) or bandwidth (scan)
    note: str = ""


# ------------------------------------------------------------------------------------------------
# correctness gate


def _rel(ref: torch.Tensor, got: torch.Tensor) -> float:
    ref, got = ref.detach().double(), got.detach().double()
    if torch.isnan(got).any():
        return math.inf
    return ((ref - got).norm() / ref.norm().clamp_min(1e-12)).item()


def verify(
    backends: tuple[str, ...],
    device: str,
    dtype: torch.dtype = torch.bfloat16,
    shapes: tuple[tuple[int, int], ...] = ((1000, 60), (2047, 64)),
) -> list[str]:
    """Every backend vs the fp32 reference at odd shapes, outputs and all gradients. Returns failures."""
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    failures = []
    g = torch.Generator().manual_seed(0)
    for T, D in shapes:
        q, k, v, do = (torch.randn(2, 2, T, D, generator=g).to(dtype).float() for _ in range(4))  # exact in dtype
        for case, (window, skip) in RETRIEVAL_MASKS.items():
            ref = _retrieval_step(q, k, v, do, window, skip, "reference", device, torch.float32)
            for name in backends:
                got = _retrieval_step(q, k, v, do, window, skip, name, device, dtype)
                for what, a, b in zip(("out", "dq", "dk", "dv"), ref, got, strict=True):
                    if (err := _rel(a, b)) >= tol:
                        failures.append(f"memory_retrieval[{name}] {case} T={T} D={D} {what}: rel err {err:.2e}")
        x, dy = (torch.randn(2, 2, T, D, generator=g).to(dtype).float() for _ in range(2))
        gate, lam = torch.rand(2, 2, T, generator=g) * 2, torch.rand(2, 2, T, generator=g)
        ref = _scan_step(x, gate, lam, dy, "reference", device, torch.float32)
        for name in backends:
            got = _scan_step(x, gate, lam, dy, name, device, dtype)
            for what, a, b in zip(("y", "dx", "dg", "dlam"), ref, got, strict=True):
                if (err := _rel(a, b)) >= (tol if what == "dx" else 1e-4):
                    failures.append(f"leaky_scan[{name}] T={T} D={D} {what}: rel err {err:.2e}")
    return failures


def _retrieval_step(q, k, v, do, window, skip, backend, device, dtype):
    q, k, v = (x.detach().to(device, dtype).requires_grad_() for x in (q, k, v))
    out = kernels.memory_retrieval(q, k, v, window=window, skip=skip, backend=backend)
    (out * do.to(device, dtype)).sum().backward()
    return out, q.grad, k.grad, v.grad


def _scan_step(x, gate, lam, dy, backend, device, dtype):
    x = x.detach().to(device, dtype).requires_grad_()
    gate, lam = gate.detach().to(device).requires_grad_(), lam.detach().to(device).requires_grad_()
    y, _ = kernels.leaky_scan(x, gate, lam, backend=backend)
    (y * dy.to(device)).sum().backward()
    return y, x.grad, gate.grad, lam.grad


# ------------------------------------------------------------------------------------------------
# GPU timing


def _gpu_peaks(name: str) -> tuple[float, float] | None:
    spec = hardware.detect(name)
    return None if spec is None else (spec.flops, spec.bandwidth)


def _cuda_measure(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """(mean ms, peak MiB above the memory already allocated) of fn on the current CUDA device."""
    import triton.testing

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    ms = triton.testing.do_bench(fn, warmup=max(1, reps // 4), rep=reps)
    return ms, peak


def _retrieval_rows(
    T, B, H, D, dtype, peaks, reps, mem_limit, impl_names=IMPLS, device="cuda", measure=None
) -> list[Row]:
    rows = []
    measure = measure or _cuda_measure
    q, k, v, do = (torch.randn(B, H, T, D, device=device, dtype=dtype) for _ in range(4))
    q = q * D**-0.5
    for case, (window, skip) in RETRIEVAL_MASKS.items():
        w = T if window is None else min(window - skip, T)
        pairs = B * H * (T * w - w * (w - 1) / 2 if window is None else T * w)  # visible (t, j) pairs, about
        impls = {
            name: (
                lambda q, k, v, name=name, window=window, skip=skip: kernels.memory_retrieval(
                    q, k, v, window=window, skip=skip, backend=name
                )
            )
            for name in impl_names
            if name in kernels.BACKENDS
        }
        # SDPA's flash kernel at the same shape (j <= t instead of j < t)
        if case == "causal" and "sdpa-flash" in impl_names:
            impls["sdpa-flash"] = torch_sdpa.flash_causal
        for name, call in impls.items():
            if name == "reference" and mem_limit < 3 * B * H * T * T * 4:
                rows.append(Row("memory_retrieval", case, name, T, "fwd", None, None, note="skipped: T x T scores OOM"))
                continue
            for mode, flops_per_pair in (("fwd", 4 * D), ("fwd+bwd", 14 * D)):  # fwd 2 matmuls; bwd 5 more
                fn = (lambda call=call: call(q, k, v)) if mode == "fwd" else _with_backward(call, (q, k, v), do)
                try:
                    ms, peak = measure(fn, reps)
                except RuntimeError as e:  # out of memory, or no flash kernel for this dtype
                    torch.cuda.empty_cache()
                    note = "OOM" if isinstance(e, torch.OutOfMemoryError) else str(e).splitlines()[0][:80]
                    rows.append(Row("memory_retrieval", case, name, T, mode, None, None, note=note))
                    continue
                tflops = flops_per_pair * pairs / (ms * 1e-3) / 1e12
                frac = tflops * 1e12 / peaks[0] if peaks else None
                rows.append(Row("memory_retrieval", case, name, T, mode, ms, peak, tflops=tflops, frac_peak=frac))
    return rows


def _with_backward(call, inputs, grad):
    """fn() running call(*inputs) forward and backward on leaf copies of the inputs."""
    leaves = [x.detach().requires_grad_() for x in inputs]

    def fn():
        for x in leaves:
            x.grad = None
        call(*leaves).backward(grad)

    return fn


def _scan_rows(T, B, H, D, dtype, peaks, reps, impl_names=IMPLS, device="cuda", measure=None) -> list[Row]:
    rows = []
    measure = measure or _cuda_measure
    x = torch.randn(B, H, T, D, device=device, dtype=dtype)
    gate = torch.rand(B, H, T, device=device) * 2
    lam = torch.rand(B, H, T, device=device)
    dy = torch.randn(B, H, T, D, device=device)
    esize = x.element_size()
    moved = {"fwd": B * H * T * (D * (esize + 4) + 8), "fwd+bwd": B * H * T * (D * (2 * esize + 12) + 24)}
    for name in (n for n in impl_names if n in kernels.BACKENDS):
        if name == "reference" and T > 8192:
            rows.append(Row("leaky_scan", "v2", name, T, "fwd", None, None, note="skipped: T sequential steps"))
            continue
        for mode in ("fwd", "fwd+bwd"):
            if mode == "fwd":

                def fn(name=name):
                    return kernels.leaky_scan(x, gate, lam, backend=name)
            else:
                xs, gs, ls = (t.detach().requires_grad_() for t in (x, gate, lam))

                def fn(name=name, xs=xs, gs=gs, ls=ls):
                    xs.grad = gs.grad = ls.grad = None
                    y, _ = kernels.leaky_scan(xs, gs, ls, backend=name)
                    y.backward(dy)

            ms, peak = measure(fn, reps)
            gbps = moved[mode] / (ms * 1e-3) / 1e9
            frac = gbps * 1e9 / peaks[1] if peaks else None
            rows.append(Row("leaky_scan", "v2", name, T, mode, ms, peak, gbps=gbps, frac_peak=frac))
    return rows


# ------------------------------------------------------------------------------------------------
# CPU comparison (torch backends only)


def _rss_mark() -> float:
    """Reset the process's peak-RSS mark (Linux) and return the current RSS in MiB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return _status_mib("VmRSS")
    except OSError:  # not Linux: fall back on the lifetime high-water mark
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mib(field: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_point(op: str, backend: str, T: int, B: int, H: int, D: int, window: int | None, skip: int) -> tuple:
    """Run in a fresh process: (seconds, peak RSS growth in MiB) of one forward+backward."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    if op == "memory_retrieval":
        q, k, v = (torch.randn(B, H, T, D, generator=g).requires_grad_() for _ in range(3))

        def step():
            kernels.memory_retrieval(q, k, v, window=window, skip=skip, backend=backend).sum().backward()
    else:
        x = torch.randn(B, H, T, D, generator=g).requires_grad_()
        gate, lam = torch.rand(B, H, T, generator=g).requires_grad_(), torch.rand(B, H, T, generator=g).requires_grad_()

        def step():
            kernels.leaky_scan(x, gate, lam, backend=backend)[0].sum().backward()

    base = _rss_mark()
    t0 = time.perf_counter()
    step()
    seconds = time.perf_counter() - t0
    return seconds, _status_mib("VmHWM") - base


def cpu_rows(lengths=(2048, 8192, 32768), B=1, H=2, D=32, reference_max_T=8192, scan_max_T=8192) -> list[Row]:
    rows = []
    ctx = multiprocessing.get_context("spawn")
    cases = [("memory_retrieval", case, w, s) for case, (w, s) in {"causal": (None, 1), "window": (128, 1)}.items()]
    cases.append(("leaky_scan", "v2", None, 0))
    for op, case, window, skip in cases:
        for T in lengths:
            for backend in ("torch", "reference"):
                limit = reference_max_T if op == "memory_retrieval" else scan_max_T
                if backend == "reference" and limit < T:
                    rows.append(Row(op, case, backend, T, "fwd+bwd", None, None, note="skipped (too slow or big)"))
                    continue
                with ctx.Pool(1) as pool:
                    seconds, mib = pool.apply(_cpu_point, (op, backend, T, B, H, D, window, skip))
                rows.append(Row(op, case, backend, T, "fwd+bwd", seconds * 1e3, mib))
    return rows


# ------------------------------------------------------------------------------------------------


def format_table(rows: list[Row]) -> str:
    head = "| op | case | impl | T | mode | ms | peak MiB | TFLOP/s | GB/s | of peak | note |"
    lines = [head, "|" + " --- |" * 11]

    def f(x, fmt):
        return "" if x is None else format(x, fmt)

    for r in rows:
        lines.append(
            f"| {r.op} | {r.case} | {r.impl} | {r.T} | {r.mode} | {f(r.ms, '.3f')} | {f(r.peak_mib, '.1f')} | "
            f"{f(r.tflops, '.1f')} | {f(r.gbps, '.0f')} | {f(r.frac_peak, '.0%')} | {r.note} |"
        )
    return "\n".join(lines)


def run_benchmark(
    lengths: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384, 32768),
    batch: int = 4,
    heads: int = 16,
    dim: int = 64,
    dtype: torch.dtype = torch.bfloat16,
    reps: int = 100,
    echo: Callable[[str], None] = print,
    out_dir: str | Path | None = None,
) -> list[Row]:
    """Correctness gate, then the timing table (see the module docstring). Returns the rows; with
    `out_dir`, also writes them there as `bench.md` (header + table) and `bench.json`."""
    if not torch.cuda.is_available():
        echo(
            "No CUDA device: the Triton kernels can only be checked here (TRITON_INTERPRET=1, see "
            "tests/test_kernels.py), not timed. Comparing the CPU backends `reference` and `torch` instead."
        )
        if failures := verify(("torch",), "cpu", torch.float32):
            echo("\n".join(failures))
            raise RuntimeError("memory_retrieval/leaky_scan: the torch backend disagrees with the reference")
        rows = cpu_rows(lengths)
        header = "CPU (no CUDA): reference and torch backends, forward + backward, B=1 H=2 D=32 fp32"
        _emit(rows, header, echo, out_dir)
        return rows
    if failures := verify(("triton", "torch"), "cuda", dtype):
        echo("\n".join(failures))
        raise RuntimeError("kernel correctness check failed: nothing was timed")
    name = torch.cuda.get_device_name()
    peaks = _gpu_peaks(name)
    free, _ = torch.cuda.mem_get_info()
    rows = []
    for T in lengths:
        rows += _retrieval_rows(T, batch, heads, dim, dtype, peaks, reps, mem_limit=free // 2)
        rows += _scan_rows(T, batch, heads, dim, dtype, peaks, reps)
    peak_note = f"peak {peaks[0] / 1e12:.0f} TFLOP/s bf16, {peaks[1] / 1e12:.2f} TB/s" if peaks else "peak unknown"
    _emit(rows, f"{name} ({peak_note}); B={batch} H={heads} D={dim} {dtype}", echo, out_dir)
    return rows


def _emit(rows: list[Row], header: str, echo: Callable[[str], None], out_dir: str | Path | None) -> None:
    table = format_table(rows)
    echo(header)
    echo(table)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.md").write_text(f"{header}\n\n{table}\n")
        (out / "bench.json").write_text(json.dumps({"header": header, "rows": rows_as_dicts(rows)}, indent=1) + "\n")


def rows_as_dicts(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]


@dataclass
class KernelBenchConfig:
    lengths: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384, 32768)  # sequence lengths (GPU)
    batch: int = 4
    heads: int = 16
    dim: int = 64
    dtype: str = "bfloat16"  # bfloat16 | float16 | float32
    reps: int = 100  # timed repetitions per point


def _lengths(text: str) -> tuple[int, ...]:
    from repro.evaluations.ruler import parse_ctx

    return tuple(parse_ctx(text))


@register
class BenchKernels(Benchmark):
    """`repro bench kernels`: correctness against the reference first, then time and fraction of peak."""

    name = "bench-kernels"
    paper_ref = "Kernels (issue 9): memory retrieval and the leaky scan vs the reference and SDPA flash"
    preset_costs = {
        "smoke": "seconds (CPU backends at small lengths)",
        "cpu": "a few minutes on 2 cores (no CUDA: reference vs torch backends, 2k-32k)",
        "paper": "GPU: 1k-32k, bf16, 100 repetitions per point (part of `make gpu-check`, < 8 min)",
    }
    options = (
        Option("--lengths", "lengths", "Sequence lengths (1k = 1024), comma-separated.", parse=_lengths),
        Option("--batch", "batch", "Batch size."),
        Option("--heads", "heads", "Heads."),
        Option("--dim", "dim", "Head dimension."),
        Option("--dtype", "dtype", "bfloat16 | float16 | float32."),
        Option("--reps", "reps", "Timed repetitions per point."),
    )

    def presets(self) -> dict[str, KernelBenchConfig]:
        return {
            "smoke": KernelBenchConfig(lengths=(256,), batch=1, heads=2, dim=16, dtype="float32", reps=2),
            "cpu": KernelBenchConfig(lengths=(2048, 8192, 32768)),  # without CUDA: the torch vs reference backends
            "paper": KernelBenchConfig(),
        }

    def check(self, cfg: KernelBenchConfig) -> None:
        if cfg.dtype not in ("bfloat16", "float16", "float32"):
            raise UserError(f"--dtype {cfg.dtype}: choose bfloat16, float16 or float32.")

    def measure(self, cfg: KernelBenchConfig) -> list[dict[str, Any]]:
        from repro.track import console

        try:
            dtype = getattr(torch, cfg.dtype)
            rows = run_benchmark(cfg.lengths, cfg.batch, cfg.heads, cfg.dim, dtype, cfg.reps, echo=console.print)
        except RuntimeError as e:  # the correctness gate failed: the numbers would mean nothing
            raise RunFailed(f"benchmark refused: {e}") from None
        return rows_as_dicts(rows)

    def write(self, table: list[dict], cfg: KernelBenchConfig, machine: dict, out_dir: Path) -> list[Path]:
        notes = [
            results.machine_note(machine),
            f"B={cfg.batch} H={cfg.heads} D={cfg.dim} {cfg.dtype}; without CUDA only the "
            "reference and torch backends are compared (fp32), peak memory as the resident-set growth of a fresh "
            "process per point. Every backend timed here first matched the reference (outputs and gradients).",
        ]
        return results.write_table(table, out_dir, "Kernels: time, memory and fraction of peak", notes)
