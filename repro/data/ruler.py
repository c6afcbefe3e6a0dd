"""RULER's 13 synthetic long-context tasks (Hsieh et al. 2024), generated offline for any tokenizer.

Every sample is filled to a target token count *in the evaluated model's own tokenizer*: the prompt
as the model reads it (model template, instruction, haystack, question, then the answer prefix the
model continues from) plus the task's generation budget fits the length. Protocol, templates and
scoring: reference evaluations.md §1.

How a sample is fitted (bounded everywhere; upstream's retry loops could spin forever):
  1. the haystack material is tokenised once per tokenizer (essay words, QA documents), or its cost
     per unit measured once (noise lines, needle lines, word lists);
  2. a binary search over the haystack size finds the largest size whose prompt fits, on a trial
     sample (QA: per sample, from the documents' cached token counts);
  3. each sample is built at that size and encoded once (the ids the model reads); if its random
     draw overflows, a binary search (at most `MAX_PROBES` re-draws) finds its own largest size.

Word pools are upstream's: `wonderwords` (pinned 3.0.1) adjective-noun pairs for NIAH keys, its
8,166 single nouns/adjectives/verbs for CWE. Formats follow upstream `main` (PR #108): VT's noise
lines joined by newlines and "assigned" spelled right; FWE's vocabulary (length - 50) // 50 words.
Deviations, all for offline use or bounded work: CWE beyond the single-word pool (~64k tokens) uses
adjective-noun pairs where upstream reads its Git-LFS english_words.json; a regex sentence splitter
stands in for NLTK's punkt; random draws use each sample's own seeded generator (upstream re-seeds
some shuffles with the fixed seed); FWE's haystack size is found by binary search (upstream: a
linear search in steps of length/32, so ours fills the length more exactly).
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import re
import string
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from repro.errors import UserError


class Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


# ---- task table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    family: str  # niah | vt | cwe | fwe | qa
    gen_tokens: int  # RULER's tokens_to_generate
    metric: str  # all | part
    params: dict[str, Any] = field(default_factory=dict)


def _niah(haystack: str, key: str = "words", value: str = "numbers", k: int = 1, v: int = 1, q: int = 1):
    return TaskSpec("niah", 128, "all", {"haystack": haystack, "key": key, "value": value, "k": k, "v": v, "q": q})


TASKS: dict[str, TaskSpec] = {
    "niah_single_1": _niah("noise"),
    "niah_single_2": _niah("essay"),
    "niah_single_3": _niah("essay", value="uuids"),
    "niah_multikey_1": _niah("essay", k=4),
    "niah_multikey_2": _niah("needle"),
    "niah_multikey_3": _niah("needle", key="uuids", value="uuids"),
    "niah_multivalue": _niah("essay", v=4),
    "niah_multiquery": _niah("essay", q=4),
    "vt": TaskSpec("vt", 30, "all", {"chains": 1, "hops": 4}),
    "cwe": TaskSpec("cwe", 120, "all", {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10}),
    "fwe": TaskSpec("fwe", 50, "all", {"alpha": 2.0}),
    "qa_1": TaskSpec("qa", 32, "part", {"dataset": "squad"}),
    "qa_2": TaskSpec("qa", 32, "part", {"dataset": "hotpotqa"}),
}
GROUPS = {
    "all": list(TASKS),
    "niah": [t for t in TASKS if t.startswith("niah")],
    "qa": ["qa_1", "qa_2"],
    "synthetic": [t for t in TASKS if not t.startswith("qa")],
}

# ---- templates (RULER's strings; base-model prompts end with the answer prefix) -----------------

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
NIAH_TEMPLATE = (
    "Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_v} afterwards.\n{context}\n"
    "What are all the special magic {type_v} for {query} mentioned in the provided text?"
)
NIAH_PREFIX = " The special magic {type_v} for {query} mentioned in the provided text are"
VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
    "are assigned the value {query}, they are: "
)
CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\n"
    "Question: What are the 10 most common words in the above list?"
)
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most "
    "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please "
    "ignore the dots '....'. What are the three most frequently appeared words in the above coded text?"
)
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
QA_INSTRUCTION = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other words."
)
QA_TEMPLATE = (
    QA_INSTRUCTION
    + "\n\nThe following are given documents.\n\n{context}\n\n"
    + QA_INSTRUCTION
    + "\n\nQuestion: {query}"
)
QA_PREFIX = " Answer:"
DEPTHS = [round(100 * i / 39) for i in range(40)]  # 40 evenly spaced needle depths, percent


def _wonderwords(name: str) -> list[str]:
    """One of the word lists bundled with the pinned `wonderwords` package (read as upstream reads
    them: one entry per line, trailing whitespace removed)."""
    from importlib.resources import files

    text = files("wonderwords.assets").joinpath(name).read_text(encoding="utf-8")
    return [w.rstrip() for w in text.splitlines() if w.strip()]


@functools.cache
def adjectives() -> list[str]:
    return sorted(set(_wonderwords("adjectivelist.txt")))


@functools.cache
def nouns() -> list[str]:
    return sorted(set(_wonderwords("nounlist.txt")))


def random_key_word(rng: random.Random) -> str:
    """A NIAH word key: an adjective-noun pair, as RULER draws it from wonderwords' lists. Upstream
    materialises all ~6.2M pairs and picks one; picking the adjective and the noun independently is
    the same uniform draw without the 400 MB list."""
    return f"{rng.choice(adjectives())}-{rng.choice(nouns())}"


@functools.cache
def cwe_words(seed: int = 42) -> list[str]:
    """CWE's pool as upstream builds it: wonderwords' nouns + adjectives + verbs, deduplicated,
    sorted and shuffled with the seed (8,166 single words in wonderwords 3.0.1)."""
    singles = sorted(
        set(_wonderwords("nounlist.txt") + _wonderwords("adjectivelist.txt") + _wonderwords("verblist.txt"))
    )
    random.Random(seed).shuffle(singles)
    return singles


@functools.cache
def cwe_words_beyond(seed: int = 42) -> list[str]:
    """The pool when a list needs more distinct words than `cwe_words` holds (~64k tokens):
    upstream reads its Git-LFS english_words.json; we use adjective-noun pairs."""
    pairs = [f"{a}-{n}" for a in adjectives()[:64] for n in nouns()[:512]]
    random.Random(seed).shuffle(pairs)
    return pairs


def random_value(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "words":
        return random_key_word(rng)
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def split_sentences(text: str) -> list[str]:
    """A regex stand-in for NLTK's sent_tokenize: split after . ! ? followed by space."""
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


# ---- data sources -------------------------------------------------------------------------------

HUB_IDS = {"essays": "baber/paul_graham_essays", "squad": "rajpurkar/squad_v2", "hotpotqa": "hotpotqa/hotpot_qa"}
FOLDERS = {"essays": "paul_graham_essays", "squad": "squad_v2", "hotpotqa": "hotpotqa"}


@dataclass
class QAData:
    qas: list[dict[str, Any]]  # {"query", "outputs", "gold": [doc idx], "more": [doc idx]}
    docs: list[str]


class Sources:
    """Essays, SQuAD v2 dev and HotpotQA dev: explicit paths, then `data_dir/<folder>` (the command's
    --data-dir), then the Hugging Face hub (for users online). Each is read once."""

    def __init__(self, data_dir: Path | None = None, paths: dict[str, Path | None] | None = None):
        self.data_dir = data_dir
        self.paths = {k: v for k, v in (paths or {}).items() if v is not None}
        self._cache: dict[str, Any] = {}

    def _local(self, name: str) -> Path | None:
        if name in self.paths:
            path = Path(self.paths[name]).expanduser()
            if not path.exists():
                raise UserError(f"{name} path {path} does not exist; give the file or folder holding {name}.")
            return path
        if self.data_dir is not None and (self.data_dir / FOLDERS[name]).exists():
            return self.data_dir / FOLDERS[name]
        return None

    def _hub(self, name: str, **kwargs: Any) -> Any:
        fix = f"pass --data-dir DIR holding DIR/{FOLDERS[name]}/ (or --{name} PATH)"
        if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
            raise UserError(f"dataset {name} ({HUB_IDS[name]}) has no local copy and the hub is offline; {fix}.")
        try:
            import datasets

            return datasets.load_dataset(HUB_IDS[name], **kwargs)
        except Exception as e:  # network, missing package, renamed dataset: all one answer
            raise UserError(f"dataset {name} ({HUB_IDS[name]}) could not be loaded ({type(e).__name__}); {fix}.") from e

    def essay_words(self) -> list[str]:
        if "essays" not in self._cache:
            path = self._local("essays")
            if path is None:
                texts = list(self._hub("essays", split="train")["text"])
            else:
                files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
                texts = [f.read_text(errors="replace") for f in files]
            words = re.sub(r"\s+", " ", " ".join(texts)).strip().split(" ")
            if len(words) < 50:
                raise UserError(
                    f"the essay haystack at {path} has only {len(words)} words; point --essays at the essays."
                )
            self._cache["essays"] = words
        return self._cache["essays"]

    def qa(self, name: str) -> QAData:
        if name not in self._cache:
            path = self._local(name)
            if path is not None and path.is_dir():
                files = sorted(path.glob("*.json"))
                if not files:
                    raise UserError(f"{path} holds no .json file; put the {name} dev JSON there.")
                path = files[0]
            if name == "squad":
                raw = json.loads(path.read_text()) if path else _squad_from_hub(self._hub("squad", split="validation"))
                self._cache[name] = read_squad(raw)
            else:
                raw = (
                    json.loads(path.read_text())
                    if path
                    else list(self._hub("hotpotqa", name="distractor", split="validation"))
                )
                self._cache[name] = read_hotpotqa(raw)
        return self._cache[name]


def _squad_from_hub(ds: Any) -> dict[str, Any]:
    """The hub's flat SQuAD rows back into the dev-v2.0.json layout."""
    articles: dict[str, dict[str, list]] = {}
    for r in ds:
        paras = articles.setdefault(r["title"], {})
        qa = {"question": r["question"], "answers": [{"text": t} for t in r["answers"]["text"]]}
        qa["is_impossible"] = not r["answers"]["text"]
        paras.setdefault(r["context"], []).append(qa)
    data = [{"title": t, "paragraphs": [{"context": c, "qas": q} for c, q in p.items()]} for t, p in articles.items()]
    return {"data": data}


def read_squad(raw: dict[str, Any]) -> QAData:
    """Answerable questions only; documents are the unique paragraphs (sorted, as upstream)."""
    docs = sorted({p["context"] for a in raw["data"] for p in a["paragraphs"]})
    index = {d: i for i, d in enumerate(docs)}
    qas = []
    for article in raw["data"]:
        same = [index[p["context"]] for p in article["paragraphs"]]
        for p in article["paragraphs"]:
            gold = index[p["context"]]
            for q in p["qas"]:
                if not q.get("is_impossible") and q["answers"]:
                    answers = [a["text"] for a in q["answers"]]
                    qas.append(
                        {
                            "query": q["question"],
                            "outputs": answers,
                            "gold": [gold],
                            "more": [i for i in same if i != gold],
                        }
                    )
    if not qas:
        raise UserError("the SQuAD file has no answerable questions; is it SQuAD v2 dev JSON?")
    return QAData(qas, docs)


def read_hotpotqa(raw: list[dict[str, Any]]) -> QAData:
    """Each question's 10 given paragraphs (title + sentences) are its gold documents. Reads the
    original layout ([title, sentences] pairs) and the Hugging Face one ({title: [...], sentences: [...]})."""

    def paragraphs(ctx: Any) -> list[str]:
        pairs = zip(ctx["title"], ctx["sentences"], strict=True) if isinstance(ctx, dict) else ctx
        return [f"{t}\n{''.join(s)}" for t, s in pairs]

    per_q = [paragraphs(d["context"]) for d in raw]
    docs = sorted({p for ps in per_q for p in ps})
    index = {d: i for i, d in enumerate(docs)}
    qas = [
        {"query": d["question"], "outputs": [d["answer"]], "gold": [index[p] for p in ps], "more": []}
        for d, ps in zip(raw, per_q, strict=True)
    ]
    if not qas:
        raise UserError("the HotpotQA file holds no questions.")
    return QAData(qas, docs)


# ---- generation ---------------------------------------------------------------------------------

MAX_PROBES = 24  # per sample: re-draws while searching its largest fitting haystack


@dataclass
class Sample:
    task: str
    length: int  # the target: prompt tokens + generation budget <= length
    index: int
    input: str  # the task's prompt, without model template or answer prefix
    answer_prefix: str  # appended after the model template: the model continues from it
    outputs: list[str]  # gold strings
    prompt_ids: list[int]  # encode(wrap(input) + answer_prefix), what the model reads
    haystack_size: int  # lines, words or documents
    gen_tokens: int
    prompt: str = ""  # wrap(input) + answer_prefix: the text whose tokens are prompt_ids

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids) + self.gen_tokens


Built = tuple[str, str, list[str]]  # (input, answer_prefix, outputs)


def _seed(*parts: Any) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def _zeta(alpha: float) -> float:
    return math.pi**2 / 6 if alpha == 2.0 else sum(k**-alpha for k in range(1, 200_000))


def identity(text: str) -> str:
    return text


class Generator:
    """Samples of every task at any length, for one tokenizer. Deterministic given `seed`.

    `wrap` is the model template (upstream's `model_template_type`): it turns the task's text into
    what the model reads (the identity for `base`, the model's chat template with the text as the
    user's turn for `chat`); the answer prefix follows it. Every length budget counts the prompt
    as the model reads it, template tokens included.
    """

    def __init__(
        self, tokenizer: Encoder, sources: Sources | None = None, seed: int = 42, wrap: Callable[[str], str] = identity
    ):
        self.tok = tokenizer
        self.sources = sources or Sources()
        self.seed = seed
        self.wrap = wrap
        self._sentences: dict[int, list[str]] = {}
        self._doc_costs: dict[str, list[int]] = {}
        self._fits: dict[tuple[str, int], tuple[int, float] | None] = {}

    def count(self, text: str) -> int:
        return len(self.tok.encode(text))

    # -- builders: (haystack size, rng) -> (input, answer prefix, gold) ----------------------------

    def _essay(self, n: int) -> list[str]:
        if n not in self._sentences:  # the first n essay words (cyclic), split into sentences once
            words = self.sources.essay_words()
            text = " ".join(words[i % len(words)] for i in range(n))
            self._sentences = {n: split_sentences(text)}  # keep one: the search visits each n once
        return self._sentences[n]

    def _niah(self, p: dict[str, Any], n: int, rng: random.Random) -> Built:
        k = max(p["k"], p["q"])
        keys, values, needles = [], [], []
        for _ in range(k):
            keys.append(random_value(p["key"], rng))
            values.append([random_value(p["value"], rng) for _ in range(p["v"])])
            needles += [NEEDLE.format(type_v=p["value"], key=keys[-1], value=v) for v in values[-1]]
        rng.shuffle(needles)
        if p["haystack"] == "essay":
            sents = self._essay(n)
            cuts = sorted(int(len(sents) * d / 100) for d in rng.sample(DEPTHS, len(needles)))
            pieces, last = [], 0
            for cut, needle in zip(cuts, needles, strict=True):
                pieces += [*sents[last:cut], needle]
                last = cut
            context = " ".join(pieces + sents[last:])
        else:
            if p["haystack"] == "noise":
                lines = [NOISE] * n
            else:  # every line a distractor needle with a fresh key and value
                lines = [
                    NEEDLE.format(
                        type_v=p["value"], key=random_value(p["key"], rng), value=random_value(p["value"], rng)
                    )
                    for _ in range(n)
                ]
            for at, needle in zip(sorted(rng.sample(range(n + 1), len(needles)), reverse=True), needles, strict=True):
                lines.insert(at, needle)
            context = "\n".join(lines)
        asked = rng.sample(range(k), p["q"])
        queries = [keys[i] for i in asked]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
        template, prefix, type_v = NIAH_TEMPLATE, NIAH_PREFIX, p["value"]
        if p["q"] * p["v"] == 1:  # upstream's edit into the singular
            for old, new in (("Some", "A"), ("are all", "is"), ("are", "is")):
                template, prefix = template.replace(old, new), prefix.replace(old, new)
            type_v = type_v[:-1]
        gold = [v for i in asked for v in values[i]]
        return (
            template.format(type_v=type_v, context=context, query=query),
            prefix.format(type_v=type_v, query=query),
            gold,
        )

    def _vt_text(self, p: dict[str, Any], n: int, rng: random.Random, letters: int) -> Built:
        """Upstream's current format: noise lines joined by newlines, the chain's statements inserted
        at sorted random line positions (in order), the gold answer every name of the chain."""
        hops = p["hops"]
        names: list[str] = []
        while len(names) < hops + 1:
            name = "".join(rng.choices(string.ascii_uppercase, k=letters))
            if name not in names:
                names.append(name)
        value = rng.randint(10000, 99999)
        chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(hops)]
        lines = [NOISE] * n
        for j, at in enumerate(sorted(rng.sample(range(n), len(chain)))):
            lines.insert(at + j, chain[j])
        context = "\n".join(lines).replace(". \n", ".\n")
        return VT_TEMPLATE.format(context=context, query=value), VT_PREFIX.format(num_v=hops + 1, query=value), names

    def _vt_demo_lines(self, p: dict[str, Any], length: int) -> int:
        """Noise lines of VT's one demonstration: upstream fits it to 500 tokens (less below 4k here,
        so that short contexts keep room for the task)."""
        key = ("vt-demo", length)
        if key not in self._fits:
            budget = min(500, length // 8)
            n = p["hops"] + 1
            while self.count("".join(self._vt_text(p, n + 5, random.Random(0), 3)[:2])) <= budget:
                n += 5
            self._fits[key] = (n, 0.0)
        return self._fits[key][0]

    def _vt(self, p: dict[str, Any], n: int, rng: random.Random, length: int) -> Built:
        # The demonstration (3-letter names) gets fresh names and value for every sample, as upstream's
        # randomize_icl does; it goes before the task text, answered, followed by a blank line.
        d_in, d_prefix, d_gold = self._vt_text(p, self._vt_demo_lines(p, length), rng, letters=3)
        inp, prefix, gold = self._vt_text(p, n, rng, letters=5)
        return d_in + d_prefix + " " + " ".join(d_gold) + "\n\n" + inp, prefix, gold

    def _cwe(self, p: dict[str, Any], n: int, rng: random.Random, length: int) -> Built:
        num_cw = p["num_cw"]
        short = length < 4096  # upstream: a lighter demo and fewer repeats below 4k
        reps, demo = ((6, 1), (20, 3, 1)) if short else ((p["freq_cw"], p["freq_ucw"]), (40, 10, 3))

        def example(num: int, common_reps: int, rare_reps: int) -> tuple[str, list[str]]:
            pool = cwe_words() if num <= len(cwe_words()) else cwe_words_beyond()
            words = rng.sample(pool, min(num, len(pool)))
            common = words[:num_cw]
            listed = common * common_reps + words[num_cw:] * rare_reps
            rng.shuffle(listed)
            return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), common

        d_ctx, d_gold = example(*demo)
        d_answer = " ".join(f"{i + 1}. {w}" for i, w in enumerate(d_gold))
        ctx, gold = example(n, *reps)
        inp = CWE_TEMPLATE.format(context=d_ctx) + CWE_PREFIX + " " + d_answer + "\n" + CWE_TEMPLATE.format(context=ctx)
        return inp, CWE_PREFIX, gold

    def _fwe(self, p: dict[str, Any], n: int, rng: random.Random, length: int) -> Built:
        size = max(8, (length - TASKS["fwe"].gen_tokens) // 50)  # upstream: (max_seq_length - tokens_to_generate) // 50
        vocab = ["".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(size)]
        while len(set(vocab)) < size:
            vocab.append("".join(rng.choices(string.ascii_lowercase, k=6)))
        ranked = sorted(set(vocab))
        rng.shuffle(ranked)
        ranked[0] = "..."  # the most frequent "word" is noise; the answer is ranks 2-4
        words = [w for k, w in enumerate(ranked, 1) for _ in range(int(n * k ** -p["alpha"] / _zeta(p["alpha"])))]
        rng.shuffle(words)
        return FWE_TEMPLATE.format(context=" ".join(words)), FWE_PREFIX, ranked[1:4]

    def _qa_candidates(self, dataset: str, index: int, rng: random.Random) -> tuple[dict[str, Any], list[int]]:
        data = self.sources.qa(dataset)
        qa = data.qas[index % len(data.qas)]  # sample i asks question i, in file order (as upstream)
        taken = set(qa["gold"]) | set(qa["more"])
        others = [i for i in range(len(data.docs)) if i not in taken]
        rng.shuffle(others)
        return qa, list(qa["gold"]) + rng.sample(qa["more"], len(qa["more"])) + others

    def _qa(self, p: dict[str, Any], n: int, rng: random.Random, index: int) -> Built:
        docs = self.sources.qa(p["dataset"]).docs
        qa, cands = self._qa_candidates(p["dataset"], index, rng)
        chosen = cands[: max(n, len(qa["gold"]))]
        rng.shuffle(chosen)
        context = "\n\n".join(f"Document {i + 1}:\n{docs[d]}" for i, d in enumerate(chosen))
        return QA_TEMPLATE.format(context=context, query=qa["query"]), QA_PREFIX, list(qa["outputs"])

    def builder(self, task: str, length: int, index: int) -> Callable[[int, random.Random], Built]:
        spec = TASKS[task]
        p = spec.params
        return {
            "niah": lambda n, rng: self._niah(p, n, rng),
            "vt": lambda n, rng: self._vt(p, n, rng, length),
            "cwe": lambda n, rng: self._cwe(p, n, rng, length),
            "fwe": lambda n, rng: self._fwe(p, n, rng, length),
            "qa": lambda n, rng: self._qa(p, n, rng, index),
        }[spec.family]

    @staticmethod
    def min_size(task: str) -> int:
        spec = TASKS[task]
        if spec.family == "niah":
            p = spec.params
            return max(p["k"], p["q"]) * p["v"] if p["haystack"] == "essay" else 1
        return {"vt": 5, "cwe": 10, "fwe": 64, "qa": 1}[spec.family]

    # -- fitting ---------------------------------------------------------------------------------

    def fit(self, task: str, length: int) -> tuple[int, float] | None:
        """(largest haystack size whose trial prompt fits, tokens per unit), or None when even the
        smallest haystack overflows. Binary search, about log2(length) encodes, once per (task, length)."""
        if (task, length) in self._fits:
            return self._fits[(task, length)]
        budget = length - TASKS[task].gen_tokens
        build, trial = self.builder(task, length, 0), _seed(self.seed, task, length, "trial")

        def cost(n: int) -> int:
            inp, prefix, _ = build(n, random.Random(trial))
            return self.count(self.wrap(inp) + prefix)

        lo = self.min_size(task)
        result: tuple[int, float] | None = None
        if cost(lo) <= budget:
            step = max(16, lo)
            per_unit = max((cost(lo + step) - cost(lo)) / step, 1e-3)
            hi = min(budget + 1, lo + int(1.3 * (budget - cost(lo)) / per_unit) + step)  # every unit costs >= 1 token
            while hi <= budget and cost(hi) <= budget:  # the estimate was short: double (bounded by the cap)
                lo, hi = hi, min(budget + 1, 2 * hi)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid)
            result = (lo, per_unit)
        self._fits[(task, length)] = result
        return result

    def _qa_guess(self, task: str, length: int, index: int, rng_seed: int) -> tuple[int, float]:
        """QA fits each sample from its documents' token counts (each document encoded once)."""
        dataset = TASKS[task].params["dataset"]
        data = self.sources.qa(dataset)
        if dataset not in self._doc_costs:
            self._doc_costs[dataset] = [self.count(d) for d in data.docs]
        costs = self._doc_costs[dataset]
        qa, cands = self._qa_candidates(dataset, index, random.Random(rng_seed))
        base = self.count(self.wrap(QA_TEMPLATE.format(context="", query=qa["query"])) + QA_PREFIX)
        per_doc_overhead = self.count("\n\nDocument 100:\n")
        room, n = length - TASKS[task].gen_tokens - base, 0
        for d in cands:
            room -= costs[d] + per_doc_overhead
            if room < 0:
                break
            n += 1
        return max(n, len(qa["gold"])), sum(costs) / len(costs) + per_doc_overhead

    def sample(self, task: str, length: int, index: int) -> Sample | None:
        """One sample, or None when it cannot be made to fit (the caller reports it)."""
        spec = TASKS[task]
        seed = _seed(self.seed, task, length, index)
        if spec.family == "qa":
            n, per_unit = self._qa_guess(task, length, index, seed)
        else:
            fitted = self.fit(task, length)
            if fitted is None:
                return None
            n, per_unit = fitted
        build = self.builder(task, length, index)
        floor = self.min_size(task)
        if spec.family == "qa":
            qas = self.sources.qa(spec.params["dataset"]).qas
            floor = len(qas[index % len(qas)]["gold"])

        def attempt(size: int) -> Sample | None:
            inp, prefix, gold = build(size, random.Random(seed))
            prompt = self.wrap(inp) + prefix
            ids = self.tok.encode(prompt)
            if len(ids) + spec.gen_tokens > length:
                return None
            return Sample(task, length, index, inp, prefix, gold, ids, size, spec.gen_tokens, prompt)

        best = attempt(n)
        if best is not None or n <= floor:
            return best
        # This draw overflows at the trial's size: binary search this sample's own largest fitting size
        # (each probe rebuilds it from the same seed), so every sample fills its length, bounded in probes.
        lo, hi = floor, n
        best = attempt(lo)
        if best is None:
            return None
        for _ in range(MAX_PROBES):
            if hi - lo <= 1:
                break
            mid = (lo + hi) // 2
            got = attempt(mid)
            lo, hi, best = (mid, hi, got) if got is not None else (lo, mid, best)
        return best

    def samples(self, task: str, length: int, num: int) -> list[Sample]:
        return [s for i in range(num) if (s := self.sample(task, length, i)) is not None]


def resolve_tasks(spec: str | Sequence[str]) -> list[str]:
    """`all`, `niah`, `qa`, `synthetic`, task names, or a comma list of them (order kept, no repeats)."""
    import difflib

    parts = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    out: list[str] = []
    for part in parts or ["all"]:
        names = GROUPS.get(part) or ([part] if part in TASKS else None)
        if names is None:
            close = difflib.get_close_matches(part, [*GROUPS, *TASKS], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"unknown RULER task '{part}'{hint}; choose from {', '.join([*GROUPS, *TASKS])}.")
        out += [n for n in names if n not in out]
    return out
