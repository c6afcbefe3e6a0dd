"""Negative interference: the memory-based learner is exact kernel smoothing, and the smoke run works."""

from __future__ import annotations

import json

import torch

from repro import registry, runtime
from repro.experiments.negative_interference import KernelMemory, StreamConfig, loo_bandwidth, make_stream


def test_memory_is_gaussian_kernel_smoothing():
    gen = torch.Generator().manual_seed(0)
    x, y, q = torch.rand(40, 1, generator=gen), torch.randn(40, 1, generator=gen), torch.rand(7, 1, generator=gen)
    memory = KernelMemory(bandwidth=0.05)
    memory.store(x[:20], y[:20])
    memory.store(x[20:], y[20:])
    w = torch.exp(-(q - x.T).pow(2) / (2 * 0.05**2))  # (7, 40)
    expected = (w @ y) / w.sum(1, keepdim=True)
    torch.testing.assert_close(memory(q), expected, rtol=1e-4, atol=1e-5)


def test_loo_prefers_a_sensible_bandwidth_and_stream_is_deterministic():
    cfg = StreamConfig(regions=2, samples_per_phase=200, noise=0.05)
    a, b = make_stream(cfg, 3), make_stream(cfg, 3)
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b, strict=True))
    assert a[0][0].max() <= 0.5 <= a[1][0].min()  # phase r only shows region r
    best, errors = loo_bandwidth(*a[0], (1e-4, 0.01, 1.0))
    assert best == 0.01 and errors[1.0] > errors[0.01]  # too wide oversmooths, too narrow fits noise


def test_smoke_run_and_report(tmp_path):
    exp = registry.get("negative-interference")
    run_dir = runtime.launch(exp, preset="smoke", seed=0, out=tmp_path / "runs")
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]
    mse = {(r["model"], r["step"], r["slice_value"]): r["value"] for r in rows if r["metric"] == "mse"}
    last = max(step for _, step, _ in mse)
    # The memory keeps the first region as well as right after learning it (it only adds pairs elsewhere).
    assert abs(mse[("memory", last, 0)] - mse[("memory", 0, 0)]) < 1e-3
    import pandas as pd

    paths = exp.report(pd.DataFrame(rows), tmp_path / "report")
    assert any(p.name == "fig_negative_interference.png" for p in paths)
    assert "Negative interference" in (tmp_path / "report" / "table.md").read_text()
