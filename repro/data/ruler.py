"""RULER's 13 synthetic long-context tasks (Hsieh et al. 2024), generated offline for any tokenizer.

By default (`fill="upstream"`) samples are built as NVIDIA/RULER's own scripts build them
(`scripts/data/synthetic/*.py` at `main`, reference evaluations.md §1): one stream of draws per task and
length from Python's `random` and numpy's legacy generator, both seeded with the seed (upstream: 42),
drawn in upstream's order: a size estimate, upstream's binary search for the haystack size on sample
0, then each sample in turn, dropping upstream's step (QA 10 documents, CWE 10 words, noise/needle 25
lines, essay 500 words, VT 10 lines; 5 lines below 4k) after a draw that overflows; FWE's linear
search in steps of length/32. Upstream's fixed-seed shuffles are kept: a QA sample's documents,
NIAH's needle order, CWE's word list and FWE's words are shuffled with `random.Random(seed)`, so for a
given document count the gold document always lands in the same slot. The model template wraps the
task template as upstream's `model_template_type` does (CWE's demonstration is a turn of its own;
NIAH's singular edit applies to the wrapped text). With the same tokenizer and data, the prompts are
upstream's token for token (tests/test_ruler_parity.py, fixtures generated with upstream's scripts).

`fill="exact"` (`--set fill=exact`) is ours: each sample draws from its own seeded generator and a
binary search finds its own largest haystack, so every sample fills its length (QA ~3,960 of 4,096
tokens with SmolLM2's tokenizer, where upstream's 10-document drop leaves about half at ~3,250).
Placement (the fixed-seed shuffles) is upstream's in both modes.

Deviations in both modes, for offline use or bounded work: a regex sentence splitter stands in for
NLTK's punkt (essay haystacks); CWE beyond the single-word pool (~64k tokens) uses adjective-noun pairs
where upstream reads its Git-LFS english_words.json; upstream's retry loops, which spin forever when
a sample cannot fit, give up after a bounded number of tries (the sample is reported as not fitting);
a QA task yields at most one sample per distinct question (upstream fails past the last question).
"""

from __future__ import annotations

import random
import string
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from repro.data.ruler_sources import FOLDERS as FOLDERS
from repro.data.ruler_sources import QAData as QAData
from repro.data.ruler_sources import Sources as Sources
from repro.data.ruler_sources import cwe_words as cwe_words
from repro.data.ruler_sources import cwe_words_beyond, key_words, split_sentences
from repro.data.ruler_tasks import (
    CWE_PREFIX,
    CWE_TEMPLATE,
    FWE_PREFIX,
    FWE_TEMPLATE,
    NEEDLE,
    NIAH_PREFIX,
    NIAH_TEMPLATE,
    NOISE,
    QA_PREFIX,
    QA_TEMPLATE,
    TASKS,
    VT_PREFIX,
    VT_TEMPLATE,
)
from repro.data.ruler_tasks import GROUPS as GROUPS
from repro.data.ruler_tasks import TaskSpec as TaskSpec
from repro.data.ruler_tasks import resolve_tasks as resolve_tasks
from repro.errors import UserError


class Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


# Upstream's 40 needle depths (percent): np.round(np.linspace(0, 100, 40)), as plain ints.
DEPTHS = [int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int)]
FILLS = ("upstream", "exact")
MAX_PROBES = 24  # exact fill: re-draws per sample while searching its largest fitting haystack
MAX_RETRIES = 64  # upstream fill: re-draws of one sample at the smallest size before giving up
SENTINEL = "\ue000"  # marks where the task text goes inside the model template


class Draws:
    """The two random streams upstream's scripts draw from, seeded alike: Python's `random`
    (`random.seed(seed)`) and numpy's legacy global state (`np.random.seed(seed)`)."""

    def __init__(self, seed: int):
        self.py = random.Random(seed)
        self.np = np.random.RandomState(seed % 2**32)


@dataclass
class Sample:
    task: str
    length: int  # the target: prompt tokens + generation budget <= length
    index: int
    input: str  # upstream's `input`: the prompt as the model reads it (model template included), no answer prefix
    answer_prefix: str  # the model continues from it
    outputs: list[str]  # gold strings
    prompt_ids: list[int]  # encode(input + answer_prefix), what the model reads
    haystack_size: int  # lines, words or documents
    gen_tokens: int
    prompt: str = ""  # input + answer_prefix: the text whose tokens are prompt_ids
    gold_at: list[int] = field(default_factory=list)  # QA: the gold documents' numbers (1-based)

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids) + self.gen_tokens


Built = tuple[str, str, list[str], list[int]]  # (input, answer_prefix, outputs, gold_at)


def _seed(*parts: Any) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def _zeta(alpha: float) -> float:
    return np.pi**2 / 6 if alpha == 2.0 else sum(k**-alpha for k in range(1, 200_000))


def identity(text: str) -> str:
    return text


def _singular(text: str) -> str:
    """Upstream's edit of a NIAH template with one query and one value (applied to the whole wrapped
    template, model template included, as upstream does)."""
    for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
        text = text.replace(old, new)
    return text


def _search(cost: Callable[[int], int], lower: int, upper: int, budget: int) -> int | None:
    """Upstream's binary search: the largest size in [lower, upper] whose cost fits, or None."""
    best = None
    while lower <= upper:
        mid = (lower + upper) // 2
        if cost(mid) <= budget:
            best, lower = mid, mid + 1
        else:
            upper = mid - 1
    return best


class Generator:
    """Samples of every task at any length, for one tokenizer. Deterministic given `seed`.

    `wrap` is the model template (upstream's `model_template_type`): it turns the task's text into
    what the model reads (the identity for `base`, the model's chat template with the text as the
    user's turn for `chat`); the answer prefix follows it. Every length budget counts the prompt
    as the model reads it, template tokens included. `fill`: "upstream" (default) or "exact".
    """

    def __init__(
        self,
        tokenizer: Encoder,
        sources: Sources | None = None,
        seed: int = 42,
        wrap: Callable[[str], str] = identity,
        fill: str = "upstream",
    ):
        if fill not in FILLS:
            raise UserError(f"fill={fill!r}: choose one of {', '.join(FILLS)}.")
        self.tok = tokenizer
        self.sources = sources or Sources()
        self.seed = seed
        self.fill = fill
        wrapped = wrap(SENTINEL)
        if wrapped.count(SENTINEL) != 1:
            raise ValueError("the model template must hold the task text exactly once")
        self.head, self.tail = wrapped.split(SENTINEL)  # upstream's model template around {task_template}
        self._sentences: dict[int, list[str]] = {}
        self._trials: dict[tuple[str, int], int | None] = {}
        self._demos: dict[int, str] = {}

    def count(self, text: str) -> int:
        return len(self.tok.encode(text))

    def wrap(self, text: str) -> str:
        return self.head + text + self.tail

    def _random(self, kind: str, R: Draws) -> str:
        if kind == "numbers":
            return str(R.py.randint(1_000_000, 9_999_999))
        if kind == "words":
            return R.py.choice(key_words())
        return str(uuid.UUID(int=R.py.getrandbits(128), version=4))

    # -- builders: (haystack size, draws) -> (input, answer prefix, gold, gold_at) ------------------

    def _essay(self, n: int) -> list[str]:
        if n not in self._sentences:  # the first n essay words (cyclic), split into sentences once
            words = self.sources.essay_words()
            text = " ".join(words[i % len(words)] for i in range(n))
            self._sentences = {n: split_sentences(text)}  # keep one: the search visits each n once
        return self._sentences[n]

    def _niah(self, p: dict[str, Any], n: int, R: Draws) -> Built:
        k = max(p["k"], p["q"])
        keys, values, needles = [], [], []
        for _ in range(k):
            keys.append(self._random(p["key"], R))
            values.append([])
            for _ in range(p["v"]):
                values[-1].append(self._random(p["value"], R))
                needles.append(NEEDLE.format(type_v=p["value"], key=keys[-1], value=values[-1][-1]))
        random.Random(self.seed).shuffle(needles)
        if p["haystack"] == "essay":
            sents = self._essay(n)
            depths = R.py.sample(DEPTHS, len(needles))
            cuts = [0, *sorted(int(len(sents) * (d / 100)) for d in depths), len(sents)]
            pieces = []
            for i in range(1, len(cuts)):  # upstream keeps empty pieces (double spaces) where cuts meet
                pieces.append(" ".join(sents[cuts[i - 1] : cuts[i]]))
                if i - 1 < len(needles):
                    pieces.append(needles[i - 1])
            context = " ".join(pieces)
        else:
            if p["haystack"] == "noise":
                lines = [NOISE] * n
            else:  # every line a distractor needle with a fresh key and value
                lines = [
                    NEEDLE.format(type_v=p["value"], key=self._random(p["key"], R), value=self._random(p["value"], R))
                    for _ in range(n)
                ]
            for at, needle in zip(sorted(R.py.sample(range(n), len(needles)), reverse=True), needles, strict=True):
                lines.insert(at, needle)
            context = "\n".join(lines)
        asked = R.py.sample(range(k), p["q"])
        queries = [keys[i] for i in asked]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
        head, template, tail, prefix, type_v = self.head, NIAH_TEMPLATE, self.tail, NIAH_PREFIX, p["value"]
        if p["q"] * p["v"] == 1:
            head, template, tail, prefix, type_v = *map(_singular, (head, template, tail, prefix)), type_v[:-1]
        gold = [v for i in asked for v in values[i]]
        body = template.format(type_v=type_v, context=context, query=query)
        return head + body + tail, prefix.format(type_v=type_v, query=query), gold, []

    def _vt(self, p: dict[str, Any], n: int, R: Draws, demo: str | None = None, icl: bool = False) -> Built:
        """Upstream's variable tracking on the noise haystack: chains of 5-letter names (3 letters
        and value 12345 in the demonstration) at sorted random lines. `demo` (the answered
        demonstration) goes between the model template and the task, its names and value redrawn."""
        hops, chains = (min(10, p["hops"]) if icl else p["hops"]), p["chains"]
        letters, needed = (3 if icl else 5), (hops + 1) * chains
        names = ["".join(R.py.choices(string.ascii_uppercase, k=letters)) for _ in range(needed)]
        while len(set(names)) < needed:
            names.append("".join(R.py.choices(string.ascii_uppercase, k=letters)))
        links = []
        for c in range(chains):
            this = names[c * (hops + 1) : (c + 1) * (hops + 1)]
            value = "12345" if icl else str(R.np.randint(10000, 99999))
            links.append([f"VAR {this[0]} = {value}"] + [f"VAR {this[j + 1]} = VAR {this[j]} " for j in range(hops)])
        lines = [NOISE] * n
        for chain in links:
            for j, at in enumerate(sorted(R.py.sample(range(len(lines)), len(chain)))):
                lines.insert(at + j, chain[j])
        context = "\n".join(lines).replace(". \n", ".\n")
        query = links[0][0].split("=")[-1].strip()
        body = VT_TEMPLATE.format(context=context, query=query)
        prefix = VT_PREFIX.format(num_v=hops + 1, query=query)
        gold = names[: hops + 1]
        if icl:  # the demonstration is always built from the bare task template
            return body, prefix, gold, []
        if demo is not None:
            body = self._randomize_demo(demo, p["hops"], R) + "\n" + body
        return self.head + body + self.tail, prefix, gold, []

    @staticmethod
    def _randomize_demo(demo: str, hops: int, R: Draws) -> str:
        """Upstream's randomize_icl: fresh names (same lengths) and a fresh value for the demonstration."""
        for item in demo.strip().split()[-hops - 1 :]:
            demo = demo.replace(item, "".join(R.py.choices(string.ascii_uppercase, k=len(item))))
        return demo.replace("12345", str(R.np.randint(10000, 99999)))

    def _vt_demo(self, p: dict[str, Any], R: Draws) -> str:
        """VT's answered demonstration, found as upstream finds it: a sample of at most 500 tokens (no
        generation budget), haystack steps of 5 lines, drawn from the same stream as the task."""
        inc, budget = 5, 500

        def text(n: int) -> str:
            body, prefix, _, _ = self._vt(p, n, R, icl=True)
            return body + prefix

        per_line = self.count(text(inc)) / inc
        n = _search(lambda m: self.count(text(m)), inc, max(int(budget / per_line * 3), inc * 2), budget) or inc
        for _ in range(MAX_RETRIES + n // inc):
            body, prefix, gold, _ = self._vt(p, n, R, icl=True)
            if self.count(body + prefix) <= budget:
                break
            n = n - inc if n > inc else n
        # Where even 5 lines overflow (a byte-level tokenizer) upstream redraws forever; we keep the last.
        return body + prefix + " " + " ".join(gold) + "\n"

    def _cwe(self, p: dict[str, Any], n: int, R: Draws, length: int) -> Built:
        num_cw = p["num_cw"]

        def example(num: int, common_reps: int, rare_reps: int) -> tuple[str, list[str]]:
            pool = cwe_words(self.seed) if num <= len(cwe_words(self.seed)) else cwe_words_beyond(self.seed)
            words = R.py.sample(pool, num)
            common = words[:num_cw]
            listed = common * common_reps + words[num_cw:] * rare_reps
            random.Random(self.seed).shuffle(listed)  # upstream's fixed-seed shuffle
            return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), common

        if length < 4096:  # upstream: a lighter demonstration and fewer repeats below 4k
            d_ctx, d_gold = example(20, 3, 1)
            ctx, gold = example(n, 6, 1)
        else:
            d_ctx, d_gold = example(40, 10, 3)
            ctx, gold = example(n, p["freq_cw"], p["freq_ucw"])
        # The demonstration is a wrapped turn of its own, answered, as upstream formats it.
        demo = self.wrap(CWE_TEMPLATE.format(context=d_ctx)) + CWE_PREFIX + " "
        demo += " ".join(f"{i + 1}. {w}" for i, w in enumerate(d_gold))
        return demo + "\n" + self.wrap(CWE_TEMPLATE.format(context=ctx)), CWE_PREFIX, gold, []

    def _fwe_vocab(self, length: int, R: Draws) -> list[str]:
        size = max(4, (length - TASKS["fwe"].gen_tokens) // 50)  # upstream: (max_seq_length - tokens_to_generate) // 50
        vocab = ["".join(R.py.choices(string.ascii_lowercase, k=6)) for _ in range(size)]
        while len(set(vocab)) < size:
            vocab.append("".join(R.py.choices(string.ascii_lowercase, k=6)))
        ranked = sorted(set(vocab))
        random.Random(self.seed).shuffle(ranked)
        ranked[0] = "..."  # the most frequent "word" is noise; the answer is ranks 2-4
        return ranked

    def _fwe_text(self, p: dict[str, Any], n: int, vocab: list[str]) -> Built:
        counts = (n * (np.arange(1, len(vocab) + 1) ** -p["alpha"]) / _zeta(p["alpha"])).astype(int)
        words = [w for w, c in zip(vocab, counts, strict=True) for _ in range(c)]
        random.Random(self.seed).shuffle(words)
        return self.wrap(FWE_TEMPLATE.format(context=" ".join(words))), FWE_PREFIX, vocab[1:4], []

    def _qa(self, p: dict[str, Any], n: int, R: Draws, index: int) -> Built:
        """Upstream's documents: the question's gold paragraph(s), then the same article's others
        (SQuAD), then random others; shuffled with the fixed seed, so the gold slot depends only on n."""
        data = self.sources.qa(p["dataset"])
        qa = data.qas[index]
        gold, more = list(qa["gold"]), list(qa["more"])
        if n < len(data.docs):
            if n - len(gold) > len(more):
                taken = set(gold + more)
                others = [i for i in range(len(data.docs)) if i not in taken]
                chosen = gold + more + R.py.sample(others, max(0, n - len(gold) - len(more)))
            else:
                chosen = gold + R.py.sample(more, n - len(gold))
        else:  # upstream repeats the whole pool
            chosen = (list(range(len(data.docs))) * -(-n // len(data.docs)))[:n]
        order = list(range(len(chosen)))
        random.Random(self.seed).shuffle(order)  # the same permutation upstream's shuffle applies
        context = "\n\n".join(f"Document {i + 1}:\n{data.docs[chosen[j]]}" for i, j in enumerate(order))
        gold_at = [i + 1 for i, j in enumerate(order) if j < len(gold)]
        return (
            self.wrap(QA_TEMPLATE.format(context=context, query=qa["query"])),
            QA_PREFIX,
            list(qa["outputs"]),
            gold_at,
        )

    def builder(self, task: str, length: int, index: int, demo: str | None = None) -> Callable[[int, Draws], Built]:
        spec = TASKS[task]
        p = spec.params
        return {
            "niah": lambda n, R: self._niah(p, n, R),
            "vt": lambda n, R: self._vt(p, n, R, demo),
            "cwe": lambda n, R: self._cwe(p, n, R, length),
            "fwe": lambda n, R: self._fwe_text(p, n, self._fwe_vocab(length, R)),
            "qa": lambda n, R: self._qa(p, n, R, index),
        }[spec.family]

    @staticmethod
    def step(task: str, length: int) -> int:
        """Upstream's `incremental`: the haystack step of its search and of its drop after an overflow."""
        spec = TASKS[task]
        if spec.family == "niah":
            return 500 if spec.params["haystack"] == "essay" else (25 if length >= 4096 else 5)
        return {
            "vt": 10 if length >= 4096 else 5,
            "cwe": 10,
            "qa": 10,
            "fwe": max(1, (length - spec.gen_tokens) // 32),
        }[spec.family]

    def min_size(self, task: str, index: int = 0) -> int:
        spec = TASKS[task]
        p = spec.params
        if spec.family == "niah":
            return max(p["k"], p["q"]) * p["v"]
        if spec.family == "qa":
            return len(self.sources.qa(p["dataset"]).qas[index]["gold"])
        if spec.family == "vt":
            return (p["hops"] + 1) * p["chains"]  # every statement of the chains on its own line
        return p["num_cw"] if spec.family == "cwe" else 4  # FWE: the noise word and the three answers

    def max_samples(self, task: str) -> int | None:
        """QA: one sample per distinct question of the local copy; the other tasks are unbounded."""
        spec = TASKS[task]
        return len(self.sources.qa(spec.params["dataset"]).qas) if spec.family == "qa" else None

    def _sample(self, task: str, length: int, index: int, size: int, built: Built) -> Sample | None:
        inp, prefix, gold, gold_at = built
        ids = self.tok.encode(inp + prefix)
        spec = TASKS[task]
        if len(ids) + spec.gen_tokens > length:
            return None
        return Sample(task, length, index, inp, prefix, gold, ids, size, spec.gen_tokens, inp + prefix, gold_at)

    # -- upstream fill: one stream of draws per (task, length), in upstream's order -----------------

    def _upstream_size(self, task: str, length: int, R: Draws, demo: str | None) -> int:
        """Upstream's haystack size: an estimate from one draw, then its binary search on sample 0."""
        spec = TASKS[task]
        inc, build = self.step(task, length), self.builder(task, length, 0)
        extra = self.count(demo) if demo is not None else 0  # VT: the demonstration's tokens, counted apart

        def cost(n: int) -> int:
            inp, prefix, _, _ = build(n, R)
            return self.count(inp + prefix) + extra + spec.gen_tokens

        probe = 4096 if spec.family == "cwe" else inc
        inp, prefix, _, _ = build(probe, R)
        per_unit = self.count(inp + prefix) / probe
        upper = int(length // per_unit) * 2 if spec.family == "cwe" else int(length / per_unit * 3)
        return _search(cost, inc, max(upper, 2 * inc), length) or inc

    def _fwe_size(self, length: int, R: Draws) -> int:
        """Upstream's FWE search: from length/6 words up in steps of length/32 until the text reaches
        the budget, then one step back."""
        p, budget, inc = TASKS["fwe"].params, length - TASKS["fwe"].gen_tokens, self.step("fwe", length)
        vocab = self._fwe_vocab(length, R)
        n = budget // 6
        while self.count("".join(self._fwe_text(p, n, vocab)[:2])) < budget:
            n += inc
        return n - inc

    def _upstream(self, task: str, length: int) -> Iterator[Sample | None]:
        """Upstream's samples in order; None for one that cannot fit (upstream loops forever there)."""
        spec, R = TASKS[task], Draws(self.seed)
        inc, limit = self.step(task, length), self.max_samples(task)
        demo = self._vt_demo(spec.params, R) if spec.family == "vt" else None
        n = self._fwe_size(length, R) if spec.family == "fwe" else self._upstream_size(task, length, R, demo)
        index = 0
        while limit is None or index < limit:
            if spec.family == "fwe":  # a fresh vocabulary, then upstream's drop while it overflows
                vocab, used = self._fwe_vocab(length, R), n
                while (
                    used > inc
                    and self.count("".join(self._fwe_text(spec.params, used, vocab)[:2])) > length - spec.gen_tokens
                ):
                    used -= inc
                yield self._sample(task, length, index, used, self._fwe_text(spec.params, used, vocab))
            else:
                build, used, sample = self.builder(task, length, index, demo), n, None
                for _ in range(MAX_RETRIES + n // inc):
                    sample = self._sample(task, length, index, used, build(used, R))
                    if sample is not None:
                        break
                    # Upstream drops a step while above it, else redraws at the same size. A QA drop below the
                    # question's own gold documents (upstream: random.sample(-1), then a loop that never
                    # ends) stops at them; elsewhere upstream's drop stands (CWE may list 8 words).
                    floor = self.min_size(task, index) if spec.family == "qa" else 1
                    used = max(used - inc, floor) if used > inc else used
                yield sample
            index += 1

    # -- exact fill (ours): each sample's own draws and its own largest haystack ---------------------

    def _exact_demo(self) -> str:
        if not self._demos:
            self._demos[0] = self._vt_demo(TASKS["vt"].params, Draws(_seed(self.seed, "vt-demo")))
        return self._demos[0]

    def _exact(self, task: str, length: int, index: int) -> Sample | None:
        spec = TASKS[task]
        demo = self._exact_demo() if spec.family == "vt" else None
        if (task, length) not in self._trials:  # a starting guess: upstream's search on a trial draw
            trial = Draws(_seed(self.seed, task, length, "trial"))
            guess = (
                self._fwe_size(length, trial)
                if spec.family == "fwe"
                else self._upstream_size(task, length, trial, demo)
            )
            self._trials[(task, length)] = guess
        seed, build = _seed(self.seed, task, length, index), self.builder(task, length, index, demo)

        def attempt(size: int) -> Sample | None:
            return self._sample(task, length, index, size, build(size, Draws(seed)))

        lo = self.min_size(task, index)
        best = attempt(lo)
        if best is None:
            return None
        hi, step, probes = max(self._trials[(task, length)] or lo, lo + 1), 1, 0
        while probes < MAX_PROBES:  # grow until this draw overflows ...
            got, probes = attempt(hi), probes + 1
            if got is None:
                break
            lo, best, hi, step = hi, got, hi + step, 2 * step
        while hi - lo > 1 and probes < MAX_PROBES:  # ... then bisect between the last fit and the overflow
            mid = (lo + hi) // 2
            got, probes = attempt(mid), probes + 1
            lo, hi, best = (mid, hi, got) if got is not None else (lo, mid, best)
        return best

    # -- samples -----------------------------------------------------------------------------------

    def sample(self, task: str, length: int, index: int) -> Sample | None:
        """Sample `index`, or None when it cannot be made to fit or the task has no such item."""
        limit = self.max_samples(task)
        if limit is not None and index >= limit:
            return None
        if self.fill == "exact":
            return self._exact(task, length, index)
        for i, s in enumerate(self._upstream(task, length)):
            if i == index:
                return s
        return None

    def samples(self, task: str, length: int, num: int) -> list[Sample]:
        """The first `num` samples that fit (QA: at most one per distinct question)."""
        if self.fill == "exact":
            num = min(num, self.max_samples(task) or num)
            return [s for i in range(num) if (s := self._exact(task, length, i)) is not None]
        return [s for _, s in zip(range(num), self._upstream(task, length), strict=False) if s is not None]
