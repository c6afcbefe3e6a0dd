"""`make gpu-check`: refuses cleanly without a GPU; its FSDP part runs the one loop in a one-rank group."""

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from repro.bench import gpu_check
from repro.cli import app


def test_without_a_gpu_it_says_so_in_one_sentence_and_exits_2(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(app, ["bench", "gpu-check", "--out", str(tmp_path / "runs")], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    err = result.output.strip().removeprefix("error: ")
    assert err == gpu_check.NO_GPU and "\n" not in err and len(re.findall(r"[.!?](\s|$)", err)) == 1
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_makefile_has_the_target():
    text = (Path(__file__).parent.parent / "Makefile").read_text()
    assert re.search(r"^gpu-check: install\n\t\$\(BIN\)/repro bench gpu-check --preset paper$", text, re.M)


@pytest.mark.slow  # ~10-20 s: a process group, FSDP wrapping, 3 steps and a DCP save
def test_fsdp_part_on_cpu_with_one_rank(tmp_path):
    """The GPU check's FSDP part, shrunk and on gloo: FSDP2 with one rank, act. checkpointing, DCP."""
    shape = dict(n_layer=2, n_embd=32, n_head=2, block_size=16, vocab=64)
    row = gpu_check._fsdp(tmp_path, steps=3, device="cpu", shape=shape, batch=2, compile=False)
    record = json.loads((tmp_path / "fsdp.json").read_text())
    assert record["sharded"] and ".metadata" in record["dcp_files"] and len(record["losses"]) == 3
    assert row["part"] == "FSDP2 steps on one GPU"


@pytest.mark.slow  # ~5-20 s on the shared machine
def test_training_part_compares_equal_sizes_on_cpu(tmp_path):
    """The GPU check's speed part, shrunk and eager on CPU: both families at equal parameters."""
    shape = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=2, vocab_size=128)
    row = gpu_check._training(tmp_path, shape=shape, timing=(1, 1, 1), compile=False, device="cpu")
    assert row["ok"] and "MM v2" in row["result"]
    assert (tmp_path / "train_throughput" / "table.md").exists()
