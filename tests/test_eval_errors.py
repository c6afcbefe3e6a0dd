"""Every bad input of the evaluations is one sentence and exit code 2, before any weights load:
a file that is not GGUF, a bad checkpoint or unknown task for repro-lm-eval, a negative shot count,
a context longer than the checkpoint's, a chat template a model does not have."""

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from repro.cli import app
from repro.data.tokenizer import byte_tokenizer
from repro.eval import lm_eval_model
from repro.eval.models import peek_max_context
from repro.evaluations import harness
from repro.models.registry import build_model


def _ckpt(tmp_path: Path, block_size: int = 512) -> Path:
    path = tmp_path / "gpt2-small"
    build_model("gpt2", n_layer=1, n_head=2, n_embd=16, block_size=block_size, vocab_size=257).save(path)
    byte_tokenizer().save(path)
    return path


def _one_sentence(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert text.startswith("error:") and text.count(". ") <= 1  # one sentence
    return text


@pytest.mark.parametrize("command", ["ruler", "icl", "harness"])
def test_a_file_that_is_not_gguf(tmp_path, command):
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list\n")
    if command == "harness":
        pytest.importorskip("lm_eval")
    res = CliRunner().invoke(app, ["eval", command, "--model", f"gguf:{notes}", "--out", str(tmp_path / "runs")])
    assert "is not a GGUF file" in _one_sentence(res)
    assert not (tmp_path / "runs").exists()


def test_a_context_beyond_the_checkpoint_is_refused_from_its_config(tmp_path, monkeypatch):
    ckpt = _ckpt(tmp_path)
    assert peek_max_context(str(ckpt)) == 512

    def no_weights(*a, **k):
        raise AssertionError("the weights were loaded before the context was checked")

    monkeypatch.setattr("repro.eval.models.load_model", no_weights)
    res = CliRunner().invoke(app, ["eval", "ruler", "--model", str(ckpt), "--ctx", "64k", "--out", str(tmp_path / "r")])
    assert "exceeds gpt2-small's 512-token context" in _one_sentence(res)


def test_a_chat_template_our_checkpoints_do_not_have(tmp_path):
    res = CliRunner().invoke(
        app, ["eval", "icl", "--model", str(_ckpt(tmp_path)), "--template", "chat", "--out", str(tmp_path / "r")]
    )
    assert "no chat template" in _one_sentence(res)


def test_negative_few_shot_counts(tmp_path):
    pytest.importorskip("lm_eval")
    res = CliRunner().invoke(app, ["eval", "harness", "--model", str(_ckpt(tmp_path)), "--num-fewshot", "-1"])
    assert "--num-fewshot -1" in _one_sentence(res)


def test_repro_lm_eval_bad_checkpoint_and_unknown_task(tmp_path, monkeypatch, capsys):
    pytest.importorskip("lm_eval")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "toy.yaml").write_text("task: toy\ndataset_path: json\noutput_type: multiple_choice\n")
    cases = [
        (["--model", "repro", "--model_args", f"path={tmp_path / 'none'}", "--tasks", "toy"], "not a model checkpoint"),
        (["--model", "repro", "--model_args", f"path={_ckpt(tmp_path)}", "--tasks", "toy,no_such_task_xyz",
          "--include_path", str(tasks)], "unknown lm-eval task(s) no_such_task_xyz"),
        (["--model", "repro", "--model_args", f"path={_ckpt(tmp_path)}", "--tasks", "toy", "--num_fewshot", "-1",
          "--include_path", str(tasks)], "--num_fewshot -1"),
    ]  # fmt: skip
    monkeypatch.setattr(harness, "hub_reachable", lambda timeout=3.0: False)
    for argv, message in cases:
        monkeypatch.setattr(sys, "argv", ["repro-lm-eval", *argv])
        with pytest.raises(SystemExit) as exit_info:
            lm_eval_model.lm_eval_main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_evaluations_are_registered_and_report_all_rebuilds_them(tmp_path):
    from repro import registry

    assert {"ruler", "icl", "harness"} <= set(registry.names())
    ckpt = _ckpt(tmp_path, block_size=200)
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    args = ["--model", str(ckpt), "--preset", "smoke", "--out", str(runs), "--reports", str(tmp_path / "first")]
    assert CliRunner().invoke(app, ["eval", "icl", *args]).exit_code == 0
    res = CliRunner().invoke(app, ["report", "--all", "--out", str(runs), "--reports", str(reports)])
    assert res.exit_code == 0, res.output
    table = (reports / "icl" / "table.md").read_text()
    assert table == (tmp_path / "first" / "icl" / "table.md").read_text()  # the same report from run dirs alone
    index = (reports / "index.md").read_text()
    assert "icl/table.md" in index
    cfg = json.loads(json.dumps((next((runs / "icl" / "smoke").iterdir()) / "s0" / "config.yaml").read_text()))
    assert "template: base" in cfg
