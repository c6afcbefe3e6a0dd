"""Bad input the issue-26 review found (one sentence, exit code 2, nothing written) and run
directories that must not look finished: malformed YAML in a run's config.yaml, unknown devices,
list gaps, absurd sizes, damaged model configs, an `hf:` folder with only config.json, a rows.jsonl
cut short by one row."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from repro import config as cfglib
from repro import results, runtime
from repro.cli import app
from repro.data.tokenizer import byte_tokenizer
from repro.errors import UserError
from repro.models.registry import build_model

sys.path.insert(0, str(Path(__file__).parent))
from fault_toy import FaultToy  # noqa: E402

runner = CliRunner()


def one_sentence(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert text.startswith("error:") and text.count(". ") == 0, text  # one sentence
    return text


def toy(out: Path, *overrides: str) -> Path:
    return runtime.launch(FaultToy(), preset="smoke", overrides=["steps=6", *overrides], out=out, wandb=False)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("device=tpu", "device=tpu: expected auto, cpu, cuda, cuda:N or mps"),
        ("heads=1,,3", "heads=1,,3: an item of the list is empty"),
        ("heads=1,3,", "an item of the list is empty"),
        ("steps=99999999999999999999999", "is beyond what any run can use; give at most 1099511627776"),
        ("steps=-5", "steps=-5 is negative; expected a positive integer"),
        ("steps=0", "steps=0: expected a positive integer"),
        ("optim.warmup_steps=-1", "is negative; expected an integer of 0 or more"),
    ],
)
def test_bad_values_are_one_sentence_and_write_nothing(tmp_path, setting, message):
    result = runner.invoke(app, ["run", "three-moons", "--preset", "smoke", "--set", setting, "--out", str(tmp_path)])
    assert message in one_sentence(result)
    assert not any(tmp_path.iterdir())


def test_devices_and_layer_counts_are_checked_where_every_config_is():
    with pytest.raises(UserError, match="device 'tpu' is not a device torch knows"):
        runtime.pick_device("tpu")
    for good in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        cfglib._check_value("device", "device", good)
    with pytest.raises(UserError, match="model.n_layer=1000000 is beyond .* at most 10000"):
        cfglib._check_value("model.n_layer", "n_layer", 1_000_000)
    with pytest.raises(UserError, match="at most 4294967295"):
        cfglib._check_value("data.seed", "seed", 2**32)


def test_malformed_yaml_in_a_run_directory_is_one_sentence(tmp_path):
    run_dir = toy(tmp_path)
    (run_dir / "rows.jsonl").unlink()  # unfinished, so the next run reads its config.yaml
    (run_dir / "config.yaml").write_text("steps: [6\nwidth: {")
    with pytest.raises(UserError, match=r"config.yaml is not valid YAML at line \d+; repair or delete it"):
        toy(tmp_path)
    (run_dir / "config.yaml").write_text("- a list\n- not a mapping\n")
    with pytest.raises(UserError, match="does not hold a mapping of settings"):
        toy(tmp_path)
    assert (
        runtime.launch(FaultToy(), preset="smoke", overrides=["steps=6"], out=tmp_path, wandb=False, force=True)
        == run_dir
    )  # --force starts it again


def test_plan_refuses_absurd_sizes_at_once(tmp_path):
    result = runner.invoke(app, ["plan", "mmv2-pretrain", "--gpu-memory", "-40"])
    assert "--gpu-memory -40" in one_sentence(result)
    result = runner.invoke(app, ["plan", "mmv2-pretrain", "--set", "model.n_layer=1000000"])
    assert "model.n_layer=1000000 is beyond what any run can use" in one_sentence(result)


# ---- model folders -----------------------------------------------------------------------------


def _mosaic(tmp_path: Path, vocab_size: int = 257) -> Path:
    path = tmp_path / "mosaic-small"
    build_model("mosaic", n_layer=1, n_head=2, n_embd=16, block_size=64, vocab_size=vocab_size).save(path)
    byte_tokenizer().save(path)
    return path


@pytest.mark.parametrize("command", ["ruler", "icl", "harness"])
@pytest.mark.parametrize(("content", "message"), [("{not json", "is not valid JSON"), ("[1, 2]", "not list")])
def test_a_damaged_model_config_is_one_sentence(tmp_path, command, content, message):
    if command == "harness":
        pytest.importorskip("lm_eval")
    model = _mosaic(tmp_path)
    (model / "config.json").write_text(content)
    result = runner.invoke(app, ["eval", command, "--model", str(model), "--out", str(tmp_path / "runs")])
    assert message in one_sentence(result)
    assert not (tmp_path / "runs").exists()


def test_an_hf_folder_with_only_a_config_is_one_sentence_and_leaves_no_run_directory(tmp_path):
    pytest.importorskip("lm_eval")
    folder = tmp_path / "half-downloaded"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    result = runner.invoke(app, ["eval", "harness", "--model", f"hf:{folder}", "--out", str(tmp_path / "runs")])
    assert "lacks weights, a tokenizer" in one_sentence(result)
    assert not (tmp_path / "runs").exists()


def test_a_context_no_memory_can_hold_is_refused_before_loading(tmp_path, monkeypatch):
    """A mosaic checkpoint has no context limit of its own: the memory estimate of reading the
    context (its logits alone: 10M tokens x 50k vocabulary x 4 bytes = 2 TB) refuses it."""
    model = _mosaic(tmp_path, vocab_size=50304)

    def no_weights(*a, **k):
        raise AssertionError("the weights were loaded before the context was checked")

    monkeypatch.setattr("repro.eval.models.load_model", no_weights)
    result = runner.invoke(app, ["eval", "ruler", "--model", str(model), "--ctx", "10000000", "--out", str(tmp_path)])
    text = one_sentence(result)
    assert "reading a 10000000-token context needs at least" in text or "token context needs at least" in text
    assert "ask for a shorter --ctx" in text


# ---- rows counted against what the run declared ------------------------------------------------


def test_rows_cut_short_by_one_row_are_not_a_finished_run(tmp_path):
    run_dir = toy(tmp_path)
    rows_path = run_dir / "rows.jsonl"
    whole = rows_path.read_text()
    done = json.loads((run_dir / results.DONE_FILE).read_text())
    assert done["rows"] == len(whole.splitlines()) == len(results.finished_rows(rows_path))
    assert len(results.collect(tmp_path, "fault-toy")) == done["rows"]
    rows_path.write_text("".join(whole.splitlines(keepends=True)[:-1]))  # one row short, still whole lines
    assert results.finished_rows(rows_path) is None
    assert results.collect(tmp_path, "fault-toy").empty  # report leaves it out (with a warning)
    assert toy(tmp_path) == run_dir  # run finishes it again instead of saying "already done"
    assert rows_path.read_text() == whole


def test_run_directories_from_before_done_json_stay_finished(tmp_path):
    run_dir = toy(tmp_path)
    (run_dir / results.DONE_FILE).unlink()
    rows = results.finished_rows(run_dir / "rows.jsonl")
    assert rows and len(results.collect(tmp_path, "fault-toy")) == len(rows)
    text = (run_dir / "rows.jsonl").read_text()
    (run_dir / "rows.jsonl").write_text(text[:-5])  # a torn last line: never a finished run
    assert results.finished_rows(run_dir / "rows.jsonl") is None
