"""Text corpora for the language-model experiments: documents in, memory-mapped uint16 tokens out.

Where text comes from, first match wins:
1. `data.path` (`--set data.path=...`): a file or a directory;
2. `data.data_dir/<folder>/` (the CLI's `--data-dir` sets it): `tinystories/`, and `simple-wiki/` or
   `wikitext2_raw/` for simple-wiki;
3. the Hugging Face hub (skipped when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set, except for its
   local cache): TinyStories is `roneneldan/TinyStories` (train, validation); simple-wiki is
   `wikimedia/wikipedia`, config `20231101.simple` (one split, one row per article).
Nothing reachable raises one UserError that names the dataset and the two ways to point at files.

Files: `.txt`/`.raw` (split into documents by a rule, below), `.jsonl`/`.json`/`.parquet` (one
document per record's "text"); a single file given by path with any other suffix is plain text too.
In a directory, names holding `val`/`valid`/`dev` are validation, `test` test, everything else train
(so TinyStories' `tiny_stories.txt` is train); validation and test stand in for each other. A
source with no evaluation part (a single file, a directory of training files only, simple-wiki on
the hub) is split by documents: the last `val_fraction` of them is validation, the rest train.

Document rules for plain text (`data.doc_split`, "auto" by default):
- a file containing `<|endoftext|>` is split on it (the official TinyStories .txt files);
- tinystories: stories are separated by a single newline, paragraphs inside a story by a blank
  line (the HF export, as in `tiny_stories.txt`; the few line breaks inside a story split it too).
  A file where single newlines are rare next to blank lines (`tinystories_val.txt`, whose story
  boundaries are lost) falls back to one document per blank-line block, i.e. per paragraph;
- simple-wiki: WikiText format, where a top-level heading line ` = Title = ` starts an article
  (` = = Section = = ` does not); without such headings, blank-line blocks;
- paul-graham (local files only, `$REPRO_DATA_DIR/paul_graham_essays/`): one document per file;
- text (local files only): blank-line blocks.

Tokens are written once per (documents, tokenizer) under `cache_dir`, with end-of-text after each
document, and read back through a memmap. Training batches are a pure function of (seed, step), so a
resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from repro.data.tokenizer import (
    EOT_TEXT,
    Tokenizer,
    TokenizerKind,
    fingerprint_texts,
    get_tokenizer,
    hf_offline,
)
from repro.errors import UserError
from repro.files import atomic_write, write_json

DocSplit = Literal["auto", "eot", "line", "blank", "wikitext", "none"]
SPLITS = ("train", "validation", "test")
TEXT_SUFFIXES = (".txt", ".raw")
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class DatasetSpec:
    """Where a named corpus lives and how its plain-text files divide into documents."""

    folders: tuple[str, ...]  # looked for under data_dir
    hub_id: str | None
    hub_config: str | None
    hub_splits: tuple[str, ...]
    doc_rule: DocSplit


DATASETS = {
    "tinystories": DatasetSpec(("tinystories",), "roneneldan/TinyStories", None, ("train", "validation"), "line"),
    "simple-wiki": DatasetSpec(
        ("simple-wiki", "wikitext2_raw"), "wikimedia/wikipedia", "20231101.simple", ("train",), "wikitext"
    ),
    # local only (an essay per file, one document each): an out-of-distribution text that is not stories
    "paul-graham": DatasetSpec(("paul_graham_essays",), None, None, (), "none"),
    "text": DatasetSpec((), None, None, (), "blank"),
}


@dataclass
class TextDataConfig:
    dataset: str = "tinystories"  # tinystories | simple-wiki | paul-graham | text (the last two local only)
    path: str | None = None  # a local file or directory, used instead of the hub
    data_dir: str | None = None  # a folder of local copies, DIR/<folder>/ (`repro run --data-dir` sets it)
    tokenizer: TokenizerKind = "auto"  # auto: gpt2 when loadable, else a BPE trained on train
    vocab_size: int = 4096  # for the trained BPE
    max_chars: int | None = None  # cap on training text (whole documents from the start)
    max_eval_chars: int | None = None  # the same cap for each evaluation split
    tokenizer_chars: int | None = 50_000_000  # BPE training text: a prefix of train, for speed
    val_fraction: float = 0.1  # validation share of a source that has no evaluation part
    doc_split: DocSplit = "auto"
    cache_dir: str = ".cache/repro"


def vocab_lower_bound(cfg: TextDataConfig) -> int:
    """The fewest token ids `cfg`'s tokenizer can have, known before any text is read (for memory
    estimates): GPT-2's 50257; a byte-level tokenizer or BPE at least its 256 byte symbols."""
    return 50257 if cfg.tokenizer == "gpt2" else min(cfg.vocab_size, 256)


def logits_bytes(batch_size: int, block_size: int, vocab_size: int) -> int:
    """Bytes of one micro-batch's float32 logits (B, T, V). Every language model's loss materialises
    them, so this is a lower bound on the memory of a training step (an experiment's memory_estimate)."""
    return 4 * batch_size * block_size * vocab_size


# ---- documents ----------------------------------------------------------------------------------

_WIKI_HEADING = re.compile(r"^ = [^=\n][^\n]* = *$", re.M)
_SINGLE_NEWLINE = re.compile(r"(?<=[^\n])\n(?=[^\n])")


def split_documents(text: str, rule: DocSplit) -> list[str]:
    """Cut a plain-text file into stripped, non-empty documents by one explicit rule (module doc)."""
    text = text.replace("\r\n", "\n")
    if rule == "eot":
        parts = text.split(EOT_TEXT)
    elif rule == "line":
        parts = _SINGLE_NEWLINE.split(text)
    elif rule == "blank":
        parts = re.split(r"\n[ \t]*\n", text)
    elif rule == "wikitext":
        parts = re.split(r"^(?= = [^=\n][^\n]* = *$)", text, flags=re.M)
    elif rule == "none":
        parts = [text]
    else:
        raise UserError(f"data.doc_split={rule}: choose one of auto, eot, line, blank, wikitext, none.")
    return [p.strip() for p in parts if p.strip()]


def _auto_rule(text: str, dataset_rule: DocSplit) -> DocSplit:
    if EOT_TEXT in text:
        return "eot"
    if dataset_rule == "line":
        # Stories have a few line breaks inside too: a story per line only if single newlines are
        # not rare next to blank lines (tiny_stories.txt 1101:4661, tinystories_val.txt 58:4300).
        text = text.replace("\r\n", "\n")
        return "line" if 10 * len(_SINGLE_NEWLINE.findall(text)) >= text.count("\n\n") else "blank"
    if dataset_rule == "wikitext" and not _WIKI_HEADING.search(text.replace("\r\n", "\n")):
        return "blank"
    return dataset_rule


# Text has few control characters (tab, newlines and form feed aside); random or binary bytes that
# happen to decode have many. More than this share of the first million characters is not text.
CONTROL_LIMIT = 0.01
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def check_text(text: str, source: Path) -> None:
    """Refuse what is not text (the share of control characters at its start), naming the file."""
    sample = text[:1_000_000]
    share = len(_CONTROL.findall(sample)) / max(1, len(sample))
    if share > CONTROL_LIMIT:
        raise UserError(
            f"{source} does not look like text ({share:.1%} control characters); "
            "point data.path at the dataset's text files."
        )


def read_text(path: Path) -> str:
    """A UTF-8 text file, or one UserError naming it (invalid UTF-8, or binary-looking content)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not UTF-8 text (invalid byte at offset {e.start}); point data.path at the dataset's text files."
        ) from None
    check_text(text, path)
    return text


def read_documents(path: Path, dataset_rule: DocSplit, doc_split: DocSplit = "auto") -> list[str]:
    """The documents of one local file: records (.jsonl/.json/.parquet) or plain text (any other name:
    a file given by path is read as text whatever its suffix, e.g. `.md` or none)."""
    suffix = path.suffix.lower()
    if suffix not in RECORD_SUFFIXES:
        text = read_text(path)
        return split_documents(text, _auto_rule(text, dataset_rule) if doc_split == "auto" else doc_split)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            values = pq.read_table(path, columns=["text"]).column("text").to_pylist()
        except KeyError as e:
            raise UserError(f"{path} has no 'text' column; documents must be in a 'text' field.") from e
    else:
        values = _json_records(path)
    docs = [v.strip() for v in values if isinstance(v, str) and v.strip()]
    check_text("\n".join(docs[:1000]), path)
    return docs


def _json_records(path: Path) -> list[str]:
    raw = read_text(path)
    try:
        data = json.loads(raw) if path.suffix.lower() == ".json" else None
    except json.JSONDecodeError:
        data = None  # a .json file holding JSON lines
    if data is None:
        records = [json.loads(line) for line in raw.splitlines() if line.strip()]
    elif isinstance(data, dict) and isinstance(data.get("text"), list):
        records = data["text"]
    else:
        records = data if isinstance(data, list) else [data]
    if any(isinstance(r, dict) and "text" not in r for r in records):
        raise UserError(f"{path} has records without a 'text' field; documents must be in 'text'.")
    return [r["text"] if isinstance(r, dict) else r for r in records]


def _file_split(name: str) -> str:
    low = name.lower()
    if re.search(r"(^|[^a-z])(val|valid|validation|dev)([^a-z]|$)", low):
        return "validation"
    if re.search(r"(^|[^a-z])test([^a-z]|$)", low):
        return "test"
    return "train"


def _carve(docs: list[str], split: str, val_fraction: float) -> list[str]:
    """Train is the first documents, validation/test the last `val_fraction` of them."""
    if not 0.0 <= val_fraction <= 1.0:
        raise UserError(f"data.val_fraction={val_fraction}: expected a number between 0 and 1.")
    n_val = min(len(docs), max(1, round(len(docs) * val_fraction))) if val_fraction > 0 else 0
    return docs[: len(docs) - n_val] if split == "train" else docs[len(docs) - n_val :]


def _load_local(
    source: Path, split: str, spec: DatasetSpec, name: str, val_fraction: float, doc_split: DocSplit
) -> list[str]:
    if source.is_file():
        return _carve(read_documents(source, spec.doc_rule, doc_split), split, val_fraction)
    files = sorted(
        p
        for p in source.rglob("*")
        if p.is_file()
        and p.suffix.lower() in TEXT_SUFFIXES + RECORD_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(source).parts)
    )
    if not files:
        raise UserError(f"{source} holds no .txt/.raw/.jsonl/.json/.parquet files for dataset {name}.")
    by_split = {s: [f for f in files if _file_split(f.name) == s] for s in SPLITS}
    eval_files = by_split["validation"] + by_split["test"]
    if split == "train":
        if not by_split["train"]:
            raise UserError(
                f"{source} has no training file for dataset {name} (only validation/test files); "
                "point --set data.path= at a training file."
            )
        docs = [d for f in by_split["train"] for d in read_documents(f, spec.doc_rule, doc_split)]
        return docs if eval_files else _carve(docs, split, val_fraction)
    chosen = by_split[split] or eval_files
    if chosen:
        return [d for f in chosen for d in read_documents(f, spec.doc_rule, doc_split)]
    docs = [d for f in by_split["train"] for d in read_documents(f, spec.doc_rule, doc_split)]
    return _carve(docs, split, val_fraction)


def _load_hub(spec: DatasetSpec, name: str, split: str, val_fraction: float, max_chars: int | None) -> list[str]:
    """Hugging Face hub or its cache; every failure becomes one UserError (no retries, no hang)."""
    import datasets

    where = spec.hub_id + (f" ({spec.hub_config})" if spec.hub_config else "")
    eval_splits = [s for s in ("validation", "test") if s in spec.hub_splits]
    hub_split = "train" if split == "train" or not eval_splits else split if split in eval_splits else eval_splits[0]
    try:
        if not hf_offline():
            # A quick reachability check: load_dataset itself retries for ~25 s when offline.
            from huggingface_hub import HfApi

            HfApi().dataset_info(spec.hub_id, timeout=10)
        ds = datasets.load_dataset(spec.hub_id, spec.hub_config, split=hub_split).select_columns(["text"])
    except Exception as e:  # connection errors, offline mode without a cached copy, a moved dataset
        raise _missing(name, f"the Hugging Face hub copy {where} could not be loaded ({type(e).__name__})") from e
    lo, hi = 0, len(ds)
    if not eval_splits:  # carve validation/test out of the only split, by rows
        n_val = max(1, round(hi * val_fraction)) if val_fraction > 0 else 0
        lo, hi = (0, hi - n_val) if split == "train" else (hi - n_val, hi)
    docs: list[str] = []
    total = 0
    for batch in ds.select(range(lo, hi)).iter(batch_size=10_000):
        for text in batch["text"]:
            if text and text.strip():
                docs.append(text.strip())
                total += len(docs[-1])
        if max_chars is not None and total >= max_chars:
            break
    return docs


def _missing(name: str, why: str) -> UserError:
    spec = DATASETS[name]
    hint = f" or --data-dir DIR (holding DIR/{spec.folders[0]}/)" if spec.folders else ""
    return UserError(f"dataset {name} is not available: {why}; point at local files with --set data.path=PATH{hint}.")


def _local_source(spec: DatasetSpec, name: str, path: str | None, data_dir: str | None) -> Path | None:
    if path:
        source = Path(path).expanduser()
        if not source.exists():
            raise UserError(f"data.path {path} does not exist; give a file or directory with {name} text.")
        return source
    for folder in spec.folders if data_dir else ():
        if (Path(data_dir) / folder).is_dir():
            return Path(data_dir) / folder
    return None


def cap_chars(docs: list[str], max_chars: int | None) -> list[str]:
    """Whole documents from the start until `max_chars` characters; the last one is cut to fit."""
    if max_chars is None:
        return docs
    out, total = [], 0
    for doc in docs:
        if total >= max_chars:
            break
        out.append(doc[: max_chars - total])
        total += len(out[-1])
    return out


def load_texts(
    dataset: str,
    split: str,
    path: str | None = None,
    max_chars: int | None = None,
    *,
    val_fraction: float = 0.1,
    doc_split: DocSplit = "auto",
    data_dir: str | None = None,
) -> list[str]:
    """The documents of one split of a named corpus, from local files when given (`path`, else
    `data_dir/<folder>/`), else the hub."""
    if dataset not in DATASETS:
        raise UserError(f"data.dataset={dataset}: choose one of {', '.join(DATASETS)}.")
    split = {"val": "validation", "valid": "validation"}.get(split, split)
    if split not in SPLITS:
        raise UserError(f"split '{split}': choose one of {', '.join(SPLITS)}.")
    spec = DATASETS[dataset]
    source = _local_source(spec, dataset, path, data_dir)
    if source is not None:
        docs = _load_local(source, split, spec, dataset, val_fraction, doc_split)
    elif spec.hub_id is None:
        raise _missing(dataset, "it has no hub copy and no local path was given")
    else:
        docs = _load_hub(spec, dataset, split, val_fraction, max_chars)
    docs = cap_chars(docs, max_chars)
    if not docs:
        raise UserError(f"dataset {dataset} has no {split} documents (check data.path and data.val_fraction).")
    return docs


# ---- token files --------------------------------------------------------------------------------


def build_token_file(texts: Sequence[str], tokenizer: Tokenizer, path: str | Path, chunk_chars: int = 4_000_000) -> int:
    """Tokenize documents into `path` (uint16, end-of-text after each); returns the token count.

    Writes `path`, `<stem>.docs.npy` (each document's first token offset) and `<stem>.json`
    (counts), each to a temporary name first; `path` is renamed last, so its presence means done.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tokenizer.vocab_size > np.iinfo(np.uint16).max + 1:
        raise UserError(f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} ids, too many for uint16.")
    starts, n_tokens, n_bytes = [], 0, 0

    def write_tokens(tmp: Path) -> None:
        nonlocal n_tokens, n_bytes
        with open(tmp, "wb") as f:
            for chunk in _chunks(texts, chunk_chars):
                for ids in tokenizer.encode_batch(chunk):
                    starts.append(n_tokens)
                    arr = np.asarray([*ids, tokenizer.eot_id], dtype=np.uint16)
                    f.write(arr.tobytes())
                    n_tokens += len(arr)
                n_bytes += sum(len(t.encode("utf-8")) for t in chunk)

    def write_meta() -> None:
        meta = {
            "tokenizer": tokenizer.name,
            "vocab_size": tokenizer.vocab_size,
            "documents": len(starts),
            "tokens": n_tokens,
            "bytes": n_bytes,
            "bytes_per_token": n_bytes / max(1, n_tokens - len(starts)),  # end-of-text tokens excluded
        }
        atomic_write(_sidecar(path, ".docs.npy"), lambda p: _save_npy(p, np.asarray(starts, dtype=np.int64)))
        write_json(_sidecar(path, ".json"), meta, indent=1)

    # The token file is renamed into place last (after its sidecars), so its presence means done.
    atomic_write(path, lambda tmp: (write_tokens(tmp), write_meta()))
    return n_tokens


def _chunks(texts: Sequence[str], chunk_chars: int) -> Iterator[list[str]]:
    """Batches of documents of about `chunk_chars` characters: parallel encoding, bounded memory."""
    chunk, size = [], 0
    for t in texts:
        chunk.append(t)
        size += len(t)
        if size >= chunk_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.stem + suffix)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to a temporary name
        np.save(f, arr)


def token_file(
    texts: Sequence[str], tokenizer: Tokenizer, cache_dir: str | Path, name: str, fingerprint: str = ""
) -> Path:
    """The cached token file for (documents, tokenizer), built on first use only."""
    fingerprint = fingerprint or fingerprint_texts(texts)
    key = hashlib.sha256(f"{fingerprint}:{tokenizer.name}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / "tokens" / f"{name}-{tokenizer.name}-{key}.bin"
    if not path.exists():
        build_token_file(texts, tokenizer, path)
    return path


def _step_seed(seed: int, step: int) -> int:
    """A well-mixed 63-bit seed from (seed, step), so nearby steps get unrelated batches."""
    digest = hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class TokenWindows:
    """A token stream (usually a uint16 memmap) cut into (input, target) windows."""

    def __init__(self, tokens: np.ndarray, doc_starts: np.ndarray | None = None, meta: dict | None = None):
        self.tokens = tokens
        self.doc_starts = doc_starts
        self.meta = meta or {}

    @classmethod
    def open(cls, path: str | Path) -> TokenWindows:
        path = Path(path)
        if path.stat().st_size == 0:
            raise UserError(f"token file {path} is empty; delete it and check the data split.")
        tokens = np.memmap(path, dtype=np.uint16, mode="r")
        docs_path, meta_path = _sidecar(path, ".docs.npy"), _sidecar(path, ".json")
        docs = np.load(docs_path) if docs_path.exists() else None
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        return cls(tokens, docs, meta)

    def __len__(self) -> int:
        return len(self.tokens)

    def _check(self, block_size: int) -> None:
        if len(self.tokens) < block_size + 1:
            raise UserError(
                f"only {len(self.tokens)} tokens, fewer than block_size+1={block_size + 1}; "
                "use more text (data.max_chars) or a smaller block_size."
            )

    @staticmethod
    def _pairs(windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.from_numpy(windows.astype(np.int64))  # (N, T+1)
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()  # (N, T) each, targets shifted by one

    def batch(self, step: int, batch_size: int, block_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch_size` windows at random offsets; the same (seed, step) always gives the same batch.

        Returns CPU LongTensors x, y of shape (B, T) with y[:, t] = x[:, t+1] (the next token).
        """
        self._check(block_size)
        gen = torch.Generator().manual_seed(_step_seed(seed, step))
        offsets = torch.randint(len(self.tokens) - block_size, (batch_size,), generator=gen).tolist()
        return self._pairs(np.stack([self.tokens[o : o + block_size + 1] for o in offsets]))

    def sequential_windows(self, block_size: int, max_windows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Non-overlapping windows from the start, for deterministic evaluation: x, y (N, T)."""
        self._check(block_size)
        n = (len(self.tokens) - 1) // block_size
        n = n if max_windows is None else min(n, max_windows)
        stream = np.asarray(self.tokens[: n * block_size + 1])
        x = stream[:-1].reshape(n, block_size)  # (N, T)
        y = stream[1:].reshape(n, block_size)  # (N, T)
        return torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))

    def random_spans(self, length: int, n: int, seed: int, within_documents: bool = True) -> np.ndarray:
        """Up to `n` distinct spans of `length` tokens at seeded random offsets: (N, length) int64.

        With `within_documents`, a span lies inside one document and holds none of its first token
        or its end-of-text, so position t of a span is t tokens into running text, not into a document;
        every such span is equally likely (a long document gives more). Otherwise any offset of the
        stream. Fewer than `n` come back only when fewer exist (none: shape (0, length)).
        """
        rng = np.random.default_rng([seed, length, 11])
        if not within_documents:
            total = max(0, len(self.tokens) - length + 1)
            offsets = np.sort(rng.choice(total, size=min(n, total), replace=False))
        else:
            if self.doc_starts is None:
                raise UserError("this token stream has no document offsets; rebuild its token file.")
            starts = self.doc_starts.astype(np.int64)
            ends = np.append(starts[1:], len(self.tokens)) - 1  # each document's end-of-text
            first = starts + 1  # a span starts after the document's first token
            counts = np.maximum(0, ends - length - first + 1)  # spans [o, o + length) with o + length <= end
            total = int(counts.sum())
            picks = np.sort(rng.choice(total, size=min(n, total), replace=False))
            doc = np.searchsorted(np.cumsum(counts), picks, side="right")  # the document of each pick
            offsets = first[doc] + picks - (np.cumsum(counts) - counts)[doc]
        if not len(offsets):
            return np.empty((0, length), dtype=np.int64)
        return np.stack([np.asarray(self.tokens[o : o + length], dtype=np.int64) for o in offsets])

    def random_windows(
        self, block_size: int, n: int, seed: int, within_documents: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) windows (N, T) at seeded random offsets (`random_spans` of block_size+1 tokens)."""
        self._check(block_size)
        return self._pairs(self.random_spans(block_size + 1, n, seed, within_documents))

    def document_windows(
        self, block_size: int, max_windows: int | None = None, whole: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows that start at document starts, so position t is t tokens into a document.

        With `whole`, only documents of at least block_size+1 tokens (end-of-text included) are
        used, so no window runs into the next document; otherwise windows may cross into it.
        """
        if self.doc_starts is None:
            raise UserError("this token stream has no document offsets; rebuild its token file.")
        self._check(block_size)
        starts = self.doc_starts
        ends = np.append(starts[1:], len(self.tokens))
        keep = starts + block_size + 1 <= len(self.tokens)
        if whole:
            keep &= ends - starts >= block_size + 1
        chosen = starts[keep][:max_windows]
        windows = np.stack([self.tokens[s : s + block_size + 1] for s in chosen]) if len(chosen) else None
        if windows is None:
            empty = torch.empty(0, block_size, dtype=torch.long)
            return empty, empty.clone()
        return self._pairs(windows)


# ---- what an experiment calls -------------------------------------------------------------------


def prepare_lm_data(
    cfg: TextDataConfig, eval_cfg: TextDataConfig | None = None
) -> tuple[Tokenizer, dict[str, TokenWindows]]:
    """Tokenizer and token windows for "train" and "validation" of `cfg.dataset`.

    The tokenizer is built on the training split. `eval_cfg` adds an out-of-distribution corpus
    (its validation split, under the key `eval_cfg.dataset`) tokenized with the SAME tokenizer;
    its tokenizer fields are ignored. For an evaluation-only source given as one file, set its
    val_fraction=1 to use all of it.
    """
    from repro.track import console

    def docs(c: TextDataConfig, split: str, max_chars: int | None) -> list[str]:
        return load_texts(
            c.dataset, split, c.path, max_chars, val_fraction=c.val_fraction, doc_split=c.doc_split, data_dir=c.data_dir
        )

    train = docs(cfg, "train", cfg.max_chars)
    train_fp = fingerprint_texts(train)
    tok_texts = cap_chars(train, cfg.tokenizer_chars)
    tok_fp = train_fp if tok_texts == train else ""  # identical objects unless the cap cut some
    tokenizer = get_tokenizer(cfg.tokenizer, tok_texts, cfg.vocab_size, cfg.cache_dir, tok_fp)
    corpora = {
        "train": (cfg, train, train_fp),
        "validation": (cfg, docs(cfg, "validation", cfg.max_eval_chars), ""),
    }
    if eval_cfg is not None:
        corpora[eval_cfg.dataset] = (eval_cfg, docs(eval_cfg, "validation", eval_cfg.max_eval_chars), "")
    out = {}
    console.print(f"tokenizer {tokenizer.name} (vocab {tokenizer.vocab_size})")
    for key, (c, texts, fp) in corpora.items():
        split = key if key in ("train", "validation") else "validation"
        out[key] = TokenWindows.open(token_file(texts, tokenizer, cfg.cache_dir, f"{c.dataset}-{split}", fp))
        bpt = out[key].meta.get("bytes_per_token", float("nan"))
        console.print(f"data {key}: {len(texts):,} docs, {len(out[key]):,} tokens, {bpt:.2f} bytes/token")
    return tokenizer, out
