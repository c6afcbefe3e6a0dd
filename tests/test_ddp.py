"""Data parallel under torchrun (gloo on CPU): one run directory, written once, by rank 0."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_torchrun_two_processes_write_one_run(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not found next to the interpreter")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "repro.cli", "run", "three-moons"]
    cmd += ["--preset", "smoke", "--set", "steps=20", "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (run_dir,) = list(tmp_path.glob("three-moons/smoke/*/s0"))
    rows = (run_dir / "rows.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in metrics if "1head/loss" in m]
    assert rows and steps == sorted(set(steps))  # logged by one rank only
