"""`repro plan`: the paper's sizes from meta-device models, activations traced on fake tensors, and the
memory estimate against a measured peak on CPU.

How the peak is measured (`_PROBE`, a fresh interpreter per model): glibc's mmap threshold is pinned at
64 KiB (MALLOC_MMAP_THRESHOLD_) so that every freed tensor goes back to the system and the resident
size follows the live tensors; a warm-up step on a throw-away copy loads the code pages; the baseline
is the resident size after it; the peak is the kernel's high-water mark (VmHWM, reset through
/proc/self/clear_refs) over a second training step of a fresh model, whose AdamW state exists by
then. Peak minus baseline = what one steady-state step holds, as the planner's single-process total.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from repro import registry
from repro.cli import app
from repro.models.registry import build_model
from repro.plan import gpu_backend, memory_per_gpu, plan, sizes, trace_activations

_PROBE = r"""
import gc, json, sys
from pathlib import Path
import torch, torch.nn.functional as F
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[2])
from test_plan import build_small
from repro.plan import memory_per_gpu, sizes, trace_activations

family, B, T = sys.argv[1], 4, 256

def status(field):
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024

def step(model, opt, x):
    F.cross_entropy(model(x).flatten(0, 1).float(), x.flatten()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

x = torch.randint(8192, (B, T), generator=torch.Generator().manual_seed(0))
m = build_small(family); o = torch.optim.AdamW(m.parameters()); step(m, o, x); del m, o; gc.collect()
Path("/proc/self/clear_refs").write_text("5")
base = status("VmRSS")
m = build_small(family); o = torch.optim.AdamW(m.parameters()); step(m, o, x); gc.collect()
Path("/proc/self/clear_refs").write_text("5")
step(m, o, x)
peak = status("VmHWM") - base
act = trace_activations(lambda: build_small(family), B, T, torch.float32, "torch")
print(json.dumps({"measured": peak, "planned": memory_per_gpu(sizes(m), "single", 1, act.peak(False))["total"]}))
"""


def build_small(family: str) -> torch.nn.Module:
    shape = dict(n_layer=2, n_head=4, n_embd=256, vocab_size=8192, ffn_size=768, block_size=256)
    if family == "llama":
        return build_model("llama", **shape)
    return build_model("mosaic_v2", **shape, short_window=32, long_skip_min=16, long_skip_max=16, query_chunk=64)


def _spec(preset: str, *overrides: str):
    from repro import config as cfglib

    exp = registry.get("mmv2-pretrain")
    return exp.plan(cfglib.apply_overrides(exp.config(preset), list(overrides)))


def test_paper_preset_gives_the_papers_sizes():
    """§4.2: 8.8B (transformer), 9.9B (MM v2), 8.3B (MM v2 without long-term memory), from the
    preset's own config on the meta device."""
    spec = _spec("paper")
    got = []
    for m in spec.models:
        with torch.device("meta"):
            model = m.build()
        assert all(p.is_meta for p in model.parameters())  # nothing allocated
        got.append(round(sizes(model).params / 1e9, 1))
    assert got == [8.8, 9.9, 8.3]
    assert spec.accum * spec.stages[0].micro_batch * 64 == 1024  # the paper's global batch at 64 GPUs


@pytest.mark.slow  # a fresh interpreter and three training steps per model: ~10-20 s on a shared 2-core machine
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure the peak")
@pytest.mark.parametrize("family", ["llama", "mosaic_v2"])
def test_memory_estimate_within_20_percent_of_the_measured_peak(family):
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, family, str(Path(__file__).parent)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["measured"] > 100 * 2**20  # large enough that allocator noise is small
    assert abs(r["planned"] - r["measured"]) / r["measured"] < 0.2, r


def test_fake_trace_equals_the_saved_bytes_of_a_real_forward(monkeypatch):
    """The fake-tensor trace counts what a real forward saves (same hooks on real tensors), on the
    backend it traces (the C loops, a CPU default, save other tensors)."""
    monkeypatch.setenv("REPRO_KERNELS", "torch")
    torch.manual_seed(0)
    cfg = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=64, ffn_size=48, block_size=16)
    model = build_model("llama", **cfg)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            saved[s.data_ptr()] = s.nbytes()
        return t

    x = torch.randint(64, (3, 16))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(model(x).flatten(0, 1).float(), x.flatten())
    act = trace_activations(lambda: build_model("llama", **cfg), 3, 16, torch.float32, "torch")
    assert act.total == sum(saved.values())
    assert act.block_inputs == 2 * 3 * 16 * 32 * 4  # one fp32 (B, T, C) input per block
    assert act.peak(True) < act.peak(False)


def test_fsdp_shards_the_states_and_ddp_does_not():
    with torch.device("meta"):
        s = sizes(build_model("llama", n_layer=4, n_embd=64, n_head=4, vocab_size=256, ffn_size=128))
    ddp, fsdp = memory_per_gpu(s, "ddp", 8, 0), memory_per_gpu(s, "fsdp", 8, 0)
    assert ddp["optimizer"] == 8 * s.params and fsdp["optimizer"] == pytest.approx(s.params)
    assert s.root_params == 2 * 256 * 64 + 64  # embedding + head + final norm
    assert s.root_params + 4 * s.block_params == s.params


def test_plan_says_when_nothing_fits_and_what_would():
    spec = _spec("smoke")
    result = plan(spec, gpus=1, gpu_memory_gb=0.004, peak_tflops=989, mfu=0.4, backend="torch")
    assert not any(r["fits"] for r in result.rows)
    text = " ".join(result.advice)
    assert "does not fit" in text and ("Would fit" in text or "No number of GPUs" in text)
    roomy = plan(spec, gpus=1, gpu_memory_gb=80, peak_tflops=989, mfu=0.4, backend="torch")
    assert all(r["fits"] for r in roomy.rows) and all("fits with DDP" in a for a in roomy.advice)


def test_plan_command(tmp_path):
    out = tmp_path / "plan.md"
    args = ["plan", "mmv2-pretrain", "--preset", "smoke", "--gpus", "2", "--gpu", "A100", "--write", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "2 x A100 (80 GB, 312 TFLOP/s" in text and "| fsdp | yes |" in text
    assert re.search(r"GPU-hours", text)
    bad = CliRunner().invoke(app, ["plan", "three-moons", "--preset", "smoke"])
    assert bad.exit_code == 2 and "no training plan" in bad.output


@pytest.mark.slow  # traces three 8-10B models at 4k and 32k on fake tensors: ~15 s
def test_paper_preset_fits_only_sharded_and_checkpointed_on_64_h100s():
    spec = _spec("paper")
    result = plan(spec, gpus=64, gpu_memory_gb=80, peak_tflops=989, mfu=0.4, backend=gpu_backend())
    fits = {(r["model"], r["stage"], r["strategy"], r["act. ckpt"]) for r in result.rows if r["fits"]}
    assert fits == {(m.label, st.name, "fsdp", True) for m in spec.models for st in spec.stages}
    assert all(r["tokens"] == pytest.approx(1.007e12, rel=1e-3) for r in result.rows if r["stage"] == "pretrain")
