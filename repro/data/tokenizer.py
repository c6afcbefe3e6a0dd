"""Tokenizers for the language-model experiments: GPT-2 BPE, a byte-level BPE trained here, raw bytes.

The paper uses GPT-2's tokenizer (tiktoken). Offline it cannot be fetched (tiktoken downloads its
files on first use), so "auto" falls back to a byte-level BPE trained with `tokenizers` on the
training split; that is also the better choice on CPU, where a 50k vocabulary makes the LM head
dominate the step time (reference environment.md §4, §6). Every tokenizer has an end-of-text id
that separates documents, and every id fits in uint16 so token files stay half the size of int32.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

from repro.errors import UserError
from repro.files import atomic_write

TokenizerKind = Literal["auto", "gpt2", "bpe", "byte"]
EOT_TEXT = "<|endoftext|>"
MAX_VOCAB = 1 << 16  # ids are stored as uint16
GPT2_HUB_ID = "openai-community/gpt2"  # its tokenizer.json is the GPT-2 BPE in `tokenizers` format


class Tokenizer:
    """encode/decode text with a fixed vocabulary; `name` identifies it in cache keys and run records."""

    def __init__(
        self,
        name: str,
        vocab_size: int,
        eot_id: int,
        encode_batch: Callable[[list[str]], list[list[int]]],
        decode: Callable[[list[int]], str],
        hf_json: str | None = None,
    ):
        if vocab_size > MAX_VOCAB:
            raise UserError(f"tokenizer {name} has {vocab_size} ids, more than uint16 token files can hold.")
        self.name = name
        self.vocab_size = vocab_size
        self.eot_id = eot_id
        self._encode_batch = encode_batch
        self._decode = decode
        self._hf_json = hf_json  # the `tokenizers` JSON, so a checkpoint can carry its tokenizer

    def encode(self, text: str) -> list[int]:
        return self._encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many documents at once (the `tokenizers` backends run this in parallel)."""
        return self._encode_batch(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        return self._decode([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"Tokenizer({self.name}, vocab {self.vocab_size}, eot {self.eot_id})"

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer next to a model checkpoint: `tokenizer.json` (the `tokenizers`
        file, for trained BPEs and GPT-2 from the hub) and `tokenizer_meta.json` (name and kind)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        if self._hf_json is not None:
            (path / TOKENIZER_FILE).write_text(self._hf_json)
        meta = {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id}
        (path / TOKENIZER_META).write_text(json.dumps(meta) + "\n")


TOKENIZER_FILE, TOKENIZER_META = "tokenizer.json", "tokenizer_meta.json"


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer a checkpoint directory carries (see `Tokenizer.save`)."""
    path = Path(directory)
    meta_path = path / TOKENIZER_META
    if not meta_path.is_file():
        raise UserError(f"{path} has no {TOKENIZER_META}; it was saved without its tokenizer.")
    meta = json.loads(meta_path.read_text())
    if (path / TOKENIZER_FILE).is_file():
        from tokenizers import Tokenizer as HFTokenizer

        return _from_hf(meta["name"], HFTokenizer.from_file(str(path / TOKENIZER_FILE)))
    if meta["name"] == "byte":
        return byte_tokenizer()
    if meta["name"] == "gpt2":
        return get_tokenizer("gpt2")
    raise UserError(f"{path}: tokenizer {meta['name']} cannot be rebuilt from the checkpoint.")


def fingerprint_texts(texts: Iterable[str]) -> str:
    """A content hash of a list of documents (boundaries included), for cache keys."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


# ---- bytes --------------------------------------------------------------------------------------


def byte_tokenizer() -> Tokenizer:
    """Raw UTF-8 bytes (ids 0-255) plus end-of-text (256): lossless, needs nothing, vocabulary 257."""
    eot = 256

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(ids: list[int]) -> str:
        pieces, run = [], bytearray()
        for i in ids:
            if i == eot:
                pieces.append(run.decode("utf-8", errors="replace") + EOT_TEXT)
                run = bytearray()
            else:
                run.append(i)
        pieces.append(run.decode("utf-8", errors="replace"))
        return "".join(pieces)

    return Tokenizer("byte", 257, eot, encode_batch, decode)


# ---- GPT-2 --------------------------------------------------------------------------------------


def hf_offline() -> bool:
    """True when the user asked Hugging Face libraries not to touch the network."""
    truthy = {"1", "ON", "YES", "TRUE"}
    return any(os.environ.get(v, "").upper() in truthy for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def gpt2_tokenizer() -> Tokenizer | None:
    """GPT-2's BPE, or None when it cannot be had without the network.

    tiktoken (what the paper used) is tried only when online: it downloads its files with no
    offline mode. Otherwise `openai-community/gpt2`'s tokenizer.json from the Hugging Face cache
    (or the hub when online); both give the same ids.
    """
    if not hf_offline():
        try:
            import tiktoken

            enc = tiktoken.get_encoding("gpt2")
        except Exception:  # ImportError, or any network failure: try the next source
            pass
        else:
            return Tokenizer(
                "gpt2",
                enc.n_vocab,
                enc.eot_token,
                lambda texts: enc.encode_ordinary_batch(texts),
                lambda ids: enc.decode(ids),
            )
    try:
        from huggingface_hub import hf_hub_download
        from tokenizers import Tokenizer as HFTokenizer

        file = hf_hub_download(GPT2_HUB_ID, "tokenizer.json", etag_timeout=5)
        tok = HFTokenizer.from_file(file)
    except Exception:  # offline and not cached, or the hub is unreachable
        return None
    return _from_hf("gpt2", tok)


def _from_hf(name: str, tok: object) -> Tokenizer:
    """Wrap a `tokenizers.Tokenizer` whose end-of-text token is EOT_TEXT."""
    eot = tok.token_to_id(EOT_TEXT)
    if eot is None:
        raise UserError(f"tokenizer {name} has no {EOT_TEXT} token; rebuild it (delete its cache file).")

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    def decode(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=False)

    return Tokenizer(name, tok.get_vocab_size(), eot, encode_batch, decode, hf_json=tok.to_str())


# ---- byte-level BPE trained here ----------------------------------------------------------------


def _train_bpe(texts: Sequence[str], vocab_size: int, path: Path) -> None:
    """GPT-2-style byte-level BPE (same pre-tokenizer regex), so every string round-trips."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, so nothing is unknown
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tok.save(str(tmp)))


def bpe_tokenizer(
    texts: Sequence[str],
    vocab_size: int = 4096,
    cache_dir: str | Path = ".cache/repro",
    fingerprint: str = "",
) -> Tokenizer:
    """Train (once) a byte-level BPE on `texts`; later calls with the same texts load the cached JSON.

    The cache key is (texts' fingerprint, vocab_size); the tokenizer's name hashes the saved JSON,
    so token files made with one trained BPE are never reused with another.
    """
    from tokenizers import Tokenizer as HFTokenizer

    if not 257 <= vocab_size <= MAX_VOCAB:
        raise UserError(f"data.vocab_size={vocab_size}: a byte-level BPE needs between 257 and {MAX_VOCAB}.")
    if not texts:
        raise UserError("cannot train a BPE tokenizer on an empty training split.")
    fingerprint = fingerprint or fingerprint_texts(texts)
    key = hashlib.sha256(f"{fingerprint}:{vocab_size}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / "tokenizers" / f"bpe{vocab_size}-{key}.json"
    if not path.exists():
        _train_bpe(texts, vocab_size, path)
    content = path.read_bytes()
    name = f"bpe{vocab_size}-{hashlib.sha256(content).hexdigest()[:12]}"
    return _from_hf(name, HFTokenizer.from_str(content.decode("utf-8")))


def get_tokenizer(
    kind: TokenizerKind,
    train_texts: Sequence[str] = (),
    vocab_size: int = 4096,
    cache_dir: str | Path = ".cache/repro",
    fingerprint: str = "",
) -> Tokenizer:
    """The tokenizer a config names; "auto" is GPT-2 when it can be loaded, else a BPE on `train_texts`."""
    if kind == "byte":
        return byte_tokenizer()
    if kind in ("gpt2", "auto"):
        tok = gpt2_tokenizer()
        if tok is not None:
            return tok
        if kind == "gpt2":
            raise UserError(
                "the GPT-2 tokenizer cannot be loaded offline (tiktoken downloads it and "
                f"{GPT2_HUB_ID}'s tokenizer.json is not in the Hugging Face cache); "
                "use --set data.tokenizer=bpe or --set data.tokenizer=byte."
            )
    if kind not in ("auto", "bpe"):
        raise UserError(f"data.tokenizer={kind}: choose one of auto, gpt2, bpe, byte.")
    return bpe_tokenizer(train_texts, vocab_size, cache_dir, fingerprint)
