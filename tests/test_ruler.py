"""RULER: generated samples fit their length and hold their needles, the scorer, and a smoke run.

Fixtures (an essay folder, a SQuAD-format and a HotpotQA-format JSON) are written to tmp_path, so
nothing here needs /work/shared or the network.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from repro.data.ruler import GROUPS, TASKS, Generator, Sources, resolve_tasks
from repro.data.tokenizer import byte_tokenizer
from repro.errors import UserError
from repro.eval import ruler

ESSAY = (
    "The best way to get startup ideas is not to try to think of them. Look for problems, preferably "
    "problems you have yourself! Why do so many founders build things no one wants? Because they begin "
    "by trying to think of startup ideas. That m.o. is doubly dangerous. "
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ruler_data")
    essays = root / "paul_graham_essays"
    essays.mkdir()
    for i in range(3):
        (essays / f"essay{i}.txt").write_text(f"Essay number {i}. " + ESSAY * 40)
    articles = []
    for a in range(30):
        paragraphs = []
        for p in range(5):
            city = f"Town{a}x{p}"
            context = f"The river festival of article {a} paragraph {p} is held in {city} every spring. " * 3
            qas = [
                {"question": f"Where is the festival of article {a} paragraph {p} held?", "id": f"{a}-{p}",
                 "answers": [{"text": city, "answer_start": 0}, {"text": f"in {city}", "answer_start": 0}],
                 "is_impossible": False},
                {"question": "Unanswerable?", "id": f"{a}-{p}-x", "answers": [], "is_impossible": True},
            ]  # fmt: skip
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": f"Article{a}", "paragraphs": paragraphs})
    (root / "squad_v2").mkdir()
    (root / "squad_v2" / "dev-v2.0.json").write_text(json.dumps({"version": "v2.0", "data": articles}))
    hotpot = []
    for q in range(30):
        titles = [f"Page{q}-{k}" for k in range(10)]
        sentences = [
            [f"Page {q}-{k} says the capital of Land{q} is Capital{q}{k}. ", "Nothing else."] for k in range(10)
        ]
        hotpot.append({"question": f"What is the capital of Land{q} on page {q}-3?", "answer": f"Capital{q}3",
                       "type": "bridge", "level": "easy", "supporting_facts": {"title": [titles[3]], "sent_id": [0]},
                       "context": {"title": titles, "sentences": sentences}})  # fmt: skip
    (root / "hotpotqa").mkdir()
    (root / "hotpotqa" / "hotpot_dev_distractor_v1.json").write_text(json.dumps(hotpot))
    return root


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
        found = re.findall(r"One of the special magic \w+ for (\S+) is: (\S+)\.", prompt)
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


@pytest.mark.parametrize("task", list(TASKS))
def test_samples_fill_their_length_and_hold_their_needles(generator: Generator, task: str):
    length = 16384  # CWE's demonstration plus 300 listed words need ~10k bytes
    samples = generator.samples(task, length, 3)
    assert len(samples) == 3
    for s in samples:
        prompt = s.input + s.answer_prefix
        assert s.prompt_ids == byte_tokenizer().encode(prompt)
        assert s.n_tokens <= length  # prompt + generation budget within the target ...
        slack = 1100 if TASKS[task].family == "qa" else 300  # ... and short of it by at most about a unit
        assert s.n_tokens >= length - slack, (task, s.n_tokens)
        if TASKS[task].family in ("niah", "vt", "qa"):
            assert all(o in s.input for o in s.outputs)
        assert prompt.endswith(s.answer_prefix) and s.answer_prefix.strip()


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
    assert generator.fit("niah_single_2", 200) is None


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


@pytest.mark.parametrize("who, expected", [("oracle", 100.0), ("mute", 0.0)])
def test_oracle_scores_100_and_silence_scores_0(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, who: str, expected: float
):
    answers = _qa_answers(data_dir)
    cfg = ruler.RulerConfig("fake", who, [16384], list(TASKS), 2, 3)
    current = {"task": ""}
    original = Generator.samples

    def tracking(self: Generator, task: str, length: int, num: int) -> list:  # tell the oracle the task
        current["task"] = task
        return original(self, task, length, num)

    monkeypatch.setattr(Generator, "samples", tracking)
    model = FakeModel(lambda prompt: solve(prompt, current["task"], answers) if who == "oracle" else "")
    run_dir = ruler.run(cfg, tmp_path / "runs", Sources(data_dir), model=model)
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]
    scores = {r["split"]: r["value"] for r in rows if r["metric"] == "score"}
    assert set(TASKS) | {"mean", "qa_mean"} == set(scores)
    assert all(v == expected for v in scores.values()), scores
    assert {"config.yaml", "env.json", "predictions.jsonl", "rows.jsonl"} <= {p.name for p in run_dir.iterdir()}
    assert ruler.run(cfg, tmp_path / "runs", Sources(data_dir), model=model) == run_dir  # finished: a no-op


def test_context_beyond_the_model_is_refused(tmp_path: Path, data_dir: Path):
    cfg = ruler.RulerConfig("fake", "short", [4096], ["niah_single_1"], 1, 0)
    with pytest.raises(UserError, match="exceeds short's 128-token context"):
        ruler.run(cfg, tmp_path, Sources(data_dir), model=FakeModel(lambda p: "", max_context=128))
    assert not any(tmp_path.iterdir())  # nothing half-written


# ---- end to end on a tiny checkpoint ------------------------------------------------------------


def _app() -> typer.Typer:
    from repro.cli import user_errors

    app = typer.Typer()
    app.command()(user_errors(ruler.command))
    return app


def test_smoke_run_on_a_tiny_checkpoint(tmp_path: Path, data_dir: Path):
    import torch

    from repro.models.registry import build_model

    torch.manual_seed(0)
    ckpt = tmp_path / "gpt"
    build_model("gpt2", n_layer=1, n_head=2, n_embd=32, block_size=768, vocab_size=257).save(ckpt)
    byte_tokenizer().save(ckpt)
    common = ["--model", str(ckpt), "--samples", "1", "--out", str(tmp_path / "runs"), "--data-dir", str(data_dir)]
    common += ["--reports", str(tmp_path / "reports")]
    result = CliRunner().invoke(_app(), [*common, "--ctx", "640,768", "--tasks", "niah_single_1"])
    assert result.exit_code == 0, result.output
    report = tmp_path / "reports" / "ruler"
    table = (report / "table.md").read_text()
    assert (
        "| niah_single_1 | all | 1 |" in table
        and "| vt | all |  |" not in table
        and "| 640 | 768 |" in table
        and "paper Table 4: MM v2 small" in table
    )
    assert (report / "fig_score_vs_length.png").stat().st_size > 0
    refused = CliRunner().invoke(_app(), [*common, "--ctx", "1k", "--tasks", "niah_single_1"])
    assert refused.exit_code == 2 and "768-token context" in refused.output


@pytest.mark.skipif(not Path("/work/shared/data/squad_v2").is_dir(), reason="shared data copies absent")
def test_real_data_copies_load():
    sources = Sources(Path("/work/shared/data"))
    assert len(sources.qa("squad").qas) > 1000 and len(sources.qa("hotpotqa").qas) >= 100
    assert len(sources.essay_words()) > 50_000
