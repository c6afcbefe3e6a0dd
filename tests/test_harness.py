"""The lm-evaluation-harness adapter: real scores on local JSONL tasks (a model that knows the answers
scores 1.0, a uniform one the chance level), batching that changes no number, rolling windows that
predict every token once, stop strings, leading spaces, the run directory and report, lm-eval's own
CLI, and the one-sentence errors (no lm-eval, no hub, no long-term memory)."""

import json
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from cli_helpers import launch

from repro.data.tokenizer import byte_tokenizer
from repro.errors import UserError
from repro.eval import lm_eval_model, lmeval_tasks
from repro.eval.models import EvalModel, load_model
from repro.eval.scoring import score_requests
from repro.evaluations import harness
from repro.models.registry import build_model

V = 257  # byte tokenizer: 256 bytes + end-of-text
# 8 questions whose choices all have two bytes (so a uniform model ties every choice), the right
# one at each position twice: chance is exactly 1/4.
QUESTIONS = [(a, b) for a, b in [(12, 7), (30, 15), (41, 22), (17, 17), (25, 30), (60, 13), (44, 11), (19, 29)]]


def _mc_docs() -> list[dict]:
    docs = []
    for i, (a, b) in enumerate(QUESTIONS):
        right = a + b
        wrong = [str(right + d) for d in (1, 3, 5)]
        k = i % 4
        docs.append({"question": f"What is {a} + {b}?", "choices": [*wrong[:k], str(right), *wrong[k:]], "label": k})
    return docs


def _gen_docs() -> list[dict]:
    return [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in QUESTIONS]


def _write_tasks(root: Path) -> Path:
    """Two local tasks (multiple choice, generation) over JSONL files, with absolute paths."""
    root.mkdir(parents=True, exist_ok=True)
    for name, docs in (("mc", _mc_docs()), ("gen", _gen_docs())):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = 'dataset_path: json\ntest_split: test\ndoc_to_text: "Question: {{question}}\\nAnswer:"\n'
    (root / "mc.yaml").write_text(
        "task: toy_mc\n"
        + common
        + f"dataset_kwargs: {{data_files: {{test: {root / 'mc.jsonl'}}}}}\n"
        + 'output_type: multiple_choice\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        + "metric_list: [{metric: acc}, {metric: acc_norm}]\nmetadata: {version: 1}\n"
    )
    (root / "gen.yaml").write_text(
        "task: toy_gen\n"
        + common
        + f"dataset_kwargs: {{data_files: {{test: {root / 'gen.jsonl'}}}}}\n"
        + 'output_type: generate_until\ndoc_to_target: "{{answer}}"\n'
        + 'generation_kwargs: {until: ["\\n"], max_gen_toks: 8}\n'
        + "filter_list: [{name: strip, filter: [{function: remove_whitespace}, {function: take_first}]}]\n"
        + "metric_list: [{metric: exact_match}]\nmetadata: {version: 1}\n"
    )
    return root


def _byte_model(logits_fn, max_context: int | None = None) -> EvalModel:
    return EvalModel("fake", byte_tokenizer(), max_context, logits_fn, None, torch.device("cpu"))


def _uniform(ids: torch.Tensor) -> torch.Tensor:
    return torch.zeros(*ids.shape, V)  # (B, T, V)


def _oracle() -> EvalModel:
    """Knows every 'Question: ...\\nAnswer: <right>\\n': after any prefix of one of them it puts
    almost all probability on the next byte; elsewhere it is uniform."""
    tok = byte_tokenizer()
    nxt: dict[tuple[int, ...], int] = {}
    for doc in _gen_docs():
        ids = tok.encode(f"Question: {doc['question']}\nAnswer: {doc['answer']}\n")
        for t in range(len(ids) - 1):
            nxt[tuple(ids[: t + 1])] = ids[t + 1]

    def forward(ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*ids.shape, V)
        for b, row in enumerate(ids.tolist()):
            for t in range(len(row)):
                if (k := nxt.get(tuple(row[: t + 1]))) is not None:
                    out[b, t, k] = 30.0
        return out

    return _byte_model(forward)


def _evaluate(model: EvalModel, tasks_dir: Path, **kw) -> dict:
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    res = lm_eval.simple_evaluate(
        model=lm_eval_model.lm_class()(model=model, batch_size=3), tasks=["toy_mc", "toy_gen"], task_manager=tm, **kw
    )
    return res["results"]


def _tiny_checkpoint(path: Path, family: str = "gpt2") -> Path:
    torch.manual_seed(0)
    shape = dict(n_layer=1, n_head=2, n_embd=16, block_size=128, vocab_size=V)
    model = build_model(family, **shape, **({"pmem_size": 8} if family == "mosaic" else {}))
    model.save(path)
    byte_tokenizer().save(path)
    return path


def test_a_model_that_knows_the_answers_scores_one(tmp_path):
    res = _evaluate(_oracle(), _write_tasks(tmp_path / "tasks"))
    assert res["toy_mc"]["acc,none"] == 1.0 and res["toy_mc"]["acc_norm,none"] == 1.0
    assert res["toy_gen"]["exact_match,strip"] == 1.0  # " 19" then the "\n" stop, leading space stripped


def test_a_uniform_model_scores_the_chance_level(tmp_path):
    res = _evaluate(_byte_model(_uniform), _write_tasks(tmp_path / "tasks"))
    assert res["toy_mc"]["acc,none"] == 0.25 and res["toy_mc"]["acc_norm,none"] == 0.25
    assert res["toy_gen"]["exact_match,strip"] == 0.0


@pytest.mark.parametrize("family", ["gpt2", "mosaic"])
def test_prefix_cached_scoring_changes_no_score_or_generation(tmp_path, family):
    model = load_model(str(_tiny_checkpoint(tmp_path / "ckpt", family)))
    g = torch.Generator().manual_seed(0)
    shared = torch.randint(0, 256, (9,), generator=g).tolist()  # one context, several continuations
    pairs = [
        (torch.randint(0, 256, (n,), generator=g).tolist(), torch.randint(0, 256, (m,), generator=g).tolist())
        for n, m in [(5, 3), (17, 1), (30, 2), (1, 4), (12, 12)]
    ] + [(shared, torch.randint(0, 256, (m,), generator=g).tolist()) for m in (6, 1, 3)]
    for (logp, greedy), (ctx, cont) in zip(score_requests(model, pairs), pairs, strict=True):
        ref, ref_greedy = model.loglikelihood(ctx, cont)
        assert logp == pytest.approx(ref, abs=1e-4) and greedy == ref_greedy
    prompts = [p for p, _ in pairs]
    texts = lm_eval_model.generate_texts(model, prompts, 6, [], batch_size=4)
    assert texts == [model.generate(p, 6) for p in prompts]


def test_generation_cuts_at_the_first_stop_string_and_stops_early():
    calls = []

    def forward(ids):  # always continues "ab\ncd..." by position
        calls.append(ids.shape[1])
        out = torch.zeros(*ids.shape, V)
        out[:, :, torch.tensor(list(b"ab\ncdefgh"))[ids.shape[1] % 9]] = 1.0
        return out

    text = lm_eval_model.generate_texts(_byte_model(forward), [[120] * 9], 50, ["\n"])
    assert text == ["ab"] and len(calls) == 3  # read the prompt, then two more steps, then "\n" ends it


def test_leading_spaces_belong_to_the_continuation(tmp_path):
    pytest.importorskip("lm_eval")
    lm = lm_eval_model.lm_class()(model=load_model(str(_tiny_checkpoint(tmp_path / "ckpt"))))
    req = [types.SimpleNamespace(args=("Answer: ", "Paris")), types.SimpleNamespace(args=("Answer:", " Paris"))]
    (a, _), (b, _) = lm.loglikelihood(req)
    assert a == pytest.approx(b)


def test_rolling_loglikelihood_predicts_every_token_once(tmp_path):
    pytest.importorskip("lm_eval")
    text = "Once upon a time there was a memory mosaic that remembered everything."  # 71 bytes
    lm = lm_eval_model.lm_class()(model=_byte_model(_uniform, max_context=16))  # 5 windows
    (total,) = lm.loglikelihood_rolling([types.SimpleNamespace(args=(text,))])
    assert total == pytest.approx(-len(text) * math.log(V), rel=1e-5)
    model = load_model(str(_tiny_checkpoint(tmp_path / "ckpt")))
    lm = lm_eval_model.lm_class()(model=model)  # the whole text fits one window: log P(text | eot)
    (total,) = lm.loglikelihood_rolling([types.SimpleNamespace(args=(text,))])
    assert total == pytest.approx(model.loglikelihood([V - 1], list(text.encode()))[0], abs=1e-3)


def test_command_writes_a_run_and_the_paper19_report(tmp_path):
    pytest.importorskip("lm_eval")
    ckpt, tasks = _tiny_checkpoint(tmp_path / "ckpt"), _write_tasks(tmp_path / "tasks")
    kw = dict(model=str(ckpt), tasks="toy_mc,toy_gen", limit=None, num_fewshot=None, no_long_term=False)
    kw |= dict(include_path=tasks, batch_size=4, device="cpu", out=tmp_path / "runs", reports=tmp_path / "rep")
    kw |= dict(template="base", preset="cpu", data_dir=None, allow_code_execution=False, limit_generate=None)
    run_dir = run_harness(**kw, force=False)
    assert {"config.yaml", "env.json", "results.json", "rows.jsonl"} <= {p.name for p in run_dir.iterdir()}
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]
    got = {(r["split"], r["metric"]): r["value"] for r in rows}
    assert 0 <= got["toy_mc", "acc"] <= 1 and got["toy_mc", "chance"] == 0.25 and got["toy_gen", "n"] == 8
    table = (tmp_path / "rep" / "harness" / "table.md").read_text()
    assert "| hellaswag | hellaswag | acc_norm | 79.2 | 78.6 | 40.9 | - | - | not requested |" in table
    assert "toy_mc" in table and "## Other tasks run" in table and "n=8 |" in table  # intervals and n
    before = (run_dir / "rows.jsonl").stat().st_mtime_ns
    run_harness(**kw, force=False)  # finished: a no-op
    assert (run_dir / "rows.jsonl").stat().st_mtime_ns == before


def test_long_term_memory_removal_is_reported_as_table_2(tmp_path):
    pytest.importorskip("lm_eval")
    torch.manual_seed(0)
    shape = dict(n_layer=1, n_head=2, n_embd=16, block_size=128, vocab_size=V, ffn_size=32)
    ckpt = tmp_path / "v2"
    build_model("mosaic_v2", "large", **shape).save(ckpt)  # the paper's h = 256 and m ~ U[64, 256]
    byte_tokenizer().save(ckpt)
    pair = [(list(b"Question: What is 12 + 7?\nAnswer:" * 4), list(b" 19"))]  # longer than the skip m
    model = load_model(str(ckpt))
    kept = score_requests(model, pair)[0][0]
    lm_eval_model.drop_long_term_memory(model)
    assert score_requests(model, pair)[0][0] != pytest.approx(kept)
    kw = dict(model=str(ckpt), tasks="toy_mc", limit=4, num_fewshot=None, include_path=_write_tasks(tmp_path / "t"))
    kw |= dict(batch_size=4, device="cpu", out=tmp_path / "runs", reports=tmp_path / "rep", force=False)
    kw |= dict(template="base", preset="cpu", data_dir=None, allow_code_execution=False, limit_generate=None)
    run_harness(**kw, no_long_term=False)
    removed = run_harness(**kw, no_long_term=True)
    assert "__no-ltm" in removed.parent.name
    many = harness.HarnessConfig(model=str(ckpt), tasks=harness.expand_tasks("paper19")[:12], no_long_term=True)
    assert "__no-ltm" in harness.Harness().variant(many)  # not cut off by a long task list
    table = (tmp_path / "rep" / "harness" / "table.md").read_text()
    assert "## Table 2: long-term memory removed after training" in table
    assert "| 13 tasks | 57.1 | 56.8 | 56.6 | n/a (0/13 run) | n/a (0/13 run) |" in table


@pytest.mark.slow  # lm-eval's CLI indexes its ~15k built-in tasks first (about 15 s)
def test_lm_eval_cli_runs_our_checkpoint(tmp_path):
    pytest.importorskip("lm_eval")
    ckpt, tasks = _tiny_checkpoint(tmp_path / "ckpt"), _write_tasks(tmp_path / "tasks")
    args = ["--model", "repro", "--model_args", f"path={ckpt}", "--tasks", "toy_mc", "--include_path", str(tasks)]
    out = subprocess.run(
        [sys.executable, "-m", "repro.eval.lm_eval_model", *args, "--limit", "4", "--output_path", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "toy_mc" in out.stdout and "acc" in out.stdout


def test_long_term_memory_removal_is_refused_without_one_and_called_with_one(tmp_path):
    model = load_model(str(_tiny_checkpoint(tmp_path / "ckpt")))
    with pytest.raises(UserError, match="no long-term memory"):
        lm_eval_model.drop_long_term_memory(model)
    dropped = []
    net = types.SimpleNamespace(drop_long_term_memory=lambda: dropped.append(True))
    lm_eval_model.drop_long_term_memory(_byte_model(net))
    assert dropped == [True]


def test_without_lm_eval_the_command_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(lm_eval_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install lm-eval"):
        run_harness(model="x", tasks="paper19", out=Path("o"), reports=Path("r"), preset="cpu")


def test_importing_repro_needs_no_lm_eval():
    code = "import sys, repro.evaluations.harness, repro.eval.models; assert sys.modules.get('lm_eval') is None"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_unreachable_hub_is_one_sentence(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not lmeval_tasks.hub_reachable()
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hub.yaml").write_text(
        "task: hub_only\ndataset_path: allenai/ai2_arc\ndataset_name: ARC-Easy\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: [a, b]\ndoc_to_target: 0\n"
    )
    with pytest.raises(UserError, match="hub is unreachable") as err:
        lmeval_tasks.load_tasks(["hub_only"], tasks)
    assert "\n" not in str(err.value)


def test_paper19_maps_the_19_benchmarks():
    names = harness.expand_tasks("paper19")
    assert len(names) == 19 and "race_middle" in names and "hellaswag" in names
    assert harness.expand_tasks("paper19,toy_mc,hellaswag") == [*names, "toy_mc"]
    assert sum(b.in_13 for b in harness.PAPER19) == 13
    assert sum(b.mmv2 for b in harness.PAPER19) / 19 == pytest.approx(harness.TABLE1_AVG["mmv2"], abs=0.05)


def run_harness(**kw):
    return launch("harness", "evaluation", **kw)


def test_table_1_shows_every_metric_lm_eval_reports_and_why_a_cell_is_empty(tmp_path):
    """acc beside acc_norm (lm-eval's own table lists both; issue 30: SmolLM2 ARC-Easy acc 49.0 vs
    acc_norm 43.0); a requested task without data says so, one nobody asked for says 'not requested'."""
    import pandas as pd

    from repro.evaluations import harness

    base = dict(model="m", variant="v", preset="cpu", seed=0, step=0)
    rows = [
        base | dict(split="arc_easy", metric="acc_norm", value=0.43, slice_value="none"),
        base | dict(split="arc_easy", metric="acc", value=0.49, slice_value="none"),
        base | dict(split="arc_easy", metric="n", value=200.0, slice_value=None),
        base | dict(split="hellaswag", metric="skipped", value=1.0, slice_value="no offline data"),
        base | dict(split="_env", metric="hub_reachable", value=0.0, slice_value=None),
    ]
    harness.Harness().report(pd.DataFrame(rows), tmp_path)
    table = (tmp_path / "table.md").read_text()
    assert "| arc-easy | arc_easy | acc_norm | 77.3 | 78.0 |" in table and "43.0 [36.3, 49.9] n=200 |" in table
    assert "| arc-easy | arc_easy | acc |  |  |" in table and "49.0 [42.2, 55.9] n=200 |" in table
    assert "| hellaswag | hellaswag | acc_norm |" in table and "no offline data |" in table
    assert "| piqa | piqa | acc_norm |" in table and "not requested |" in table
