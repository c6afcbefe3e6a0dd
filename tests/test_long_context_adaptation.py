"""long-context-adaptation: the retrieval documents (layout, determinism, held-out pairs), the
accuracy metric against an oracle, and the experiment's smoke run and report on generated text."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch

from repro import registry, results, runtime
from repro.data.retrieval import RetrievalConfig, RetrievalTask, mixed_batch, retrieval_accuracy
from repro.data.text import TokenWindows
from repro.errors import UserError

BASE = 50  # text ids are 0..49, the symbols follow


def _text(n: int = 5000, seed: int = 0) -> TokenWindows:
    return TokenWindows(np.random.default_rng(seed).integers(0, BASE, size=n).astype(np.uint16))


def _facts(x: torch.Tensor, task: RetrievalTask) -> dict[int, int]:
    """key -> value of the facts a document states (the triples after each FACT marker)."""
    out = {}
    for i in torch.nonzero(x == task.fact_id).flatten().tolist():
        out[int(x[i + 1])] = int(x[i + 2])
    return out


def test_documents_state_each_answer_once_far_from_its_question():
    cfg = RetrievalConfig(n_keys=10, n_values=12, n_facts=3)
    task = RetrievalTask(cfg, BASE)
    x, y, answer = task.documents(_text(), 20, 48, seed=3, pairs="train")
    assert x.shape == y.shape == answer.shape == (20, 48)
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    assert (answer.sum(1) == cfg.n_facts).all()
    for b in range(20):
        facts = _facts(x[b], task)
        assert len(facts) == cfg.n_facts  # distinct keys
        filler = x[b, 3 * cfg.n_facts : 48 + 1 - 3 * cfg.n_facts]
        assert (filler < BASE).all()  # real text between, no symbols
        for t in torch.nonzero(answer[b]).flatten().tolist():
            key, value = int(x[b, t]), int(y[b, t])
            assert x[b, t - 1] == task.ask_id and facts[key] == value
            assert (x[b, :t] == value).sum() == 1  # stated once, in the facts
            assert t - int(torch.nonzero(x[b] == key)[0]) > 48 - 6 * cfg.n_facts  # far from the question
        asked = [int(x[b, t]) for t in torch.nonzero(answer[b]).flatten()]
        assert sorted(asked) == sorted(facts)  # every key asked once


def test_documents_are_fixed_by_seed_and_held_out_pairs_stay_out_of_training():
    task = RetrievalTask(RetrievalConfig(n_keys=8, n_values=8, n_facts=4, holdout_every=4), BASE)
    text = _text()
    a, b = task.documents(text, 16, 40, 7, "heldout"), task.documents(text, 16, 40, 7, "heldout")
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0], task.documents(text, 16, 40, 8, "heldout")[0])
    for pairs, held in (("heldout", True), ("train", False)):
        x, _, _ = task.documents(text, 64, 40, 1, pairs)
        for row in x:
            for k, v in _facts(row, task).items():
                assert (((k - task.keys[0]) + (v - task.values[0])) % 4 == 0) == held
    with pytest.raises(UserError):
        task.documents(text, 1, 20, 0, "train")  # 4 facts need 24 tokens
    with pytest.raises(UserError):
        RetrievalTask(RetrievalConfig(n_values=8, holdout_every=9), BASE)


def test_mixed_batch_is_a_pure_function_of_step():
    task = RetrievalTask(RetrievalConfig(n_keys=8, n_values=8, n_facts=2), BASE)
    text = _text()
    x, y = mixed_batch(task, text, 5, 8, 32, 0.5, seed=1)
    assert x.shape == (8, 32) and torch.equal(x[:, 1:], y[:, :-1])
    assert ((x[:4] == task.fact_id).sum(1) == 2).all() and (x[4:] < BASE).all()  # 4 documents, 4 text windows
    assert torch.equal(x, mixed_batch(task, text, 5, 8, 32, 0.5, seed=1)[0])
    assert not torch.equal(x, mixed_batch(task, text, 6, 8, 32, 0.5, seed=1)[0])


class _Oracle(torch.nn.Module):
    """Predicts, at every key inside the questions, the value its fact stated; elsewhere token 0."""

    def __init__(self, task: RetrievalTask, vocab: int, wrong: bool = False):
        super().__init__()
        self.task, self.vocab, self.wrong = task, vocab, wrong
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*x.shape, self.vocab)
        for b in range(len(x)):
            facts = _facts(x[b], self.task)
            for t in torch.nonzero(x[b] == self.task.ask_id).flatten().tolist():
                value = facts[int(x[b, t + 1])] if t + 1 < x.shape[1] else 0
                logits[b, t + 1, value + 1 if self.wrong else value] = 1.0
        return logits


def test_accuracy_against_an_oracle():
    task = RetrievalTask(RetrievalConfig(n_keys=8, n_values=8, n_facts=3), BASE)
    x, y, answer = task.documents(_text(), 12, 40, 0, "train")
    assert retrieval_accuracy(_Oracle(task, task.vocab_size + 1), x, y, answer, batch_size=5) == 1.0
    assert retrieval_accuracy(_Oracle(task, task.vocab_size + 1, wrong=True), x, y, answer) == 0.0


@pytest.fixture
def corpus(tmp_path):
    rng = random.Random(0)
    names, things = ["Lily", "Tom", "Mia", "Ben"], ["ball", "cat", "boat", "tree"]
    root = tmp_path / "corpus"
    root.mkdir()
    for name, n in (("train.txt", 300), ("valid.txt", 120)):
        lines = [f"Once, {rng.choice(names)} had a {rng.choice(things)}. It was fun. The end." for _ in range(n)]
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def test_smoke_run_report_and_resume(corpus, tmp_path):
    exp = registry.get("long-context-adaptation")
    overrides = [f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}"]
    for seed in (0, 1):
        run_dir = runtime.launch(exp, preset="smoke", overrides=overrides, seed=seed, out=tmp_path / "runs")
    df = results.collect(tmp_path / "runs", "long-context-adaptation")
    acc = df[(df.metric == "accuracy") & (df.split == "test")]
    cfg = exp.config("smoke")
    assert set(acc.model) == {"llama", "mosaic_v2"}
    assert sorted(acc.step.unique()) == [0, *cfg.eval_steps]
    assert sorted(acc.slice_value.astype(int).unique()) == [cfg.pretrain.block_size, cfg.finetune.block_size]
    assert acc.value.between(0, 1).all() and len(acc) == 2 * 2 * 2 * (1 + len(cfg.eval_steps))
    params = df[df.metric == "params"].groupby("model").value.first()
    assert abs(params["mosaic_v2"] / params["llama"] - 1) < 0.01  # equal size
    assert (run_dir / "checkpoints" / "mosaic_v2-finetune" / "model.safetensors").exists()
    copies = df[df.metric == "copy_loss"]  # after pretraining (step 0) and after fine-tuning, per model and seed
    assert sorted(copies.step.unique()) == [0, cfg.finetune.steps] and set(copies.split) == {"random", "validation"}
    assert len(copies) == 2 * 2 * 2 * 2 * 2 and copies.value.between(0, 20).all()
    # a rerun of a finished family reuses its rows instead of training again
    (run_dir / "rows.jsonl").unlink()
    again = runtime.launch(exp, preset="smoke", overrides=overrides, seed=1, out=tmp_path / "runs")
    rerun = pd.read_json(again / "rows.jsonl", lines=True)
    rerun_acc = rerun[(rerun.metric == "accuracy") & (rerun.split == "test")]
    assert rerun_acc.value.tolist() == acc[acc.seed == 1].value.tolist()
    paths = exp.report(df, tmp_path / "report")
    assert {p.name for p in paths} >= {"table.md", "fig_adaptation.png"}
    text = (tmp_path / "report" / "table.md").read_text()
    assert "+22 points" in text and "seeds [0, 1]" in text and "In-context copy test" in text
    assert "fig_copy.png" in {p.name for p in paths}


def test_pretraining_grid_keeps_the_best_on_validation(corpus, tmp_path):
    exp = registry.get("long-context-adaptation")
    grid = ["tune.llama.lr=1e-4,3e-3", "tune.llama.steps=10,20", "families=llama"]
    overrides = [f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}", *grid]
    run_dir = runtime.launch(exp, preset="smoke", overrides=overrides, out=tmp_path / "runs")
    df = results.collect(tmp_path / "runs", "long-context-adaptation")
    tune = df[(df.split == "tune") & df.slice_value.notna()]
    wide = tune.pivot_table(index="slice_value", columns="metric", values="value")
    assert len(wide) == 4 and set(wide.lr) == {1e-4, 3e-3} and set(wide.steps) == {10, 20}
    best = wide.sort_values(["val_acc", "val_loss"], ascending=[False, True]).iloc[0]
    chosen = df[df.metric.str.startswith("chosen_")].set_index("metric").value
    assert (chosen["chosen_lr"], chosen["chosen_steps"]) == (best.lr, best.steps)
    for name in wide.index:  # every grid point's weights, and the chosen one under the plain name
        assert (run_dir / "checkpoints" / name / "model.safetensors").exists()
    assert (run_dir / "checkpoints" / "llama-pretrain" / "config.json").exists()
    acc0 = df[(df.metric == "accuracy") & (df.split == "validation") & (df.step == 0)]
    short = exp.config("smoke").pretrain.block_size
    assert acc0[acc0.slice_value.astype(int) == short].value.iloc[0] == pytest.approx(best.val_acc)
    table = exp.report(df, tmp_path / "report")[0].read_text()
    assert "Pretraining grid" in table and "1/1" in table


def test_bad_settings_are_user_errors():
    exp = registry.get("long-context-adaptation")
    cfg = exp.config("smoke")
    cfg.eval_steps = (1, 99)
    with pytest.raises(UserError, match="eval_steps"):
        exp.check(cfg)
    cfg = exp.config("smoke")
    cfg.finetune.block_size = cfg.pretrain.block_size
    with pytest.raises(UserError, match="longer context"):
        exp.check(cfg)
