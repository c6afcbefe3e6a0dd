"""The four rich-features experiments end to end at their smoke presets (generated images, offline):
run directory through `repro.runtime.launch`, rows, the report with the paper's numbers beside ours,
resume after a finished run, and the one-sentence error when the data cannot be found."""

import json

import pytest
import torch
from typer.testing import CliRunner
from vision_fixtures import write_cifar_pickles, write_mnist

from repro import registry, results, runtime
from repro.cli import app

EXPERIMENTS = {
    "wd-transfer": ("cifar", {"table.md", "table.csv", "table_1.csv", "fig_wd_transfer.png"}, "94.89"),
    "rich-ensemble": ("cifar", {"table.md", "table.csv", "table_1.csv", "fig_cat_vs_size.png"}, "85.58"),
    "very-large-dropout": ("cifar", {"table.md", "table.csv", "table_1.csv", "fig_id_vs_ood.png"}, "+2.6"),
    "bonsai": ("mnist", {"table.md", "table.csv", "table_1.csv", "table_2.csv", "fig_bonsai.png"}, "69.9"),
}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny tensors; on 2 shared cores a second thread only spins


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {"cifar": write_cifar_pickles(root / "cifar10"), "mnist": write_mnist(root / "mnist")}


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_smoke_preset_end_to_end(name, tmp_path, monkeypatch):
    """The smoke preset as `repro run NAME --preset smoke` runs it: offline, on generated images."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no hub cache to fall back on either
    kind, artifacts, paper_number = EXPERIMENTS[name]
    exp = registry.get(name)
    overrides = [f"data.cache_dir={tmp_path / 'cache'}"]
    run_dir = runtime.launch(exp, preset="smoke", overrides=overrides, out=tmp_path / "runs", wandb=False)
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]
    assert rows and all(set(results.ROW_FIELDS) <= set(r) for r in rows)
    assert any(r["metric"] == "wall_s" for r in rows)
    df = results.collect(tmp_path / "runs", name)
    paths = exp.report(df, tmp_path / "report")
    assert {p.name for p in paths} == artifacts
    table = (tmp_path / "report" / "table.md").read_text()
    assert paper_number in table and "smoke" in table and "verdict" in table.lower()
    # a finished run is a no-op (no retraining)
    again = runtime.launch(exp, preset="smoke", overrides=overrides, out=tmp_path / "runs", wandb=False)
    assert again == run_dir


def test_accuracies_are_fractions(data, tmp_path, monkeypatch):
    exp = registry.get("wd-transfer")
    run_dir = runtime.launch(
        exp,
        preset="smoke",
        overrides=[f"data.path={data['cifar']}", "data.cache_dir=none"],
        out=tmp_path,
        wandb=False,
    )
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]
    accs = [r["value"] for r in rows if r["metric"] in ("test_acc", "probe_acc")]
    assert len(accs) == 4 and all(0.0 <= a <= 1.0 for a in accs)


@pytest.mark.parametrize(
    ("name", "dataset"), [("bonsai", "dataset mnist"), ("wd-transfer", "dataset cifar10"), ("rich-ensemble", "cifar10")]
)
def test_missing_data_is_one_sentence_exit_2(name, dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    out = tmp_path / "runs"
    args = ["run", name, "--preset", "smoke", "--out", str(out), "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    args += ["--set", "data.path=none"]  # not the generated images of the smoke preset
    result = CliRunner().invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert dataset in text and "--data-dir" in text and "Traceback" not in text


def test_bad_settings_fail_before_anything_is_written(tmp_path):
    runner = CliRunner()
    for name, setting, message in [
        ("wd-transfer", "tasks=cifar10:0-4>svhn", "task side 'svhn'"),
        ("bonsai", "methods=irm,fishr", "unknown ['fishr']"),
        ("very-large-dropout", "test_domains=sketch", "test_domains must be among domains"),
        ("rich-ensemble", "finetune.models=single,soup", "unknown ['soup']"),
    ]:
        result = runner.invoke(app, ["run", name, "--preset", "smoke", "--out", str(tmp_path), "--set", setting])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not list(tmp_path.iterdir())
