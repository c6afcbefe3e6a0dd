"""The text-data layer: loading rules, the missing-data error, tokenizers, token files, batches.

Every test builds its own small corpus; only the last one reads the real TinyStories sample and
skips where it is absent. Nothing here touches the network (conftest sets the HF offline flags).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from repro.data import text as T
from repro.data import tokenizer as tk
from repro.errors import UserError

NAMES = ["Lily", "Ben", "Tom", "Mia", "Sue", "Max"]
THINGS = ["ball", "kite", "red box", "little cat", "shiny car", "big tree"]
SHARED_TINY = Path("/work/shared/data/tinystories")


def stories(n: int) -> list[str]:
    """Small TinyStories-like documents with two paragraphs each."""
    out = []
    for i in range(n):
        name, thing = NAMES[i % len(NAMES)], THINGS[(i * 5) % len(THINGS)]
        out.append(
            f"Once upon a time, {name} found a {thing} (story {i}). It was fun.\n\n"
            f"{name} played with the {thing} all day. Then {name} went home, happy. ünï ✓"
        )
    return out


def tinystories_txt(path: Path, docs: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(docs) + "\n")  # the HF export: a story per line, blank lines inside
    return path


# ---- documents ----------------------------------------------------------------------------------


def test_split_rules():
    assert T.split_documents("a b\n\nc\nd e\n", "line") == ["a b\n\nc", "d e"]
    assert T.split_documents("a\n\nb\n \nc", "blank") == ["a", "b", "c"]
    assert T.split_documents("a\n<|endoftext|>\nb<|endoftext|>", "eot") == ["a", "b"]
    assert T.split_documents(" x \n\n", "none") == ["x"]
    wiki = " = One = \r\n Body one . \r\n = = Part = = \r\n More . \r\n = Two = \r\n Body two . \r\n"
    assert T.split_documents(wiki, "wikitext") == [
        "= One = \n Body one . \n = = Part = = \n More .",
        "= Two = \n Body two .",
    ]
    with pytest.raises(UserError, match="doc_split"):
        T.split_documents("x", "words")  # type: ignore[arg-type]


def test_tinystories_txt_rules(tmp_path):
    docs = stories(12)
    got = T.read_documents(tinystories_txt(tmp_path / "a.txt", docs), "line")
    assert got == docs  # a story per line, paragraphs kept inside
    # Blank lines only (like tinystories_val.txt): boundaries are lost, so one paragraph each.
    (tmp_path / "b.txt").write_text("\n\n".join(docs))
    assert len(T.read_documents(tmp_path / "b.txt", "line")) == 2 * len(docs)
    # The official .txt format wins when present.
    (tmp_path / "c.txt").write_text("\n<|endoftext|>\n".join(docs))
    assert T.read_documents(tmp_path / "c.txt", "line") == docs
    assert T.read_documents(tmp_path / "a.txt", "line", doc_split="none") == ["\n".join(docs)]


def test_record_files(tmp_path):
    docs = stories(5)
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)))
    (tmp_path / "b.json").write_text(json.dumps([{"text": d} for d in docs]))
    assert T.read_documents(tmp_path / "a.jsonl", "line") == docs
    assert T.read_documents(tmp_path / "b.json", "line") == docs
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"text": docs}), tmp_path / "c.parquet")
    assert T.read_documents(tmp_path / "c.parquet", "line") == docs
    (tmp_path / "d.jsonl").write_text(json.dumps({"story": "x"}))
    with pytest.raises(UserError, match="'text'"):
        T.read_documents(tmp_path / "d.jsonl", "line")


def test_directory_splits_and_carving(tmp_path):
    train, val = stories(20), stories(30)[20:]
    d = tmp_path / "ts"
    tinystories_txt(d / "tiny_stories.txt", train)  # no split word in the name: train
    (d / "TinyStories-valid.jsonl").write_text("\n".join(json.dumps({"text": v}) for v in val))
    assert T.load_texts("tinystories", "train", str(d)) == train
    assert T.load_texts("tinystories", "validation", str(d)) == val
    assert T.load_texts("tinystories", "test", str(d)) == val  # validation stands in for test
    # One file: the last val_fraction of its documents is validation, disjoint from train.
    f = str(d / "tiny_stories.txt")
    tr, va = T.load_texts("tinystories", "train", f), T.load_texts("tinystories", "val", f, val_fraction=0.25)
    assert T.load_texts("tinystories", "train", f, val_fraction=0.25) + va == train
    assert len(va) == 5 and len(tr) == 18
    # Evaluation files only: no training split.
    e = tmp_path / "wiki"
    e.mkdir()
    (e / "wiki.test.raw").write_text(" = A = \n a . \n = B = \n b . \n")
    assert T.load_texts("simple-wiki", "validation", str(e)) == ["= A = \n a .", "= B = \n b ."]
    with pytest.raises(UserError, match="no training file"):
        T.load_texts("simple-wiki", "train", str(e))


def test_max_chars_keeps_whole_documents_from_the_start(tmp_path):
    docs = stories(10)
    f = tinystories_txt(tmp_path / "train.txt", docs)
    cap = len(docs[0]) + len(docs[1]) + 10
    got = T.load_texts("tinystories", "train", str(f), max_chars=cap, val_fraction=0)
    assert got[:2] == docs[:2] and got[2] == docs[2][:10] and len(got) == 3


def test_data_dir_lookup(tmp_path):
    docs = stories(10)
    tinystories_txt(tmp_path / "tinystories" / "tiny_stories.txt", docs)
    (tmp_path / "wikitext2_raw").mkdir()
    (tmp_path / "wikitext2_raw" / "wiki.test.raw").write_text(" = A = \r\n a . \r\n")
    data_dir = str(tmp_path)
    assert T.load_texts("tinystories", "train", val_fraction=0.2, data_dir=data_dir) == docs[:8]
    assert T.load_texts("simple-wiki", "validation", data_dir=data_dir) == ["= A = \n a ."]
    with pytest.raises(UserError, match="does not exist"):
        T.load_texts("tinystories", "train", str(tmp_path / "nope"))


def test_missing_data_is_one_quick_user_error(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    # An empty HF cache, so a developer's cached copy is never loaded here.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was contacted")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", no_network)
    for name, hub_id in (("tinystories", "roneneldan/TinyStories"), ("simple-wiki", "wikimedia/wikipedia")):
        start = time.time()
        with pytest.raises(UserError) as err:
            T.load_texts(name, "train")
        msg = str(err.value)
        assert time.time() - start < 10
        assert name in msg and hub_id in msg and "--set data.path=" in msg and "--data-dir" in msg
        assert msg.count(". ") == 0 and msg.endswith(".")  # one sentence
    with pytest.raises(UserError, match="--set data.path="):
        T.load_texts("text", "train")
    with pytest.raises(UserError, match="choose one of"):
        T.load_texts("tinystorys", "train")


def test_hub_splits_are_mapped_and_carved(monkeypatch):
    """The hub path on an in-memory stand-in: which split is read, and carving a single split."""
    import datasets

    calls = []

    def fake_load(hub_id, config=None, split="train"):
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_dict({"text": [f" doc {split} {i} " for i in range(10)], "id": list(range(10))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert T.load_texts("tinystories", "test")[0] == "doc validation 0"  # no test split: validation
    assert calls[-1] == ("roneneldan/TinyStories", None, "validation")
    assert T.load_texts("simple-wiki", "train", val_fraction=0.2) == [f"doc train {i}" for i in range(8)]
    assert T.load_texts("simple-wiki", "validation", val_fraction=0.2) == ["doc train 8", "doc train 9"]
    assert calls[-1] == ("wikimedia/wikipedia", "20231101.simple", "train")
    assert T.load_texts("tinystories", "train", max_chars=15) == ["doc train 0", "doc "]


# ---- tokenizers ---------------------------------------------------------------------------------

SAMPLE = "Hello  world!\n\n  ünïcode 日本語 ✓\ttabs, end. "


def test_byte_tokenizer_round_trip():
    tok = tk.byte_tokenizer()
    ids = tok.encode(SAMPLE)
    assert max(ids) < 256 and tok.vocab_size == 257 and tok.eot_id == 256
    assert tok.decode(ids) == SAMPLE
    assert tok.decode([*tok.encode("a"), tok.eot_id, *tok.encode("b")]) == "a<|endoftext|>b"
    assert tok.encode_batch(["a", "bc"]) == [[97], [98, 99]]


def test_bpe_round_trip_and_cache_reuse(tmp_path, monkeypatch):
    texts = stories(200)
    tok = tk.bpe_tokenizer(texts, vocab_size=300, cache_dir=tmp_path)
    assert tok.vocab_size == 300 and tok.eot_id == 0 and tok.name.startswith("bpe300-")
    for s in (SAMPLE, texts[3], ""):
        assert tok.decode(tok.encode(s)) == s
    assert len(tok.encode(texts[3])) < len(texts[3].encode())  # it learned merges

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the tokenizer was cached")

    monkeypatch.setattr(tk, "_train_bpe", no_training)
    again = tk.bpe_tokenizer(texts, vocab_size=300, cache_dir=tmp_path)
    assert again.name == tok.name and again.encode(SAMPLE) == tok.encode(SAMPLE)
    assert len(list((tmp_path / "tokenizers").glob("*.json"))) == 1
    with pytest.raises(AssertionError, match="retrained"):  # other texts: a new tokenizer
        tk.bpe_tokenizer(texts[:100], vocab_size=300, cache_dir=tmp_path)


def test_auto_falls_back_to_bpe_without_gpt2(tmp_path, monkeypatch):
    monkeypatch.setattr(tk, "gpt2_tokenizer", lambda: None)
    assert tk.get_tokenizer("auto", stories(50), 300, tmp_path).name.startswith("bpe300-")
    with pytest.raises(UserError, match="data.tokenizer=bpe"):
        tk.get_tokenizer("gpt2", stories(50), 300, tmp_path)


def test_vocab_must_fit_uint16(tmp_path):
    with pytest.raises(UserError, match="uint16"):
        tk.Tokenizer("big", 70_000, 0, lambda t: [], lambda i: "")
    with pytest.raises(UserError, match="vocab_size"):
        tk.bpe_tokenizer(stories(5), vocab_size=70_000, cache_dir=tmp_path)


# ---- token files and windows --------------------------------------------------------------------


def test_token_file_written_once_and_reused(tmp_path, monkeypatch):
    docs, tok = ["ab", "c", "def"], tk.byte_tokenizer()
    path = T.token_file(docs, tok, tmp_path, "x")
    data = np.fromfile(path, dtype=np.uint16)
    assert data.tolist() == [97, 98, 256, 99, 256, 100, 101, 102, 256]  # end-of-text after each
    win = T.TokenWindows.open(path)
    assert win.doc_starts.tolist() == [0, 3, 5] and win.meta["documents"] == 3
    assert win.meta["bytes_per_token"] == 1.0 and win.tokens.dtype == np.uint16
    assert not list(tmp_path.rglob("*.tmp*"))  # temporaries renamed away
    mtime = path.stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(T, "build_token_file", no_build)
    assert T.token_file(docs, tok, tmp_path, "x") == path and path.stat().st_mtime_ns == mtime
    with pytest.raises(AssertionError, match="tokenized again"):  # other documents: a new file
        T.token_file(docs[:2], tok, tmp_path, "x")


def test_batch_is_a_function_of_seed_and_step():
    win = T.TokenWindows(np.arange(5000, dtype=np.uint16))
    x, y = win.batch(step=7, batch_size=4, block_size=32, seed=1)
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.long
    assert torch.equal(y, x + 1)  # targets are the next tokens (the stream counts up)
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, y2 = win.batch(step=7, batch_size=4, block_size=32, seed=1)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, win.batch(step=8, batch_size=4, block_size=32, seed=1)[0])
    assert not torch.equal(x, win.batch(step=7, batch_size=4, block_size=32, seed=2)[0])
    with pytest.raises(UserError, match="block_size"):
        T.TokenWindows(np.arange(10, dtype=np.uint16)).batch(0, 2, 10)


def test_uint16_ids_survive_the_round_trip():
    stream = np.array([0, 65535, 40000, 65534, 1, 2], dtype=np.uint16)
    x, y = T.TokenWindows(stream).sequential_windows(block_size=5)
    assert x.tolist() == [[0, 65535, 40000, 65534, 1]] and y[0, -1].item() == 2


def test_sequential_and_document_windows():
    win = T.TokenWindows(np.arange(100, dtype=np.uint16), doc_starts=np.array([0, 10, 50, 95]))
    x, y = win.sequential_windows(block_size=8)
    assert x.shape == (12, 8) and x[1, 0] == 8 and y[11, -1] == 96  # non-overlapping, from 0
    assert win.sequential_windows(block_size=8, max_windows=3)[0].shape == (3, 8)
    x, y = win.document_windows(block_size=8)
    assert x[:, 0].tolist() == [0, 10, 50]  # 95 is too short
    assert win.document_windows(block_size=20)[0][:, 0].tolist() == [10, 50]  # whole documents
    assert win.document_windows(block_size=20, whole=False)[0][:, 0].tolist() == [0, 10, 50]


def test_random_spans_lie_inside_documents_and_follow_the_seed():
    # documents [0, 10), [10, 50), [50, 95), [95, 100); the last token of each is its end-of-text
    win = T.TokenWindows(np.arange(100, dtype=np.uint16), doc_starts=np.array([0, 10, 50, 95]))
    spans = win.random_spans(12, 1000, seed=5)
    # inside [10, 50): starts 11..37 (27 spans); inside [50, 95): starts 51..82 (32); none elsewhere
    assert len(spans) == 27 + 32 and len({tuple(s) for s in spans.tolist()}) == 59
    for s in spans:
        doc = 10 if s[0] < 50 else 50
        end = 49 if doc == 10 else 94
        assert s[0] > doc and s[-1] < end and np.array_equal(s, np.arange(s[0], s[0] + 12))
    assert np.array_equal(win.random_spans(12, 7, seed=5), win.random_spans(12, 7, seed=5))
    assert not np.array_equal(win.random_spans(12, 7, seed=5), win.random_spans(12, 7, seed=6))
    anywhere = win.random_spans(12, 1000, seed=5, within_documents=False)
    assert len(anywhere) == 100 - 12 + 1  # every offset of the stream once
    x, y = win.random_windows(8, 4, seed=1)
    assert x.shape == (4, 8) and torch.equal(y[:, :-1], x[:, 1:])
    assert win.random_spans(60, 3, seed=0).shape == (0, 60)  # no document is long enough


def test_prepare_lm_data_shares_one_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setattr(tk, "gpt2_tokenizer", lambda: None)
    tinystories_txt(tmp_path / "ts" / "train.txt", stories(60))
    (tmp_path / "wiki.raw").write_text("".join(f" = T{i} = \n Body {i} of the article . \n" for i in range(9)))
    cfg = T.TextDataConfig(path=str(tmp_path / "ts"), vocab_size=300, cache_dir=str(tmp_path / "c"))
    ood = T.TextDataConfig(dataset="simple-wiki", path=str(tmp_path / "wiki.raw"), val_fraction=1.0)
    tok, splits = T.prepare_lm_data(cfg, ood)
    assert tok.name.startswith("bpe300-") and set(splits) == {"train", "validation", "simple-wiki"}
    assert splits["train"].meta["documents"] == 54 and splits["validation"].meta["documents"] == 6
    assert splits["simple-wiki"].meta["documents"] == 9
    assert all(s.meta["tokenizer"] == tok.name for s in splits.values())
    assert tok.decode(splits["simple-wiki"].tokens[: splits["simple-wiki"].doc_starts[1] - 1]) == (
        "= T0 = \n Body 0 of the article ."
    )
    files = sorted(p.name for p in (tmp_path / "c").rglob("*") if p.is_file())
    tok2, _ = T.prepare_lm_data(cfg, ood)
    assert tok2.name == tok.name and sorted(p.name for p in (tmp_path / "c").rglob("*") if p.is_file()) == files


@pytest.mark.skipif(not SHARED_TINY.is_dir(), reason="needs the shared TinyStories sample")
def test_real_tinystories_sample():
    data_dir = str(SHARED_TINY.parent)
    train = T.load_texts("tinystories", "train", data_dir=data_dir)
    # every train file of the folder is read (the sample grew a second file, TinyStories-train-stories1000-2313.txt)
    lily = [t for t in train if t.startswith("One day, a little girl named Lily found a needle")]
    assert len(train) > 1000 and len(lily) == 1
    assert "\n\n" in lily[0]  # paragraphs stay inside a story
    val = T.load_texts("tinystories", "validation", data_dir=data_dir)
    assert val[0].startswith("Spot. Spot saw the shiny car") and len(val) > 1000  # one per paragraph
    assert os.environ["HF_HUB_OFFLINE"]  # still offline: the local folder was used
