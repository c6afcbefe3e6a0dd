"""Fault injection: divergence, torn and concurrent writes, signals, kills, bad input, bad data and bad
checkpoints. Each case ends in one sentence and a non-zero exit (2 for bad input), loses no finished
work, and never leaves a run that looks finished but is not."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from repro import files, results, runtime, statefile
from repro.cli import app
from repro.errors import RunFailed, UserError
from repro.models.registry import load as load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from fault_toy import FaultToy  # noqa: E402

runner = CliRunner()
TOY_SCRIPT = Path(__file__).parent / "fault_toy.py"
TINY_MOONS = ["--preset", "smoke", "--set", "steps=20", "--set", "eval.sequences=2", "--set", "heads=3"]


def strict_json(line: str) -> dict:
    """Parse as standard JSON: the bare NaN / Infinity tokens Python accepts are an error here."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(line, parse_constant=refuse)


def one_sentence(output: str) -> str:
    text = " ".join(output.split())
    assert "Traceback" not in output, output
    return text


def toy_run(out: Path, overrides: list[str] | None = None, **kw) -> Path:
    return runtime.launch(FaultToy(), preset="smoke", overrides=overrides, out=out, wandb=False, **kw)


def toy_rows(run_dir: Path) -> list[dict]:
    return [strict_json(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]


def toy_process(out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "COLUMNS": "200"}
    cmd = [sys.executable, str(TOY_SCRIPT), "run", "fault-toy", "--preset", "smoke", "--out", str(out), *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_step(proc: subprocess.Popen, metrics: Path, step: int, timeout: float = 120) -> None:
    """Poll metrics.jsonl (what a user would watch) until this process has logged `step`."""
    seen = len(files.read_jsonl(metrics)) if metrics.exists() else 0  # lines of earlier processes
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.exists() and any(r.get("step", -1) >= step for r in files.read_jsonl(metrics)[seen:]):
            return
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def toy_run_dir(out: Path, timeout: float = 120) -> Path:
    """The run directory a toy process makes (it appears once its config is validated)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = next(out.glob("fault-toy/smoke/*/s0"), None)
        if found is not None:
            return found
        time.sleep(0.02)
    raise AssertionError(f"no run directory under {out} after {timeout} s")


# ---- 1. finite or stop ----------------------------------------------------------------------------


def test_divergence_stops_keeps_the_last_good_checkpoint_and_marks_the_run_failed(tmp_path):
    # SGD at lr 1e6 on an unclipped squared loss: the weights and the loss overflow within a few steps.
    overrides = ["optim.optimizer=sgd", "optim.lr=1e6", "optim.warmup_steps=0", "dropout=0", "loop.checkpoint_every=1"]
    with pytest.raises(RunFailed, match=r"diverged at step \d+ .*lower learning rate"):
        toy_run(tmp_path, overrides)
    run_dir = next(tmp_path.glob("fault-toy/smoke/*/s0"))
    assert not (run_dir / "rows.jsonl").exists()
    failed = strict_json((run_dir / "failed.json").read_text())
    assert "diverged" in failed["reason"]
    state = statefile.load(run_dir / "state" / "toy.train.safetensors")
    assert all(torch.isfinite(v).all() for v in state["model"].values())  # the last good one
    assert all(math.isfinite(v) for v in state["losses"])
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        strict_json(line)
    with pytest.raises(RunFailed, match="failed before"):  # a rerun says so instead of looking finished
        toy_run(tmp_path, overrides)


def test_three_moons_divergence_is_one_sentence_exit_1_and_no_rows(tmp_path):
    torch.set_num_threads(1)  # generation is thousands of tiny ops: threads only add waiting on a busy machine
    result = runner.invoke(app, ["run", "three-moons", *TINY_MOONS, "--set", "optim.lr=1e6", "--out", str(tmp_path)])
    assert result.exit_code == 1, result.output
    text = one_sentence(result.output)
    assert "training diverged" in text and "optim.lr" in text
    run_dir = next(tmp_path.glob("three-moons/smoke/*/s0"))
    assert (run_dir / "failed.json").exists() and not (run_dir / "rows.jsonl").exists()


def test_rows_and_metrics_are_strict_json(tmp_path):
    tracker = runtime.Tracker(tmp_path, "t", {})
    tracker.log(0, loss=float("nan"), other=float("inf"), fine=1.5)
    tracker.close()
    record = strict_json((tmp_path / "metrics.jsonl").read_text())
    assert record["loss"] is None and record["other"] is None and record["fine"] == 1.5
    row = results.make_row(
        experiment="e", preset="smoke", variant="v", model="m", seed=0, split="s", metric="x", value=math.nan, step=0
    )
    results.write_rows([row], tmp_path / "rows.jsonl")
    assert strict_json((tmp_path / "rows.jsonl").read_text())["value"] is None


# ---- 2. torn writes -------------------------------------------------------------------------------


def test_a_torn_last_metrics_line_is_ignored_and_cut_before_appending(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "a/loss": 1.0}\n{"step": 10, "a/loss": 0.5}\n{"step": 20, "a/lo')
    ctx = runtime.RunContext("t", "smoke", "v", 0, tmp_path, torch.device("cpu"), runtime.Tracker(tmp_path, "t", {}))
    ctx.tracker.log(20, **{"a/loss": 0.25})  # the tracker cut the torn line off before appending
    ctx.tracker.close()
    assert ctx.metric_curve("a/loss") == [(0, 1.0), (10, 0.5), (20, 0.25)]
    assert [strict_json(line)["step"] for line in path.read_text().splitlines()] == [0, 10, 20]
    path.write_text(path.read_text() + '{"step": 30, "a/lo')  # torn again, read without repair
    assert files.read_jsonl(path)[-1]["step"] == 20


def test_a_damaged_middle_line_is_one_sentence_not_a_traceback(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1, "x\n{"step": 2}\n')
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        files.read_jsonl(path)


def test_whole_file_writes_use_per_process_temporary_names_and_leave_no_debris(tmp_path):
    target = tmp_path / "rows.jsonl"
    names = {files.temp_path(target).name for _ in range(50)}
    assert len(names) == 50 and all(f".{os.getpid()}." in n for n in names)
    target.write_text("old\n")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        files.atomic_write(target, fail)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


# ---- 3. one writer per run directory, 6. signals, 7. run history -----------------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_checkpoints_the_current_step_and_resume_matches_an_uninterrupted_run(tmp_path, sig, code):
    clean = toy_rows(toy_run(tmp_path / "clean"))
    out = tmp_path / "signalled"
    # checkpoint_every=100: no periodic checkpoint before the signal, only the one it writes.
    args = ["--set", "pause_s=0.05", "--set", "loop.checkpoint_every=100"]
    proc = toy_process(out, *args)
    try:
        run_dir = toy_run_dir(out)
        wait_for_step(proc, run_dir / "metrics.jsonl", 3)
        if sig == signal.SIGTERM:
            # A second process refuses in one sentence naming the holder, and --force deletes nothing.
            for extra in ([], ["--force"]):
                with pytest.raises(UserError, match=f"another run \\(process {proc.pid}\\)"):
                    toy_run(out, ["pause_s=0.05", "loop.checkpoint_every=100"], **({"force": True} if extra else {}))
                assert (run_dir / "metrics.jsonl").exists() and (run_dir / "config.yaml").exists()
        proc.send_signal(sig)
        output = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == code, output
    step = int(output.split("interrupted at step ")[1].split(";")[0])
    assert "rerun the same command to resume" in output and "Traceback" not in output
    assert statefile.load(run_dir / "state" / "toy.train.safetensors")["step"] == step
    assert not (run_dir / "rows.jsonl").exists()
    resumed = toy_rows(toy_run(out, ["pause_s=0.05", "loop.checkpoint_every=100"]))
    assert [r["value"] for r in resumed] == [r["value"] for r in clean]
    env = json.loads((run_dir / "env.json").read_text())
    assert env["argv"][1:3] == ["run", "fault-toy"]  # the first start is kept ...
    (resume,) = env["resumes"]  # ... and the resume appended
    assert set(resume) == {"time", "command", "git_sha"} and resume["time"] >= env["started"]


def test_sigkill_at_random_steps_then_resume_gives_the_uninterrupted_rows(tmp_path):
    clean = toy_rows(toy_run(tmp_path / "clean", ["steps=60"]))
    out = tmp_path / "killed"
    args = ["--set", "steps=60", "--set", "pause_s=0.03"]
    rng = random.Random(0)
    targets = sorted(rng.sample(range(3, 50), 3))  # each kill lands after the previous one's checkpoint
    for i, target in enumerate(targets):
        proc = toy_process(out, *args)
        try:
            run_dir = toy_run_dir(out)
            wait_for_step(proc, run_dir / "metrics.jsonl", target)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            proc.kill()
            proc.communicate()
        assert not (run_dir / "rows.jsonl").exists()  # a killed run never looks finished
        if i == 0:  # as if the kill had landed mid-write
            with (run_dir / "metrics.jsonl").open("a") as f:
                f.write('{"step": 99, "toy/lo')
    assert statefile.load(run_dir / "state" / "toy.train.safetensors")["step"] >= targets[-1] - 5
    # as if the last kill had landed mid-checkpoint: the killed process's partial file is debris
    (run_dir / "state" / f".toy.train.safetensors.{proc.pid}.0badc0de.tmp").write_bytes(b"")
    resumed = toy_rows(toy_run(out, ["steps=60", "pause_s=0.03"]))
    assert not list(run_dir.rglob("*.tmp"))  # cleaned up by the resumed run
    assert [r["value"] for r in resumed] == [r["value"] for r in clean]
    assert [r["step"] for r in resumed] == [r["step"] for r in clean]
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():  # the torn line was cut, not glued
        strict_json(line)


# ---- 4. validation before anything is written -----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "heads=0"], "heads=0: expected a positive integer"),
        (["--set", "heads="], "heads is empty"),
        (["--set", "optim.lr=-1"], "optim.lr=-1.0 is negative"),
        (["--set", "optim.lr=nan"], "optim.lr=nan is not a finite number"),
        (["--set", "optim.lr=0"], "optim.lr=0: expected a positive number"),
        (["--set", "batch_size=0"], "batch_size=0: expected a positive integer"),
        (["--seed", "-1"], "--seed -1: expected an integer from 0"),
        (["--seed", str(2**32)], "expected an integer from 0 to 4294967295"),
        (["--set", "batch_size=1000000000"], "lower batch_size"),
    ],
)
def test_bad_input_is_one_sentence_exit_2_and_leaves_no_run_directory(tmp_path, args, message):
    started = time.time()
    result = runner.invoke(app, ["run", "three-moons", "--preset", "smoke", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in one_sentence(result.output)
    assert not list(tmp_path.iterdir())
    assert time.time() - started < 30  # refused before allocating anything


def test_every_preset_passes_validation():
    from repro import config, registry

    for exp in registry.each():
        for preset, cfg in exp.presets().items():
            config.validate(cfg)
            assert exp.memory_estimate(cfg) >= 0, (exp.name, preset)


def test_unwritable_output_location_is_one_sentence(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = runner.invoke(app, ["run", "three-moons", *TINY_MOONS, "--out", str(blocker / "runs")])
    assert result.exit_code == 2 and "choose a writable --out" in one_sentence(result.output)
    if os.geteuid() != 0:  # root ignores permission bits
        readonly = tmp_path / "ro"
        readonly.mkdir(mode=0o500)
        result = runner.invoke(app, ["run", "three-moons", *TINY_MOONS, "--out", str(readonly)])
        assert result.exit_code == 2 and "choose a writable --out" in one_sentence(result.output)


def _tiny_checkpoint(path: Path) -> Path:
    from repro.models.gpt2 import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=64)).save(path)


def test_damaged_checkpoints_are_refused_in_one_sentence(tmp_path):
    from repro.models.lm import CONFIG_FILE, WEIGHTS_FILE

    good = _tiny_checkpoint(tmp_path / "good")
    load_checkpoint(good)  # the intact one loads
    truncated = _tiny_checkpoint(tmp_path / "truncated")
    weights = truncated / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or damaged"):
        load_checkpoint(truncated)
    garbage = _tiny_checkpoint(tmp_path / "garbage")
    (garbage / WEIGHTS_FILE).write_bytes(os.urandom(1000))
    with pytest.raises(UserError, match="not a safetensors file"):
        load_checkpoint(garbage)
    bad_config = _tiny_checkpoint(tmp_path / "bad-config")
    (bad_config / CONFIG_FILE).write_text('{"family": "gpt2", "n_layer": ')
    with pytest.raises(UserError, match="is not valid JSON"):
        load_checkpoint(bad_config)
    mixed = _tiny_checkpoint(tmp_path / "mixed")
    config = json.loads((mixed / CONFIG_FILE).read_text())
    (mixed / CONFIG_FILE).write_text(json.dumps({**config, "n_embd": 32}))
    with pytest.raises(UserError, match="does not match"):
        load_checkpoint(mixed)


def test_repro_eval_refuses_a_truncated_checkpoint_in_one_sentence(tmp_path):
    from repro.models.lm import WEIGHTS_FILE

    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    weights = ckpt / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])
    # --ctx within the checkpoint's context: the context check (from config.json) comes before the weights load
    essay = tmp_path / "essay.txt"  # a haystack, so the command reaches the weights
    essay.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    args = ["eval", "ruler", "--model", str(ckpt), "--ctx", "16", "--tasks", "niah_single_1", "--essays", str(essay)]
    args += ["--out", str(tmp_path / "runs")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "truncated or damaged" in one_sentence(result.output)


# ---- 5. data sanity -------------------------------------------------------------------------------


def test_text_loaders_refuse_what_is_not_text_naming_the_file(tmp_path):
    from repro.data.text import load_texts

    good = tmp_path / "good.txt"
    good.write_text("Once upon a time there was a cat.\n\nThe cat sat.\n")
    assert load_texts("text", "train", str(good), val_fraction=0.5)
    noise = tmp_path / "noise.txt"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match=r"noise\.txt is not UTF-8 text"):
        load_texts("text", "train", str(noise))
    binary = tmp_path / "binary.txt"  # valid UTF-8, but mostly control characters
    binary.write_bytes(bytes(range(0, 32)) * 500 + b"some words")
    with pytest.raises(UserError, match=r"binary\.txt does not look like text"):
        load_texts("text", "train", str(binary))
    records = tmp_path / "records.jsonl"
    records.write_text("\n".join(json.dumps({"text": "\x00\x01\x02\x03" * 50}) for _ in range(20)))
    with pytest.raises(UserError, match=r"records\.jsonl does not look like text"):
        load_texts("text", "train", str(records))


def test_garbage_training_text_is_refused_before_training_and_leaves_no_run_directory(tmp_path):
    data = tmp_path / "stories"
    data.mkdir()
    (data / "train.txt").write_bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    out = tmp_path / "runs"
    args = ["run", "tinystories-ood", "--preset", "smoke", "--set", f"data.path={data}", "--out", str(out)]
    result = runner.invoke(app, [*args, "--set", "data.tokenizer=bpe"])
    assert result.exit_code == 2, result.output
    assert "train.txt is not UTF-8 text" in one_sentence(result.output)
    assert not out.exists() or not list(out.rglob("*"))


def test_image_loaders_refuse_undecodable_files_naming_them(tmp_path):
    from vision_fixtures import class_images

    from repro.data.vision import load_images

    root = tmp_path / "cifar"
    for i, label in enumerate((0, 1)):
        folder = root / "train" / ("airplane", "automobile")[label]
        folder.mkdir(parents=True)
        from PIL import Image

        Image.fromarray(class_images(np.array([label]), 32, 3, seed=i)[0]).save(folder / f"{i:04d}.jpg")
    assert load_images("cifar10", "train", str(root), cache_dir=None)[0].shape == (2, 32, 32, 3)
    (root / "train" / "automobile" / "0009.jpg").write_bytes(b"\xff\xd8 not really a jpeg" * 10)
    with pytest.raises(UserError, match=r"automobile/0009\.jpg is not a readable image"):
        load_images("cifar10", "train", str(root), cache_dir=None)
