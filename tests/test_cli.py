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


def test_list_groups_every_runnable_by_kind_within_100_columns_and_never_wraps_a_name():
    from repro import registry

    result = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 100
    for kind, verb in (("experiments", "run"), ("evaluations", "eval"), ("benchmarks", "bench")):
        assert any(line.startswith(f"{kind}: repro {verb} NAME") for line in lines), kind
    for entry in registry.scan().values():
        assert any(line.startswith(f"{entry.command} ") for line in lines), entry.name  # whole, on one line
    assert len(lines) < 60  # the long cost prose lives in `repro list NAME`


def test_list_name_shows_the_claim_options_and_preset_costs():
    result = runner.invoke(app, ["list", "ruler"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "repro eval ruler --model M" in text and "--preset smoke" in text and "--ctx" in text


def test_every_runnable_command_takes_the_same_common_options():
    from repro import registry

    common = ["--preset", "--set", "--seed", "--out", "--device", "--data-dir", "--force", "--wandb"]
    for entry in registry.scan().values():
        verb = {"experiment": ["run", entry.name], "evaluation": ["eval", entry.command]}
        args = verb.get(entry.kind, ["bench", entry.command])
        result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (entry.name, result.output)
        for flag in common:
            assert flag in result.output, (entry.name, flag)
        assert "[default: 0]" in result.output.split("--seed")[1].splitlines()[0], entry.name


def test_a_name_of_another_kind_says_which_command_runs_it(tmp_path):
    result = runner.invoke(app, ["run", "ruler", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "repro eval ruler --model" in result.output


def test_the_cli_starts_without_torch():
    """`repro --help`, `repro list` and a typo never import torch (start-up under a second)."""
    import subprocess
    import sys

    code = (
        "import sys; from typer.testing import CliRunner; from repro.cli import app; r = CliRunner(); "
        "r.invoke(app, ['list']); r.invoke(app, ['--help']); r.invoke(app, ['run', 'three-mons']); "
        "heavy = {'torch', 'pandas'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "three-mons"], "Did you mean 'three-moons'?"),
        (["run", "three-moons", "--set", "steps=many"], "--set steps=many: expected an integer."),
        (["run", "three-moons", "--set", "eval.sequence=3"], "unknown key 'sequence' under 'eval'"),
        (["run", "three-moons", "--preset", "huge"], "has no preset 'huge'"),
        (["run", "three-moons", "--set", "heads=4"], "heads: 4 does not divide"),
        (["report"], "give one name or --all"),
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

    rep = runner.invoke(app, ["report", "three-moons", "--out", str(out), "--reports", str(reports)])
    assert rep.exit_code == 0, rep.output
    names = {p.name for p in (reports / "three-moons").iterdir()}
    assert names == {"table.md", "table.csv", "table_1.csv", "fig_error_vs_context.png", "fig_weights.png"}
    table = (reports / "three-moons" / "table.md").read_text()
    assert "paper: drops at" in table and "42-47, 86-92, 128-136" in table and "smoke" in table
    assert "three-moons" in (reports / "index.md").read_text()


def test_report_without_runs_says_what_to_do(tmp_path):
    result = runner.invoke(app, ["report", "three-moons", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "repro run three-moons" in result.output


def test_bench_train_writes_ratios_for_both_pairs_at_every_length(tmp_path):
    result = runner.invoke(app, ["bench", "train", "--preset", "smoke", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert list(tmp_path.glob("bench-train/smoke/*/s0/rows.jsonl"))  # a run directory like every runnable
    table = tmp_path / "reports" / "bench-train" / "table.csv"
    df = pd.read_csv(table)
    assert list(df.model) == ["gpt2", "mosaic", "gpt2", "mosaic", "llama", "mosaic_v2", "llama", "mosaic_v2"]
    assert list(df["T"]) == [16, 16, 32, 32] * 2 and list(df.batch) == [4, 4, 2, 2] * 2
    assert (df[df.model.isin(["gpt2", "llama"])].ratio == 1).all() and (df.ratio > 0).all()
    v2 = df[df.pair == "v2"]  # equal parameters through the pairing
    assert abs(v2["params (M)"].iloc[0] - v2["params (M)"].iloc[1]) <= 0.01 * v2["params (M)"].iloc[0]
    v1 = df[df.pair == "v1"]  # equal block weights; GPT-2's position table is the difference
    assert abs(v1["non-embedding (M)"].iloc[0] - v1["non-embedding (M)"].iloc[1]) < 0.001
    assert {"load before/after", "threads"} <= set(df.columns)
    md = table.with_name("table.md").read_text()
    assert "Operators per training step" in md and "1-min load" in md and "p-mem 112 pairs/head" in md


def test_bench_decode_writes_decoding_and_prefill_ratios(tmp_path):
    args = ["bench", "decode", "--preset", "smoke", "--pairs", "v2,v1", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    df = pd.read_csv(tmp_path / "reports" / "bench-decode" / "table.csv")
    assert list(df.model) == ["llama", "mosaic_v2", "gpt2", "mosaic"]
    assert {"tok/s median", "ratio", "prefill tok/s", "prefill ratio"} <= set(df.columns)
    assert "Operators per decoding step" in (tmp_path / "reports" / "bench-decode" / "table.md").read_text()


def test_bench_refuses_an_unknown_pair(tmp_path):
    result = runner.invoke(app, ["bench", "train", "--pairs", "v3", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "choose from v1, v2" in result.output
    assert not list(tmp_path.glob("bench-train/*"))  # nothing half-written


def test_bench_kernels_and_eval_smoke_write_run_directories_and_reports(tmp_path):
    """The kernel benchmark (correctness gate first) and the evaluation-cost benchmark on a tiny
    checkpoint, through `repro bench`: run directories, and tables rebuilt by `repro report`."""
    import torch

    from repro.data.tokenizer import byte_tokenizer
    from repro.models.registry import build_model

    out = tmp_path / "runs"
    result = runner.invoke(app, ["bench", "kernels", "--preset", "smoke", "--out", str(out)])
    assert result.exit_code == 0, result.output
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny"
    build_model("gpt2", n_layer=1, n_head=2, n_embd=16, block_size=1100, vocab_size=257).save(ckpt)
    byte_tokenizer().save(ckpt)
    result = runner.invoke(app, ["bench", "eval", "--preset", "smoke", "--model", str(ckpt), "--out", str(out)])
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, ["report", "--all", "--out", str(out), "--reports", str(tmp_path / "rep")])
    assert again.exit_code == 0, again.output
    kernels = (tmp_path / "rep" / "bench-kernels" / "table.md").read_text()
    assert "memory_retrieval" in kernels and "1-min load" in kernels
    assert "floor" in (tmp_path / "rep" / "bench-eval" / "table.md").read_text()
