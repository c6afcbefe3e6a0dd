"""A failing environment (issue 26): a full disk during a checkpoint and on resume, a read-only
reports folder, W&B online without a key or without a network, and the partial files of killed
writers. Each ends in one sentence and the right exit code (1 for the machine, 2 for a choice the
user can change), and leaves nothing half-written.

A full disk and a read-only folder are real: the tests mount a small (or read-only) tmpfs in a user
and mount namespace of their own (`unshare -Urm`), and skip where the machine does not allow one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from repro import files, track
from repro.errors import EnvironmentFailed, UserError

ROOT = Path(__file__).resolve().parent.parent
TOY = Path(__file__).parent / "fault_toy.py"


def _namespaces_work() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run([unshare, "-Urm", "true"], capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _namespaces_work(), reason="no user namespaces here to mount a small disk")


def in_namespace(script: str, *args: str) -> dict:
    """Run `script` (Python) as root of a fresh user and mount namespace; it prints one JSON line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "COLUMNS": "300"}
    done = subprocess.run(
        ["unshare", "-Urm", sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


FULL_DISK = """
    import hashlib, json, os, subprocess, sys
    from pathlib import Path

    out, toy = Path(sys.argv[1]), sys.argv[2]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(out)], check=True)

    def run(*args):
        cmd = [sys.executable, toy, "run", "fault-toy", "--preset", "smoke", "--out", str(out), "--set", "width=8192"]
        p = subprocess.run([*cmd, "--set", "steps=10", *args], capture_output=True, text=True)
        return {"code": p.returncode, "out": p.stdout + p.stderr}

    def listing():
        return sorted(str(p.relative_to(out)) for p in out.rglob("*"))

    report = {"first": run(), "after_first": listing()}  # the first checkpoint (~600 KB) cannot fit
    subprocess.run(["mount", "-o", "remount,size=8m", str(out)], check=True)
    report["roomy"] = run()
    run_dir = next(out.glob("fault-toy/smoke/*/s0"))
    rows = (run_dir / "rows.jsonl").read_text()
    for name in ("rows.jsonl", "done.json"):
        (run_dir / name).unlink()  # unfinished again: the next run resumes from its checkpoint
    state = run_dir / "state" / "toy.train.safetensors"
    before = hashlib.sha256(state.read_bytes()).hexdigest()
    with open(out / "filler", "wb", buffering=0) as f:  # fill the disk to the last byte
        try:
            while True:
                f.write(b"x" * 4096)
                f.flush()
        except OSError:
            pass
    report["resume_full"] = run()
    report["state_unchanged"] = hashlib.sha256(state.read_bytes()).hexdigest() == before
    report["after_resume"] = listing()
    (out / "filler").unlink()
    report["resume_roomy"] = run()
    report["rows_equal"] = (run_dir / "rows.jsonl").read_text() == rows
    print(json.dumps(report))
"""


@needs_mounts
def test_a_full_disk_is_one_sentence_exit_1_during_a_checkpoint_and_on_resume(tmp_path):
    out = tmp_path / "disk"
    out.mkdir()
    r = in_namespace(FULL_DISK, str(out), str(TOY))
    first = " ".join(r["first"]["out"].split())
    assert r["first"]["code"] == 1 and "Traceback" not in first, first
    assert "is full" in first and "toy.train.safetensors needs at least" in first and "KiB free" in first
    assert not [p for p in r["after_first"] if p.endswith((".tmp", "rows.jsonl"))], r["after_first"]
    assert r["roomy"]["code"] == 0, r["roomy"]["out"]
    again = " ".join(r["resume_full"]["out"].split())
    assert r["resume_full"]["code"] == 1 and "is full" in again and "Traceback" not in again, again
    assert r["state_unchanged"] and not [p for p in r["after_resume"] if p.endswith(".tmp")], r["after_resume"]
    assert r["resume_roomy"]["code"] == 0 and r["rows_equal"], r["resume_roomy"]["out"]


READ_ONLY = """
    import json, subprocess, sys
    from pathlib import Path

    ro, runs, repro = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], check=True)
    out = {}
    for name, args in {
        "report": ["report", "--all", "--out", runs, "--reports", str(ro / "reports")],
        "run": ["run", "three-moons", "--preset", "smoke", "--out", str(ro / "runs")],
        "plan": ["plan", "mmv2-pretrain", "--preset", "smoke", "--write", str(ro / "plan.md")],
    }.items():
        p = subprocess.run([repro, *args], capture_output=True, text=True)
        out[name] = {"code": p.returncode, "out": p.stdout + p.stderr}
    out["left"] = sorted(str(p) for p in ro.rglob("*"))
    print(json.dumps(out))
"""


@needs_mounts
def test_a_read_only_folder_is_one_sentence_exit_2(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (tmp_path / "runs").mkdir()
    repro = str(Path(sys.executable).parent / "repro")
    r = in_namespace(READ_ONLY, str(ro), str(tmp_path / "runs"), repro)
    for name, expected in (("report", "choose a writable --reports"), ("run", "choose a writable --out")):
        text = " ".join(r[name]["out"].split())
        assert r[name]["code"] == 2 and expected in text and "Traceback" not in text, text
    plan = " ".join(r["plan"]["out"].split())
    assert r["plan"]["code"] == 2 and "Read-only file system" in plan and "Traceback" not in plan, plan
    assert r["left"] == []


def test_write_errors_become_one_sentence_with_the_place_and_the_size(tmp_path):
    target = tmp_path / "state" / "x.safetensors"
    target.parent.mkdir()

    def full(tmp: Path) -> None:
        tmp.write_bytes(b"x" * 5000)
        raise OSError(28, "No space left on device")

    with pytest.raises(
        EnvironmentFailed, match=r"the disk holding .*state is full \(.* free; x.safetensors needs at least 2.0 MiB\)"
    ):
        files.atomic_write(target, full, lambda: 2 << 20)
    assert list(target.parent.iterdir()) == []  # no partial file

    def library(tmp: Path) -> None:  # safetensors and torch say it in their own words
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(EnvironmentFailed, match="is full"):
        files.atomic_write(target, library)
    assert EnvironmentFailed.exit_code == 1 and files.write_error(ValueError("x"), target) is None


def test_stale_temporary_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [
        tmp_path / f".rows.jsonl.{dead.pid}.0badc0de.tmp",
        tmp_path / f".bpe-123.json.{dead.pid}.1234abcd.tmp",
        tmp_path / f".toy.train.pt.{dead.pid}.tmp",  # the names of earlier versions
    ]
    live = [tmp_path / f".x.bin.{os.getpid()}.0badc0de.tmp", tmp_path / f".y.bin.{os.getppid()}.0badc0de.tmp"]
    live.append(tmp_path / f".tokens-7.bin.{os.getpid()}.99692716.tmp")  # a token of digits only: not a PID
    other = [tmp_path / ".hidden.tmp", tmp_path / "plain.tmp", tmp_path / "data.bin"]
    for p in stale + live + other:
        p.write_bytes(b"")
    files.write_text(tmp_path / "rows.jsonl", "{}\n")  # any write into the folder cleans it
    assert all(not p.exists() for p in stale) and all(p.exists() for p in live + other)


# ---- W&B: never a hang, never a crash for want of a key or a network -------------------------------


@pytest.fixture
def wandb_online(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_PROJECT", "repro-test")


def test_wandb_online_without_a_key_logs_offline_with_a_warning(wandb_online, capsys):
    assert track.wandb_mode(None) == "offline"
    assert "no API key" in " ".join(capsys.readouterr().err.split())


def test_wandb_online_with_a_key_but_no_server_logs_offline_within_seconds(wandb_online, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: refused at once
    assert track.wandb_mode(True) == "offline"
    assert "cannot be reached within 3 s" in " ".join(capsys.readouterr().err.split())

    def black_hole(*args, **kwargs):  # a server that never answers (a dropped route)
        time.sleep(3)
        raise TimeoutError("timed out")

    monkeypatch.setattr("socket.create_connection", black_hole)
    monkeypatch.setattr(track, "REACH_TIMEOUT_S", 0.5)
    started = time.monotonic()
    assert track.wandb_mode(True) == "offline"
    assert time.monotonic() - started < 2


def test_a_run_with_wandb_online_and_no_key_finishes_offline(wandb_online, tmp_path):
    pytest.importorskip("wandb")
    sys.path.insert(0, str(Path(__file__).parent))
    from fault_toy import FaultToy

    from repro import runtime

    run_dir = runtime.launch(FaultToy(), preset="smoke", overrides=["steps=3"], out=tmp_path / "runs", wandb=True)
    assert (run_dir / "rows.jsonl").exists()
    assert list((run_dir / "wandb").glob("offline-run-*"))


def test_a_wandb_that_cannot_start_is_one_sentence(wandb_online, monkeypatch, tmp_path):
    wandb = pytest.importorskip("wandb")

    def broken(**kwargs):
        raise wandb.errors.CommError("network error (ConnectTimeout)")

    monkeypatch.setattr(wandb, "init", broken)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(UserError, match=r"W&B could not start a offline run \(network error.*--no-wandb"):
        track.Tracker(tmp_path, "x", {}, use_wandb=True)
