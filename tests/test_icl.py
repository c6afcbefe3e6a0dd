"""In-context classification (`repro eval icl`): prompt construction, label mappings, scoring with an
oracle and a constant model, the prompt sweep's best-of, prompt length accounting, the packed label
trie against plain forward passes, data loaders on generated fixtures, and the command end to end."""

import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from repro import results
from repro.data import icl as data
from repro.errors import UserError
from repro.evaluations import icl

BANKING = ["card_arrival", "card_linking", "exchange_rate", "top_up_failed"]


def _banking_dir(root: Path, per_class: int = 5) -> Path:
    d = root / "banking77"
    d.mkdir(parents=True)
    for split in ("train", "test"):
        lines = ["text,category"] + [f'"{split} query {i}, about {c}",{c}' for c in BANKING for i in range(per_class)]
        (d / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return d


def _fixture_task(tmp_path: Path) -> data.ICLTask:
    return data.load_task("banking77", _banking_dir(tmp_path))


# ---- prompts ------------------------------------------------------------------------------------


def test_each_shot_holds_one_example_of_every_class_and_extends_the_previous(tmp_path):
    task = _fixture_task(tmp_path)
    for n in (1, 2, 3):
        rounds = data.demo_rounds(task, n, seed=0)
        assert len(rounds) == n
        assert all(sorted(ex.label for ex in r) == list(range(task.n_classes)) for r in rounds)
    assert data.demo_rounds(task, 3, 0)[:2] == data.demo_rounds(task, 2, 0)
    labels = data.label_strings(task, "semantic", 0)
    for prompt in data.PROMPTS:
        text = data.build_prefix(task, data.demo_rounds(task, 3, 0), labels, prompt, 0)
        for lab in labels:  # every class answered exactly once per shot
            assert text.count(f"intent category: {lab}") == 3
    with pytest.raises(UserError):
        data.demo_rounds(task, 6, 0)  # 5 training examples per class


def test_templates_delimiters_and_orders(tmp_path):
    task = _fixture_task(tmp_path)
    ex = task.train[0]
    assert (
        data.render(task.template, ex, "card_arrival", "\n")
        == f"service query: {ex.text}\nintent category: card_arrival"
    )
    tac = data.Example("Bill works at Acme .", 0, "Bill", "Acme")
    assert data.render(data.TEMPLATES["tacred"], tac, None, " ") == (
        "sentence: Bill works at Acme . the relation between Bill and Acme is:"
    )
    assert data.render(data.TEMPLATES["goemotions"], data.Example("yay", 0), "joy", "\n").startswith("comment: yay\n")
    rounds, labels = data.demo_rounds(task, 2, 0), data.label_strings(task, "semantic", 0)
    newline = data.build_prefix(task, rounds, labels, "newline-ordered", 0)
    space = data.build_prefix(task, rounds, labels, "space-ordered", 0)
    assert newline.split("\n")[0] == task.template.instruction  # the instruction line
    assert newline.count("\n") == 1 + 2 * 2 * 4 - 1  # two lines per demonstration
    assert space.count("\n") == 1  # one line of demonstrations
    order = [
        re.findall(r"intent category: (\w+)", p)
        for p in (newline, data.build_prefix(task, rounds, labels, "newline-shuffled", 0))
    ]
    assert order[0] == labels * 2  # class-ordered within each shot
    assert order[1] != order[0] and sorted(order[1][:4]) == sorted(labels)  # shuffled within a shot
    assert data.query_text(task, ex, "space-ordered").startswith(" service query:")


def test_anonymous_mapping_is_a_seeded_permutation(tmp_path):
    task = _fixture_task(tmp_path)
    a = data.label_strings(task, "anonymous", 0)
    assert a == data.label_strings(task, "anonymous", 0)
    assert sorted(a) == [f"class_{k:02d}" for k in range(4)]
    assert any(data.label_strings(task, "anonymous", s) != a for s in range(1, 6))
    big = data.ICLTask("x", task.template, [str(i) for i in range(77)], [], [])
    assert "class_71" in data.label_strings(big, "anonymous", 3)
    with pytest.raises(UserError):
        data.label_strings(task, "numbers", 0)


def test_parse_generation_cuts_at_the_next_cue():
    task = data.synthetic_task()
    assert data.parse_generation(" Red \nword: bako", task) == "red"
    assert data.parse_generation(" class_03 word: bako label: x", task) == "class_03"


# ---- scoring: an oracle scores 100%, a constant model 1/K -----------------------------------------


class CharTok:
    eot_id = 0

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(map(chr, ids))


class FakeScorer:
    """`oracle` reads the word -> label pairs of the prompt and answers the query's; `constant`
    always answers the first label string it is offered."""

    def __init__(self, kind):
        self.kind, self.tok = kind, CharTok()

    def set_prefix(self, prefix):
        self.pairs = dict(re.findall(r"word: (\w+)\s+label: (\w+)", self.tok.decode(prefix)))

    def _answer(self, query, labels):
        if self.kind == "constant":
            return labels[0]
        return self.pairs[re.search(r"word: (\w+)", self.tok.decode(query)).group(1)]

    def rank_many(self, queries, labels):
        texts = [self.tok.decode(lab).strip() for lab in labels]
        return [[float(t == self._answer(q, texts)) for t in texts] for q in queries]

    def greedy(self, query, max_new):
        return " " + self._answer(query, sorted(set(self.pairs.values()))) + "\nword: zz"


@pytest.mark.parametrize("scoring", ["likelihood", "generate"])
def test_oracle_scores_one_and_constant_model_one_over_k(scoring):
    task = data.synthetic_task(seed=0, n_classes=4, words_per_class=1)
    cfg = icl.ICLConfig("fake", "synthetic", ["semantic", "anonymous"], [1, 2], 40, scoring)
    for kind, expected in (("oracle", 1.0), ("constant", 1 / 4)):
        res, preds = icl.evaluate(task, FakeScorer(kind), CharTok(), None, cfg)
        assert len(res) == 2 * 2 * 4 and all(r.accuracy == pytest.approx(expected) for r in res)
        assert all(r.accuracy_norm == pytest.approx(expected) and r.n == 40 for r in res)
        assert len(preds) == 2 * 2 * 4 * 40
        collapsed = [r.top_share == 1.0 for r in res]
        assert all(collapsed) if kind == "constant" else not any(collapsed)  # one label for every query


def test_synthetic_task_needs_the_context():
    a, b = data.synthetic_task(seed=0), data.synthetic_task(seed=1)
    assert data.synthetic_task(seed=0) == a
    assert {ex.text for ex in a.train} != {ex.text for ex in b.train}  # fresh words per seed
    words = {}
    for ex in a.train:
        words.setdefault(ex.text, set()).add(ex.label)
    assert all(len(v) == 1 for v in words.values()) and len(words) == 16


# ---- rows: every prompt with n and intervals, the mean of the prompts, the label distribution ----


class Ctx:
    def row(self, **fields):
        return results.make_row(experiment="icl", preset="smoke", variant="v", seed=0, **fields)


def test_rows_report_every_prompt_and_their_mean_never_a_best_of():
    R = icl.PromptResult
    res = [
        R(
            "anonymous",
            1,
            "newline-shuffled",
            10,
            0.25,
            n=4,
            accuracy_norm=0.5,
            predicted={"a": 4},
            hits=[1, 0, 0, 0],
            hits_norm=[1, 1, 0, 0],
        ),
        R(
            "anonymous",
            1,
            "space-ordered",
            10,
            0.75,
            n=4,
            accuracy_norm=0.75,
            predicted={"a": 2, "b": 2},
            hits=[1, 1, 1, 0],
            hits_norm=[1, 1, 1, 0],
        ),
        R("anonymous", 2, "newline-ordered", 99, None, "too long"),
    ]
    cfg = icl.ICLConfig("m", "synthetic", ["anonymous"], [1, 2])
    rows = icl.to_rows(res, cfg, Ctx(), 4)
    get = {(r["metric"], r["step"], r["slice_value"]): r["value"] for r in rows}
    # each query's accuracy averaged over the prompts that ran; n counts the 4 distinct queries, not 8
    assert get["accuracy", 1, "mean"] == 0.5 and get["n", 1, "mean"] == 4 and get["prompts", 1, "mean"] == 2
    assert get["accuracy_norm", 1, "mean"] == pytest.approx(5 / 8)
    assert not any(r["slice_value"] == "best" for r in rows)
    lo, hi = get["accuracy_lo", 1, "space-ordered"], get["accuracy_hi", 1, "space-ordered"]
    assert 0.2 < lo < 0.75 < hi <= 1.0  # a 95% interval around 3/4 with n=4
    assert get["top_label_share", 1, "newline-shuffled"] == 1.0 and get["top_label=a", 1, "newline-shuffled"] == 4
    assert any(r["metric"] == "skipped" and "too long" in r["slice_value"] for r in rows)
    df = pd.DataFrame(rows)
    table = icl.ICL().report(df, Path(pytest.importorskip("tempfile").mkdtemp()))[0].read_text()
    assert "0.50 [0.15, 0.85] n=4" in table and "a (1.00) | yes" in table


def test_a_small_test_subset_is_stratified_over_all_classes():
    """A subset smaller than the class count takes one query from each of a seeded random set of
    classes (issue 30: round-robin took classes 0-11 of Banking77's 77)."""
    task = data.synthetic_task(seed=0, n_classes=8)
    picks = [[ex.label for ex in data.test_subset(task, 3, seed)] for seed in range(6)]
    assert all(len(set(p)) == 3 for p in picks)  # one per class
    assert any(set(p) != {0, 1, 2} for p in picks) and len(set().union(*map(set, picks))) == 8
    full = data.test_subset(task, 16, 0)
    assert sorted(Counter(ex.label for ex in full).values()) == [2] * 8  # still balanced when it covers all


def test_prompt_length_accounting_skips_what_does_not_fit():
    task = data.synthetic_task(seed=0, n_classes=4, words_per_class=1)
    tok, cfg = CharTok(), icl.ICLConfig("fake", "synthetic", ["semantic"], [1, 2, 40], 8, "likelihood")
    tests = data.test_subset(task, 8, 0)
    labels = data.label_strings(task, "semantic", 0)
    rounds = data.demo_rounds(task, 1, 0)
    prefix = data.build_prefix(task, rounds, labels, "newline-ordered", 0)
    longest_query = max(len(data.query_text(task, ex, "newline-ordered")) for ex in tests)
    need = len(prefix) + longest_query + max(len(" " + lab) for lab in labels)
    res, _ = icl.evaluate(task, FakeScorer("oracle"), tok, need + 5, cfg)
    one = {r.prompt: r for r in res if r.shots == 1}
    assert one["newline-ordered"].prompt_tokens == need and one["newline-ordered"].accuracy == 1.0
    two = [r for r in res if r.shots == 2]
    assert all(r.accuracy is None and "exceed the" in r.reason for r in two)
    forty = [r for r in res if r.shots == 40]  # 8 copies x 1 word: too few training examples
    assert all(r.prompt_tokens is None and "training examples" in r.reason for r in forty)


# ---- data loaders -------------------------------------------------------------------------------


def test_loaders_read_local_files_and_fail_in_one_sentence(tmp_path, monkeypatch):
    _banking_dir(tmp_path)
    task = data.load_task("banking77", data_dir=tmp_path)
    assert task.label_names == BANKING and len(task.train) == 20 and task.test[0].text.startswith("test query")
    go = tmp_path / "goemotions"
    go.mkdir()
    (go / "emotions.txt").write_text("admiration\namusement\nanger")
    for split in ("train", "test"):
        (go / f"{split}.tsv").write_text("great job\t0\tid1\nlol\t1,0\tid2\ngrr\t2\tid3\n")
    task = data.load_task("goemotions", data_dir=tmp_path)
    assert [ex.label for ex in task.train] == [0, 1, 2] and task.n_classes == 3
    with pytest.raises(UserError, match="TACRED is licensed"):
        data.load_task("tacred", data_dir=tmp_path)
    with pytest.raises(UserError, match="unknown"):
        data.load_task("imdb")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UserError, match=r"PolyAI/banking77.*--data-dir"):
        data.load_task("banking77")


REAL = Path("/work/shared/data/banking77")


@pytest.mark.skipif(not REAL.is_dir(), reason="the Banking77 copy is not on this machine")
def test_real_banking77_one_shot_prompt():
    task = data.load_task("banking77", REAL)
    assert task.n_classes == 77 and len(task.train) == 10003 and len(task.test) == 3080
    prefix = data.build_prefix(
        task, data.demo_rounds(task, 1, 0), data.label_strings(task, "anonymous", 0), "newline-shuffled", 0
    )
    assert prefix.count("intent category: class_") == 77


# ---- the command end to end on one of our checkpoints --------------------------------------------


def test_command_end_to_end_on_a_checkpoint(tmp_path):
    from repro.cli import app
    from repro.data.tokenizer import byte_tokenizer
    from repro.models.registry import build_model

    torch.manual_seed(0)
    ckpt = tmp_path / "gpt2-tiny"
    build_model("gpt2", n_layer=1, n_head=2, n_embd=16, block_size=200, vocab_size=320).save(ckpt)
    byte_tokenizer().save(ckpt)
    args = [
        "eval",
        "icl",
        "--model",
        str(ckpt),
        "--dataset",
        "synthetic",
        "--shots",
        "1,2",
        "--test-size",
        "8",
        "--preset",
        "smoke",
        "--out",
        str(tmp_path / "runs"),
        "--reports",
        str(tmp_path / "reports"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (variant,) = (tmp_path / "runs/icl/smoke").iterdir()
    run = variant / "s0"
    assert (
        variant.name.startswith("gpt2-tiny__synthetic__base") and "template: base" in (run / "config.yaml").read_text()
    )
    for name in ("config.yaml", "env.json", "rows.jsonl", "predictions.jsonl"):
        assert (run / name).is_file()
    rows = [json.loads(line) for line in (run / "rows.jsonl").read_text().splitlines()]
    assert any(r["metric"] == "skipped" and r["step"] == 2 for r in rows)  # 2 shots exceed 200 bytes
    assert any(r["metric"] == "accuracy" and r["step"] == 1 for r in rows)
    report = tmp_path / "reports/icl"
    assert (report / "table.md").is_file() and (report / "fig_synthetic.png").is_file()
    assert "not tested" in (report / "table.md").read_text()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "already done" in again.output
    bad = CliRunner().invoke(app, [*args[:5], "imdb", *args[6:]])
    assert bad.exit_code == 2 and "unknown" in bad.output


def test_seeds_are_kept_apart_and_the_pair_is_compared_by_seed(tmp_path: Path):
    """Several seeds of a checkpoint pair: every seed's rows reach the report (the cells once kept only
    the first seed's), the headline says mean ± std over seeds, the verdict is paired by seed."""
    R = icl.PromptResult
    rows = []
    for seed in (0, 1, 2):

        class SeedCtx:
            def __init__(self, seed: int):
                self.seed = seed

            def row(self, **fields):
                return results.make_row(experiment="icl", preset="smoke", variant="v", seed=self.seed, **fields)

        for model, acc in (("runs/s/checkpoints/mosaic_v2-finetune", 0.5 + 0.25 * (seed == 2)), ("runs/s/llama", 0.25)):
            res = [R("anonymous", 1, "newline-ordered", 10, acc, n=4, accuracy_norm=acc, predicted={"a": 4},
                     hits=[1] * int(4 * acc) + [0] * (4 - int(4 * acc)), hits_norm=[1, 0, 0, 0])]  # fmt: skip
            rows += icl.to_rows(res, icl.ICLConfig(model, "synthetic", ["anonymous"], [1]), SeedCtx(seed), 4)
    table = icl.ICL().report(pd.DataFrame(rows), tmp_path)[0].read_text()
    assert "1-shot 0.58 ± 0.14 (3 seeds, n=4 each)" in table
    assert "paired over seeds [0, 1, 2]): 1-shot +33.33 [" in table
    assert "| 2 | 1 | newline-ordered |" in table  # the third seed's own row
