"""Paired-by-seed verdicts (issue 17) and the ResNet path of the training benchmark."""

import math

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from repro import stats
from repro.bench.images import ResNetBenchConfig, resnet_throughput
from repro.cli import app


def test_paired_interval_matches_a_hand_computed_t_interval():
    a = {0: 0.50, 1: 0.60, 2: 0.70}
    b = {0: 0.40, 1: 0.50, 2: 0.50}
    p = stats.paired_diff(a, b)
    d = [0.10, 0.10, 0.20]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    half = 4.303 * sd / math.sqrt(3)
    assert p["n"] == 3 and p["seeds"] == [0, 1, 2]
    assert p["mean"] == pytest.approx(mean) and p["lo"] == pytest.approx(mean - half)
    assert p["hi"] == pytest.approx(mean + half)
    assert stats.paired_verdict(p, 1).startswith("same direction, within noise")  # lo < 0 here


def test_pairing_removes_what_the_arms_share():
    """Seed-to-seed swings of 20 pt that both arms share do not hide a steady +1 pt effect."""
    base = pd.Series({0: 0.50, 1: 0.70, 2: 0.60, 3: 0.80})
    p = stats.paired_diff(base + 0.01 + pd.Series({0: 0.001, 1: -0.001, 2: 0.0, 3: 0.0005}), base)
    assert p["lo"] > 0
    assert stats.paired_verdict(p, 1).startswith("reproduced")
    assert stats.paired_verdict(p, -1).startswith("not reproduced")


def test_only_common_seeds_pair_and_one_seed_gives_no_interval():
    p = stats.paired_diff({0: 0.6, 1: 0.7, 5: 0.9}, {1: 0.6, 2: 0.1, 5: 0.8})
    assert p["seeds"] == [1, 5] and p["n"] == 2
    one = stats.paired_diff({0: 0.6}, {0: 0.5})
    assert math.isnan(one["lo"]) and "no interval" in stats.paired_verdict(one, 1)
    same = stats.paired_diff({0: 0.5, 1: 0.5}, {0: 0.5, 1: 0.5})
    assert stats.paired_verdict(same, 1).startswith("no difference")
    assert stats.t975(2) == pytest.approx(4.303) and stats.t975(17) == stats.t975(15)
    assert stats.t975(100) == pytest.approx(1.96)


def test_resnet_bench_rows_and_cli(tmp_path):
    torch.set_num_threads(1)
    cfg = ResNetBenchConfig(models=("resnet2", "towers2x2"), batch_size=4, steps=1, warmup=1, rounds=1)
    df = resnet_throughput(cfg)
    assert list(df.model) == ["resnet2", "resnet2", "towers2x2", "towers2x2"]
    assert (df["train step img/s"] > 0).all() and (df["fwd+bwd floor img/s"] > 0).all()
    args = ["bench", "images", "--models", "resnet2", "--batch-size", "4", "--rounds", "1", "--steps", "1"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "floor" in (tmp_path / "reports" / "bench-images" / "table.md").read_text()
    bad = CliRunner().invoke(app, ["bench", "images", "--models", "resnetX", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "resnet<width>" in bad.output
