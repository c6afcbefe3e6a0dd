"""RULER's 13 synthetic long-context tasks (Hsieh et al. 2024), generated offline for any tokenizer.

Every sample is filled to a target token count *in the evaluated model's own tokenizer*: the prompt
(instruction, haystack, question and the answer prefix a base model continues from) plus the task's
generation budget fits the length. Protocol, templates and scoring: reference evaluations.md §1.

How a sample is fitted (bounded everywhere; upstream's retry loops could spin forever):
  1. the haystack material is tokenised once per tokenizer (essay words, QA documents), or its cost
     per unit measured once (noise lines, needle lines, word lists);
  2. a binary search over the haystack size finds the largest size whose prompt fits, on a trial
     sample (QA: per sample, from the documents' cached token counts);
  3. each sample is built at that size and encoded once (the ids the model reads); if a random draw
     overflows, the size shrinks by what the overflow costs, at most `MAX_SHRINKS` times.

Deviations from NVIDIA/RULER, all for offline use: our own word lists stand in for `wonderwords`
(CWE words beyond them are adjective-noun pairs); a regex sentence splitter stands in for NLTK's
punkt; needles are shuffled with the sample's generator (upstream: a fixed seed).
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
# "assgined" is upstream's spelling; kept so prompts match RULER's.
VT_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
    "are assgined the value {query}, they are: "
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

# Our own word lists (wonderwords is not a dependency); sorted, so a seed fixes every draw.
_ADJECTIVES_TEXT = """
able absent acid aged airy alert amber ample angry antique arctic ashen awake azure bald barren bashful bitter
bland bleak blind blunt bold bony bouncy brave brief bright brisk broad bronze brown bumpy busy calm candid
careful casual cheap cheerful chilly civil clean clever cloudy clumsy coarse cold common cosmic costly cozy
crafty crisp cruel curly cute damp dapper daring dark dear decent deep dense dizzy dreamy dry dull dusty eager
early earthy easy elastic elder elegant empty epic equal even exact faint fair fancy fast fearless feeble
fierce filthy firm flat fluffy fond foolish formal fragile frank free fresh friendly frosty frozen fuzzy
gentle giant gifted glad gloomy glossy golden grand grassy grave greasy great green grim gritty grumpy hairy
handy happy hardy harsh hasty heavy helpful hidden hollow honest hot huge humble hungry icy idle immense jolly
juicy keen kind large lazy lean light little lively lone loud lovely loyal lucky lush mad magic major mellow
merry mild misty modern moist murky narrow neat nervous new nimble noble noisy normal odd old open orange pale
patient plain plush polite poor proud purple quick quiet rapid rare raw ready real regal rich rigid ripe
robust rosy rough round royal rugged rusty sad salty sandy savage scarce secret shaggy sharp shiny short shy
silent silky silly simple sleek slim slow small smart smooth snowy soft solid sour spicy spotty stale steady
steep sticky stiff stormy strange strict strong sturdy subtle sunny super sweet swift tall tame tart tender
thick thin tidy tiny tired tough tricky true ugly upbeat urban useful vacant vague vain valid vast velvet
vivid warm wary weary wet whole wicked wide wild windy wise witty wooden worthy young zany zealous
"""
ADJECTIVES = sorted(set(_ADJECTIVES_TEXT.split()))
_NOUNS_TEXT = """
acorn actor airport alarm album anchor angle ankle apple apron arch arena armchair arrow artist atlas attic
author avenue baboon badge bakery balcony ballet bamboo banana bandage banjo barn barrel basket battery beach
beacon beard beaver bedroom beetle bell bench berry bicycle blanket blender blossom boat bonnet book bottle
boulder bracelet branch bread brick bridge broom bubble bucket buffalo bugle butter button cabin cabinet
cactus camel camera canal candle canoe canyon captain carpet carrot castle cattle cave cellar chair chalk
channel cheese cherry chimney circus citizen claw cliff clock cloud coach coast cobweb coconut comet compass
copper cottage cotton couch cousin crane crayon creek cricket crown crystal cup curtain cushion daisy dancer
desert diamond dinner doctor dolphin donkey doorway dragon drawer dream drum eagle elbow elephant engine
falcon farmer feather fence ferry fiddle finger fireplace flag flute forest fountain fox garden garlic gate
giraffe glacier glove goat goose grape guitar hammer harbor harp hat hawk helmet hill hippo honey horizon
horse hotel island jacket jaguar jelly jewel kettle kitten ladder lagoon lake lamp lantern lemon leopard
letter library lily lion lizard lobster locket magnet mango maple marble market meadow melon mirror monkey
moon mountain mouse muffin museum needle nest noodle ocean octopus office onion orchard otter owl oyster
paddle palace panda parrot peach peanut pebble pencil pepper piano pigeon pillow pilot planet plum pocket pond
potato puppet pyramid quilt rabbit radio rainbow raven ribbon river robin rocket saddle sailor salmon sandal
scarf school shadow shell shovel singer sparrow spider spoon squirrel stadium statue stone storm stream sugar
summit sunset swan table teacher temple tiger toaster tomato tower tractor train tulip turtle umbrella valley
violin volcano wagon walnut walrus whale whistle window wizard wolf yacht zebra
"""
NOUNS = sorted(set(_NOUNS_TEXT.split()))
_VERBS_TEXT = """
accept admire arrive bake balance bathe behave boil borrow bounce breathe brush build bury calculate carry
carve celebrate chase chew clap climb collect comb compare cook crawl cross dance decide deliver describe dig
divide drift dust earn enjoy escape explain explore fetch fix float fold follow gather giggle glide grab greet
grin guard guess hammer hang harvest hop hover hug hunt hurry imagine invent jog juggle jump kick kneel knit
knock laugh launch lift listen march mend mix nod obey offer open paddle paint pedal plant play polish pour
pray print pull punch push race rake reach read relax repair rescue rest rhyme ride rinse roast roll rub sail
scrub search sew shake shiver shout sing skate sketch skip sleep slide smile sneeze sniff solve sort spell
spill splash sprint squeeze stack steer stir stretch surf swim swing tap taste teach tickle tiptoe toss trace
travel trot tumble twist unfold unlock vanish visit wade walk wander wash wave weave whisper whistle wiggle
wink wonder wrap write yawn yell zip
"""
VERBS = sorted(set(_VERBS_TEXT.split()))


@functools.cache
def key_words() -> list[str]:
    """NIAH keys: adjective-noun pairs, as RULER draws them from wonderwords."""
    return [f"{a}-{n}" for a in ADJECTIVES for n in NOUNS]


@functools.cache
def cwe_words() -> list[str]:
    """CWE's pool: single words first (shuffled with seed 42, as upstream), then pairs if more are needed."""
    singles = sorted(set(ADJECTIVES) | set(NOUNS) | set(VERBS))
    random.Random(42).shuffle(singles)
    pairs = key_words().copy()
    random.Random(43).shuffle(pairs)
    return singles + pairs


def random_value(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "words":
        return rng.choice(key_words())
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

MAX_SHRINKS = 8  # per sample: re-draws at a smaller haystack before the sample is given up


@dataclass
class Sample:
    task: str
    length: int  # the target: prompt tokens + generation budget <= length
    index: int
    input: str  # the prompt without the answer prefix
    answer_prefix: str  # appended to the prompt: a base model continues from it
    outputs: list[str]  # gold strings
    prompt_ids: list[int]  # encode(input + answer_prefix), what the model reads
    haystack_size: int  # lines, words or documents
    gen_tokens: int

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids) + self.gen_tokens


Built = tuple[str, str, list[str]]  # (input, answer_prefix, outputs)


def _seed(*parts: Any) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def _zeta(alpha: float) -> float:
    return math.pi**2 / 6 if alpha == 2.0 else sum(k**-alpha for k in range(1, 200_000))


class Generator:
    """Samples of every task at any length, for one tokenizer. Deterministic given `seed`."""

    def __init__(self, tokenizer: Encoder, sources: Sources | None = None, seed: int = 42):
        self.tok = tokenizer
        self.sources = sources or Sources()
        self.seed = seed
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
        hops = p["hops"]
        names: list[str] = []
        while len(names) < hops + 1:
            name = "".join(rng.choices(string.ascii_uppercase, k=letters))
            if name not in names:
                names.append(name)
        value = rng.randint(10000, 99999)
        chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(hops)]
        lines = [NOISE + "\n"] * n
        for j, at in enumerate(sorted(rng.sample(range(n + 1), len(chain)))):
            lines.insert(at + j, chain[j])
        context = " ".join(lines).replace(". \n", ".\n")
        return VT_TEMPLATE.format(context=context, query=value), VT_PREFIX.format(num_v=hops + 1, query=value), names

    def _vt(self, p: dict[str, Any], n: int, rng: random.Random, length: int) -> Built:
        # One demonstration (upstream: fitted to 500 tokens), with fresh names for every sample.
        demo_budget = min(500, length // 8)
        demo_n = max(p["hops"] + 1, (demo_budget - 120) // max(1, self.count(NOISE + "\n ")))
        d_in, d_prefix, d_gold = self._vt_text(p, demo_n, rng, letters=3)
        inp, prefix, gold = self._vt_text(p, n, rng, letters=5)
        return d_in + d_prefix + " ".join(d_gold) + "\n\n" + inp, prefix, gold

    def _cwe(self, p: dict[str, Any], n: int, rng: random.Random, length: int) -> Built:
        pool, num_cw = cwe_words(), p["num_cw"]
        short = length < 4096  # upstream: a lighter demo and fewer repeats below 4k
        reps, demo = ((6, 1), (20, 3, 1)) if short else ((p["freq_cw"], p["freq_ucw"]), (40, 10, 3))

        def example(num: int, common_reps: int, rare_reps: int) -> tuple[str, list[str]]:
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
        size = max(8, length // 50)
        vocab: set[str] = set()
        while len(vocab) < size:
            vocab.add("".join(rng.choices(string.ascii_lowercase, k=6)))
        ranked = sorted(vocab)
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
            return self.count(inp + prefix)

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
        base = self.count(QA_TEMPLATE.format(context="", query=qa["query"]) + QA_PREFIX)
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
        for _ in range(MAX_SHRINKS + 1):
            inp, prefix, gold = build(n, random.Random(seed))
            ids = self.tok.encode(inp + prefix)
            over = len(ids) + spec.gen_tokens - length
            if over <= 0:
                return Sample(task, length, index, inp, prefix, gold, ids, n, spec.gen_tokens)
            if n <= floor:
                return None
            n = max(floor, n - max(1, math.ceil(over / per_unit) + 1))
        return None

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
