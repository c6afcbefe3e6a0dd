"""Run life cycle: resume after a kill gives the same loss curve; W&B only when asked."""

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from repro import registry, runtime
from repro.track import Tracker, wandb_mode
from repro.train.loop import LoopConfig, train
from repro.train.optim import OptimConfig, lr_at


def _ctx(tmp_path):
    tracker = Tracker(tmp_path, "t", {})
    return runtime.RunContext("toy", "smoke", "default", 0, tmp_path, torch.device("cpu"), tracker)


def _toy_training(ctx, steps, fail_at=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def batch_fn(step):
        if step == fail_at:
            raise KeyboardInterrupt  # the run is killed here
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 4, generator=g)
        return x, x.sum(-1, keepdim=True).sin()

    def loss_fn(m, batch):
        return (m(batch[0]) - batch[1]).pow(2).mean()

    cfg = OptimConfig(lr=1e-2, schedule="cosine", warmup_steps=3, weight_decay=0.1, grad_clip=1.0)
    return train(model, batch_fn, loss_fn, cfg, steps, ctx, "toy", loop=LoopConfig(checkpoint_every=5))


def test_killed_run_resumes_on_the_same_loss_curve(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    full = _toy_training(_ctx(tmp_path / "a"), 20)
    ctx = _ctx(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        _toy_training(ctx, 20, fail_at=13)  # last checkpoint at step 10
    resumed = _toy_training(ctx, 20)
    assert len(resumed) == 20
    assert resumed == pytest.approx(full, rel=1e-6, abs=1e-7)


def test_schedules():
    cfg = OptimConfig(lr=1.0, min_lr=0.1, schedule="linear", warmup_steps=0)
    assert lr_at(0, 10, cfg) == 1.0 and lr_at(10, 10, cfg) == pytest.approx(0.1)
    cos = OptimConfig(lr=1.0, min_lr=0.0, schedule="cosine", warmup_steps=4)
    assert lr_at(0, 20, cos) == 0.25 and lr_at(3, 20, cos) == 1.0 and lr_at(12, 20, cos) == pytest.approx(0.5)


def test_wandb_only_when_asked_and_offline_without_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert wandb_mode(None) is None and wandb_mode(False) is None
    assert wandb_mode(True) == "offline"
    monkeypatch.setenv("WANDB_PROJECT", "p")
    assert wandb_mode(None) == "offline" and wandb_mode(False) is None
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr("repro.track._reachable", lambda url, timeout: True)  # tests never touch the network
    assert wandb_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(True) == "disabled"


def test_offline_wandb_run_never_blocks_and_jsonl_stays_the_record(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = Tracker(tmp_path, "offline-test", {"a": 1}, use_wandb=True)
    for step in range(3):
        tracker.log(step, loss=1.0 / (step + 1))
    tracker.close()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "wandb").is_dir()


def test_variant_names_are_stable_and_readable():
    a = registry.variant_name(["steps=10", "eval.sequences=4"])
    assert a == registry.variant_name(["eval.sequences=4", "steps=10"])
    assert a.startswith("eval.sequences=4+steps=10-") and registry.variant_name(None) == "default"


def test_every_runnable_has_the_three_presets_and_its_declared_metadata():
    """Every runnable has smoke/cpu/paper presets and costs, and what the CLI reads from its source
    without importing it (`registry.scan`) is what the imported class says."""
    for name in registry.names():
        runnable = registry.get(name)
        assert set(runnable.presets()) == {"smoke", "cpu", "paper"}, name
        assert runnable.paper_ref and set(runnable.preset_costs) == {"smoke", "cpu", "paper"}, name
        if runnable.kind != "benchmark":
            assert runnable.claim, name
        entry = registry.scan()[name]
        assert (entry.kind, entry.paper_ref, entry.claim) == (runnable.kind, runnable.paper_ref, runnable.claim)
        assert dict(entry.preset_costs) == runnable.preset_costs, name
        assert entry.options == tuple((o.flag, o.key, o.help, o.is_flag) for o in runnable.options), name
        cfg = runnable.config("cpu")
        for option in runnable.options:  # every promoted option names a real config key
            assert option.key.split(".")[0] in {f.name for f in dataclasses.fields(cfg)}, (name, option.key)


def test_progress_writes_plain_lines_when_stderr_is_a_log_file(monkeypatch, capsys):
    """Under nohup or CI rich draws the bar only at the end; long work still reports done/total and eta."""
    from repro.track import progress

    monkeypatch.setenv("REPRO_PROGRESS_EVERY", "0")
    with progress(4, "generate_until") as bar:
        bar.advance(1)
        bar.advance(2, loss=0.5)
    err = capsys.readouterr().err
    assert "generate_until 1/4" in err and "generate_until 3/4" in err and "eta" in err and "loss 0.5" in err


def test_an_evaluation_with_a_scratch_out_never_rewrites_the_committed_reports(tmp_path, monkeypatch):
    import types

    from repro.results import write_report

    monkeypatch.chdir(tmp_path)
    written = []
    exp = types.SimpleNamespace(name="harness", report=lambda df, out: written.append(out) or [])
    write_report(exp, Path("runs"), None, "cpu")
    write_report(exp, tmp_path / "scratch", None, "cpu")
    write_report(exp, tmp_path / "scratch", tmp_path / "mine", "cpu")
    assert written == [Path("reports/harness"), tmp_path / "scratch/reports/harness", tmp_path / "mine/harness"]
