"""RULER's raw material: upstream's word pools and the essay, SQuAD and HotpotQA sources.

Word pools are upstream's (NVIDIA/RULER `main`, reference evaluations.md §1): `wonderwords` (pinned
3.0.1) adjective-noun pairs for NIAH keys, its 8,166 single nouns/adjectives/verbs for CWE, drawn with
the same calls so that a seeded stream of draws picks the same words as upstream's scripts.
"""

from __future__ import annotations

import bisect
import functools
import json
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro.errors import UserError


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


class KeyWords(Sequence[str]):
    """Upstream's NIAH word keys, `sorted(set(f"{adj}-{noun}"))` (6,171,620 strings), indexed without
    building the ~400 MB list, so `random.choice(KEY_WORDS)` draws exactly upstream's word.

    The sorted list is a run of per-adjective blocks (nouns in order), adjectives ordered by
    `adj + "-"`, except where one adjective is another's prefix up to a hyphen ("blue", "blue-eyed"):
    such a family interleaves, so its few thousand strings are sorted explicitly."""

    def __init__(self) -> None:
        ordered = sorted(adjectives(), key=lambda a: a + "-")
        families: list[list[str]] = []
        for a in ordered:
            if families and (a + "-").startswith(families[-1][0] + "-"):
                families[-1].append(a)
            else:
                families.append([a])
        self._nouns = nouns()
        self._segments: list[str | list[str]] = [  # an adjective (a block of nouns) or a family's sorted strings
            fam[0] if len(fam) == 1 else sorted({f"{a}-{n}" for a in fam for n in self._nouns}) for fam in families
        ]
        sizes = [len(self._nouns) if isinstance(s, str) else len(s) for s in self._segments]
        self._starts = [0]
        for size in sizes:
            self._starts.append(self._starts[-1] + size)

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = bisect.bisect_right(self._starts, i) - 1
        seg, off = self._segments[k], i - self._starts[k]
        return f"{seg}-{self._nouns[off]}" if isinstance(seg, str) else seg[off]


@functools.cache
def key_words() -> KeyWords:
    return KeyWords()


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


def split_sentences(text: str) -> list[str]:
    """A regex stand-in for NLTK's sent_tokenize: split after . ! ? followed by space."""
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


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

    def qa_path(self, name: str) -> Path | None:
        """The local JSON of `squad` or `hotpotqa` (a folder's first .json), or None: the hub's then."""
        path = self._local(name)
        if path is not None and path.is_dir():
            files = sorted(path.glob("*.json"))
            if not files:
                raise UserError(f"{path} holds no .json file; put the {name} dev JSON there.")
            path = files[0]
        return path

    def qa(self, name: str) -> QAData:
        if name not in self._cache:
            path = self.qa_path(name)
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
