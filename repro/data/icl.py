"""In-context classification tasks and their prompts (LongICLBench's protocol, as used by MMv2).

Tasks: `banking77` (77 intents), `goemotions` (28 emotions; the first label of each multi-label
comment, as LongICLBench does), `tacred` (41 relations, `no_relation` dropped; LDC-licensed, so only
from a path the user gives) and `synthetic` (generated here, offline: pseudo-words mapped to labels
by a random rule that only the context reveals).

Where data comes from, first match wins: an explicit path; `data_dir/<name>/` (the command's
`--data-dir`); the Hugging Face hub (`PolyAI/banking77`, `google-research-datasets/go_emotions`).
Files: Banking77 `train.csv`/`test.csv` (`text,category`) and optional `categories.json`;
GoEmotions `train.tsv`/`test.tsv` (text, comma-separated ids, comment id) and `emotions.txt`;
TACRED `train.json`/`test.json` (the original LDC JSON: `token`, `subj_start`, ... `relation`).

Prompts (reference evaluations.md §3): an instruction line, then demonstrations in *rounds*: an
n-shot prompt holds n rounds, each holding one example of every class. Labels are the dataset's
names (`semantic`) or `class_00`, `class_01`, ... under a random permutation fixed by the seed
(`anonymous`). The sweep is 2 delimiters (newline / space between fields and examples) x 2 orders
(classes in a fixed order within each round, or shuffled) = 4 prompts.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from repro.data.tokenizer import hf_offline
from repro.errors import UserError

DATASETS = ("banking77", "goemotions", "tacred", "synthetic")
HUB_IDS = {"banking77": "PolyAI/banking77", "goemotions": "google-research-datasets/go_emotions"}
LABEL_KINDS = ("semantic", "anonymous")
DELIMITERS = {"newline": "\n", "space": " "}
ORDERS = ("shuffled", "ordered")
PROMPTS = tuple(f"{d}-{o}" for d in DELIMITERS for o in ORDERS)  # the 4-prompt sweep


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    subject: str = ""  # TACRED's entity pair, named in the label cue
    object: str = ""


@dataclass(frozen=True)
class Template:
    instruction: str
    input_cue: str
    label_cue: str  # may name {subject} and {object}


TEMPLATES = {
    "banking77": Template(
        "Given a customer service query, please predict the intent of the query. The predict answer "
        "must come from the demonstration examples with the exact format. The examples are as follows:",
        "service query",
        "intent category",
    ),
    "goemotions": Template(
        "Given a comment, please predict the emotion category of this comment. The predict answer must "
        "come from the demonstration examples with the exact format. The examples are as follows:",
        "comment",
        "emotion category",
    ),
    "tacred": Template(
        "Given a sentence and a pair of subject and object entities within the sentence, please predict "
        "the relation between the given entities. The examples are as follows:",
        "sentence",
        "the relation between {subject} and {object} is",
    ),
    "synthetic": Template("Label each word as the examples do.", "word", "label"),
}


@dataclass
class ICLTask:
    name: str
    template: Template
    label_names: list[str]  # semantic names, indexed by label id
    train: list[Example]
    test: list[Example]

    @property
    def n_classes(self) -> int:
        return len(self.label_names)


# ---- loading ------------------------------------------------------------------------------------


def load_task(name: str, path: str | Path | None = None, seed: int = 0, data_dir: str | Path | None = None) -> ICLTask:
    """A named task from `path`, `data_dir/<name>/`, or the hub (module docstring)."""
    if name not in DATASETS:
        raise UserError(f"dataset {name!r} is unknown; choose one of {', '.join(DATASETS)}.")
    if name == "synthetic":
        return synthetic_task(seed=seed)
    source = _local_source(name, path, data_dir)
    if name == "tacred":
        if source is None:
            raise UserError(
                "TACRED is licensed (LDC2018T24) and has no public copy; point at your train.json and "
                "test.json with --data-path DIR or --data-dir DIR (holding DIR/tacred/)."
            )
        return _tacred(source)
    if source is not None:
        return _banking77_local(source) if name == "banking77" else _goemotions_local(source)
    return _from_hub(name)


def _local_source(name: str, path: str | Path | None, data_dir: str | Path | None) -> Path | None:
    if path is not None:
        source = Path(path).expanduser()
        if not source.is_dir():
            raise UserError(f"--data-path {path} is not a directory; give the folder holding the {name} files.")
        return source
    if data_dir and (Path(data_dir) / name).is_dir():
        return Path(data_dir) / name
    return None


def _need(source: Path, name: str, files: Sequence[str]) -> None:
    missing = [f for f in files if not (source / f).is_file()]
    if missing:
        raise UserError(f"{source} lacks {', '.join(missing)}, which dataset {name} needs there.")


def _banking77_local(source: Path) -> ICLTask:
    _need(source, "banking77", ["train.csv", "test.csv"])
    splits = {}
    for split in ("train", "test"):
        with (source / f"{split}.csv").open(newline="") as f:
            splits[split] = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    names_file = source / "categories.json"
    if names_file.is_file():
        names = json.loads(names_file.read_text())
    else:  # the order labels first appear in train
        names = list(dict.fromkeys(c for _, c in splits["train"]))
    index = {n: i for i, n in enumerate(names)}
    train, test = ([Example(t, index[c]) for t, c in splits[s]] for s in ("train", "test"))
    return ICLTask("banking77", TEMPLATES["banking77"], names, train, test)


def _goemotions_local(source: Path) -> ICLTask:
    _need(source, "goemotions", ["train.tsv", "test.tsv", "emotions.txt"])
    names = source.joinpath("emotions.txt").read_text().split()

    def read(split: str) -> list[Example]:
        out = []
        for line in (source / f"{split}.tsv").read_text(encoding="utf-8").splitlines():
            text, ids, *_ = line.split("\t")
            out.append(Example(text.strip(), int(ids.split(",")[0])))
        return out

    return ICLTask("goemotions", TEMPLATES["goemotions"], names, read("train"), read("test"))


def _tacred(source: Path) -> ICLTask:
    _need(source, "tacred", ["train.json", "test.json"])
    raw = {s: json.loads((source / f"{s}.json").read_text()) for s in ("train", "test")}
    try:
        names = sorted({r["relation"] for r in raw["train"]} - {"no_relation"})
        index = {n: i for i, n in enumerate(names)}

        def convert(r: dict) -> Example:
            tok = r["token"]
            subj = " ".join(tok[r["subj_start"] : r["subj_end"] + 1])
            obj = " ".join(tok[r["obj_start"] : r["obj_end"] + 1])
            return Example(" ".join(tok), index[r["relation"]], subj, obj)

        splits = {s: [convert(r) for r in rs if r["relation"] in index] for s, rs in raw.items()}
    except (KeyError, TypeError) as e:
        raise UserError(f"{source}/*.json is not TACRED's JSON (records need token/subj_*/obj_*/relation).") from e
    return ICLTask("tacred", TEMPLATES["tacred"], names, splits["train"], splits["test"])


def _from_hub(name: str) -> ICLTask:
    hub_id = HUB_IDS[name]
    hint = f"point at local files with --data-dir DIR (holding DIR/{name}/) or --data-path DIR"
    try:
        import datasets

        if not hf_offline():
            from huggingface_hub import HfApi

            HfApi().dataset_info(hub_id, timeout=10)  # fail fast: load_dataset retries for long
        ds = datasets.load_dataset(hub_id, "simplified" if name == "goemotions" else None)
    except Exception as e:  # offline without a cache, no network, a moved dataset
        raise UserError(
            f"dataset {name} is not available: the Hugging Face hub copy {hub_id} could not be loaded "
            f"({type(e).__name__}); {hint}."
        ) from e
    if name == "banking77":
        names = ds["train"].features["label"].names
        train, test = ([Example(r["text"], r["label"]) for r in ds[s]] for s in ("train", "test"))
    else:
        names = ds["train"].features["labels"].feature.names
        train, test = ([Example(r["text"], r["labels"][0]) for r in ds[s]] for s in ("train", "test"))
    return ICLTask(name, TEMPLATES[name], names, train, test)


# ---- the synthetic task -------------------------------------------------------------------------

SYNTHETIC_NAMES = ("red", "blue", "green", "yellow", "black", "white", "pink", "brown")


def synthetic_task(
    seed: int = 0, n_classes: int = 4, words_per_class: int = 4, copies: int = 8, test_per_class: int = 50
) -> ICLTask:
    """Pseudo-words ("bako", "tiru") assigned to colour names at random: nothing but the context tells
    which word has which label. Each class owns `words_per_class` words; a shot shows one of them per
    class, so a model that copies labels from the context gains with every shot (the query's word is
    more likely to have been shown), and one that does not stays at chance."""
    if not 2 <= n_classes <= len(SYNTHETIC_NAMES):
        raise UserError(f"the synthetic task has 2 to {len(SYNTHETIC_NAMES)} classes, not {n_classes}.")
    rng = random.Random(f"synthetic-{seed}")
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    words: list[str] = []
    while len(words) < n_classes * words_per_class:
        w = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(2))
        if w not in words:
            words.append(w)
    vocab = [words[c * words_per_class : (c + 1) * words_per_class] for c in range(n_classes)]
    train = [Example(w, c) for c in range(n_classes) for w in vocab[c] for _ in range(copies)]
    test = [Example(rng.choice(vocab[c]), c) for c in range(n_classes) for _ in range(test_per_class)]
    return ICLTask("synthetic", TEMPLATES["synthetic"], list(SYNTHETIC_NAMES[:n_classes]), train, test)


# ---- labels, demonstrations, prompts ------------------------------------------------------------


def label_strings(task: ICLTask, kind: str, seed: int) -> list[str]:
    """The label written for each class id: its name, or `class_<k>` with k a seeded permutation."""
    if kind == "semantic":
        return list(task.label_names)
    if kind != "anonymous":
        raise UserError(f"--labels {kind}: choose from {', '.join(LABEL_KINDS)}.")
    K = task.n_classes
    perm = list(range(K))
    random.Random(f"anonymous-{seed}").shuffle(perm)
    width = max(2, len(str(K - 1)))
    return [f"class_{perm[c]:0{width}d}" for c in range(K)]


def _by_class(examples: list[Example], K: int) -> list[list[Example]]:
    buckets: list[list[Example]] = [[] for _ in range(K)]
    for ex in examples:
        buckets[ex.label].append(ex)
    return buckets


def max_shots(task: ICLTask) -> int:
    """The most rounds the training split supports (its smallest class)."""
    return min(len(b) for b in _by_class(task.train, task.n_classes))


def demo_rounds(task: ICLTask, n_shots: int, seed: int) -> list[list[Example]]:
    """n rounds, each one example of every class in class-id order. Each class's examples are drawn
    by a seeded shuffle, so the n-shot demonstrations extend the (n-1)-shot ones."""
    if n_shots > max_shots(task):
        raise UserError(f"{task.name} has only {max_shots(task)} training examples in its smallest class.")
    buckets = _by_class(task.train, task.n_classes)
    picks = []
    for c, bucket in enumerate(buckets):
        order = list(range(len(bucket)))
        random.Random(f"demos-{seed}-{c}").shuffle(order)
        picks.append([bucket[i] for i in order[:n_shots]])
    return [[picks[c][r] for c in range(task.n_classes)] for r in range(n_shots)]


def test_subset(task: ICLTask, n: int, seed: int) -> list[Example]:
    """LongICLBench's selection: round-robin over classes (each shuffled by the seed), first n. Each
    round visits the classes in a seeded order, so a subset smaller than the class count is a random
    stratified draw over all classes (at most one query per class), not classes 0..n-1."""
    buckets = _by_class(task.test, task.n_classes)
    for c, bucket in enumerate(buckets):
        random.Random(f"test-{seed}-{c}").shuffle(bucket)
    out: list[Example] = []
    for r in range(max(len(b) for b in buckets)):
        order = [c for c in range(len(buckets)) if r < len(buckets[c])]
        random.Random(f"test-{seed}-round-{r}").shuffle(order)
        out += [buckets[c][r] for c in order]
    return out[:n]


def render(template: Template, ex: Example, label: str | None, delim: str) -> str:
    """`<input cue>: <text><delim><label cue>:` and, for a demonstration, ` <label>`."""
    cue = template.label_cue.format(subject=ex.subject, object=ex.object)
    head = f"{template.input_cue}: {ex.text}{delim}{cue}:"
    return head if label is None else f"{head} {label}"


def build_prefix(task: ICLTask, rounds: list[list[Example]], labels: list[str], prompt: str, seed: int) -> str:
    """Instruction line + demonstrations. A query is appended as `delim + render(query)` and its
    answer as ` <label>`, so demonstrations and queries tokenize alike."""
    delim_name, order = prompt.split("-")
    delim = DELIMITERS[delim_name]
    parts = []
    for r, round_ in enumerate(rounds):
        items = list(round_)
        if order == "shuffled":
            random.Random(f"order-{seed}-{r}").shuffle(items)
        parts += [render(task.template, ex, labels[ex.label], delim) for ex in items]
    return task.template.instruction + "\n" + delim.join(parts)


def query_text(task: ICLTask, ex: Example, prompt: str) -> str:
    delim = DELIMITERS[prompt.split("-")[0]]
    return delim + render(task.template, ex, None, delim)


def normalise(text: str) -> str:
    return " ".join(text.strip().lower().split())


def parse_generation(text: str, task: ICLTask) -> str:
    """LongICLBench's parsing: cut at the next input cue, keep the first line, lowercase, strip."""
    cue = task.template.input_cue + ":"
    if cue in text:
        text = text[: text.index(cue)]
    lines = text.strip().splitlines()
    return normalise(lines[0]) if lines else ""
