"""The CLI end to end on the smoke preset: run directory contents, no-op re-runs, reports, errors."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from repro import results
from repro.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["report", "--help"], ["list", "--help"]])
def test_help_everywhere(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "Usage" in result.output


def test_list_shows_experiments_evaluations_and_costs_and_never_wraps_a_name():
    from repro import registry

    result = runner.invoke(app, ["list"], env={"COLUMNS": "60"})  # narrow: the other columns fold
    assert result.exit_code == 0
    assert "smoke" in result.output
    for name in [*registry.names(), "ruler", "icl", "harness"]:
        assert f" {name} " in result.output, name  # whole, on one line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "three-mons"], "Did you mean 'three-moons'?"),
        (["run", "three-moons", "--set", "steps=many"], "--set steps=many: expected an integer."),
        (["run", "three-moons", "--set", "eval.sequence=3"], "unknown key 'sequence' under 'eval'"),
        (["run", "three-moons", "--preset", "huge"], "has no preset 'huge'"),
        (["run", "three-moons", "--set", "heads=4"], "heads: 4 does not divide"),
        (["report"], "give one experiment name or --all"),
    ],
)
def test_user_errors_are_one_sentence_and_exit_2(tmp_path, args, message):
    result = runner.invoke(app, [*args, *(["--out", str(tmp_path)] if args[0] == "run" else [])])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())  # rich may wrap long lines
    assert "Traceback" not in result.output
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_smoke_run_writes_the_run_directory_and_report(tmp_path):
    out, reports = tmp_path / "runs", tmp_path / "reports"
    result = runner.invoke(app, ["run", "three-moons", "--preset", "smoke", "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    run_dir = out / "three-moons" / "smoke" / "default" / "s3"
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "env.json", "metrics.jsonl", "rows.jsonl"}
    env = json.loads((run_dir / "env.json").read_text())
    assert env["kernel_backend"] in ("torch", "triton", "reference") and env["torch"].startswith("2.13")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("1head/loss" in m for m in metrics) and all("step" in m for m in metrics)
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]
    assert rows and all(set(results.ROW_FIELDS) <= set(r) for r in rows)
    assert {r["model"] for r in rows} >= {"1head", "3head"} and {r["split"] for r in rows} >= {
        "train",
        "heldout",
    }

    mtime = (run_dir / "rows.jsonl").stat().st_mtime_ns
    again = runner.invoke(app, ["run", "three-moons", "--preset", "smoke", "--out", str(out), "--seed", "3"])
    assert again.exit_code == 0 and "already done" in again.output
    assert (run_dir / "rows.jsonl").stat().st_mtime_ns == mtime

    rep = runner.invoke(app, ["report", "three-moons", "--runs", str(out), "--out", str(reports)])
    assert rep.exit_code == 0, rep.output
    names = {p.name for p in (reports / "three-moons").iterdir()}
    assert names == {"table.md", "table.csv", "table_1.csv", "fig_error_vs_context.png", "fig_weights.png"}
    table = (reports / "three-moons" / "table.md").read_text()
    assert "paper: drops at" in table and "42-47, 86-92, 128-136" in table and "smoke" in table
    assert "three-moons" in (reports / "index.md").read_text()


def test_report_without_runs_says_what_to_do(tmp_path):
    result = runner.invoke(app, ["report", "three-moons", "--runs", str(tmp_path)])
    assert result.exit_code == 2 and "repro run three-moons" in result.output


TINY_PAIRS = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--vocab-size", "64", "--rounds", "1"]


def test_bench_train_writes_ratios_for_both_pairs_at_every_length(tmp_path):
    args = ["bench", "train", *TINY_PAIRS, "--lengths", "16,32", "--tokens", "64", "--steps", "1"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = next(tmp_path.glob("train_throughput_*/table.csv"))
    df = pd.read_csv(table)
    assert list(df.model) == ["gpt2", "mosaic", "gpt2", "mosaic", "llama", "mosaic_v2", "llama", "mosaic_v2"]
    assert list(df["T"]) == [16, 16, 32, 32] * 2 and list(df.batch) == [4, 4, 2, 2] * 2
    assert (df[df.model.isin(["gpt2", "llama"])].ratio == 1).all() and (df.ratio > 0).all()
    v2 = df[df.pair == "v2"]  # equal parameters through the pairing
    assert abs(v2["params (M)"].iloc[0] - v2["params (M)"].iloc[1]) <= 0.01 * v2["params (M)"].iloc[0]
    v1 = df[df.pair == "v1"]  # equal block weights; GPT-2's position table is the difference
    assert abs(v1["non-embedding (M)"].iloc[0] - v1["non-embedding (M)"].iloc[1]) < 0.001
    assert "load before/after" in df and "threads" in df
    md = table.with_name("table.md").read_text()
    assert "Operators per training step" in md and "mm" in md


def test_bench_decode_writes_decoding_and_prefill_ratios(tmp_path):
    args = ["bench", "decode", *TINY_PAIRS, "--prompt", "24", "--new-tokens", "4", "--pairs", "v2,v1"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    df = pd.read_csv(next(tmp_path.glob("decode_throughput_*/table.csv")))
    assert list(df.model) == ["llama", "mosaic_v2", "gpt2", "mosaic"]
    assert {"tok/s median", "ratio", "prefill tok/s", "prefill ratio"} <= set(df.columns)
    assert "Operators per decoding step" in next(tmp_path.glob("decode_throughput_*/table.md")).read_text()


def test_bench_refuses_an_unknown_pair(tmp_path):
    result = runner.invoke(app, ["bench", "train", "--pairs", "v3", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "choose from v1, v2" in result.output
