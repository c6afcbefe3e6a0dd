"""Synthetic key -> value retrieval documents mixed into real text, for long-context tests that
tiny models can pass (RULER's QA and needle tasks are out of their reach).

A document of L+1 tokens is

    [FACT] k1 v1  [FACT] k2 v2 ... [FACT] kK vK   <filler text>   [ASK] k_p1 v_p1 ... [ASK] k_pK v_pK

with K distinct keys, each value stated once at the start, and every key asked once at the end, in a
random order: the answer to each question is ~L tokens away, and the text between is real text (a
window of the corpus). Keys, values and the two markers are symbols appended after the tokenizer's
vocabulary, so they never occur in the filler and the text tokenizer is untouched.

Values are drawn uniformly for each key and document, so no key -> value association can be stored in
the weights: an answer above chance (1/n_values, or 1/K by copying any stated value) must come from the
context. Evaluation documents are built from the validation text and fixed by a seed. Optionally
(`holdout_every` > 0) pairs with (k + v) % holdout_every == 0 are held out: training documents never
contain them and evaluation documents contain only them. That is stricter but not neutral: a model
then learns that those values never follow those keys, a prior against the right answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from repro.data.text import TokenWindows, _step_seed
from repro.errors import UserError

PairSplit = Literal["train", "heldout"]


@dataclass
class RetrievalConfig:
    n_keys: int = 32  # key symbols
    n_values: int = 32  # value symbols (at least n_facts: a document's values are distinct)
    n_facts: int = 4  # K: pairs stated at the start of a document, each asked once at the end
    holdout_every: int = 0  # > 0: pairs with (k + v) % holdout_every == 0 appear only in evaluation documents


class RetrievalTask:
    """The symbols (ids from `base` on) and the document builder."""

    def __init__(self, cfg: RetrievalConfig, base: int):
        if cfg.n_facts > min(cfg.n_keys, cfg.n_values):
            raise UserError(
                f"retrieval.n_facts ({cfg.n_facts}) cannot exceed retrieval.n_keys ({cfg.n_keys}) "
                f"or retrieval.n_values ({cfg.n_values}): a document's keys and values are distinct."
            )
        if cfg.holdout_every and not 2 <= cfg.holdout_every <= cfg.n_values:
            raise UserError(
                f"retrieval.holdout_every ({cfg.holdout_every}) must be 0 (no held-out pairs) or between 2 and "
                f"retrieval.n_values ({cfg.n_values}), so that every key has training and held-out values."
            )
        self.cfg = cfg
        self.base = base  # the text ids are 0 .. base - 1
        self.keys = base + np.arange(cfg.n_keys)
        self.values = base + cfg.n_keys + np.arange(cfg.n_values)
        self.fact_id = base + cfg.n_keys + cfg.n_values
        self.ask_id = self.fact_id + 1
        self.vocab_size = self.ask_id + 1  # the tokenizer's ids, then the symbols
        k, v = np.arange(cfg.n_keys)[:, None], np.arange(cfg.n_values)[None, :]
        self._heldout = (k + v) % max(1, cfg.holdout_every) == 0  # (n_keys, n_values)

    def min_length(self) -> int:
        """The shortest context that holds the facts, the questions and one filler token."""
        return 6 * self.cfg.n_facts

    def document(self, filler: np.ndarray, rng: np.random.Generator, pairs: PairSplit) -> np.ndarray:
        """One document of len(filler) + 6K tokens: facts, `filler`, questions (module docstring)."""
        K = self.cfg.n_facts
        keys = rng.choice(self.cfg.n_keys, size=K, replace=False)
        if not self.cfg.holdout_every:
            values = rng.choice(self.cfg.n_values, size=K, replace=False)  # distinct: each stated once
        else:
            allowed = self._heldout[keys] if pairs == "heldout" else ~self._heldout[keys]  # (K, n_values)
            values = np.zeros(K, dtype=np.int64)
            for i, row in enumerate(allowed):
                free = np.flatnonzero(row & ~np.isin(np.arange(len(row)), values[:i]))
                values[i] = rng.choice(free if len(free) else np.flatnonzero(row))  # a repeat only if forced
        facts = np.stack([np.full(K, self.fact_id), self.keys[keys], self.values[values]], 1)  # (K, 3)
        order = rng.permutation(K)
        asks = np.stack([np.full(K, self.ask_id), self.keys[keys[order]], self.values[values[order]]], 1)
        return np.concatenate([facts.ravel(), filler.astype(np.int64), asks.ravel()])

    def documents(
        self, text: TokenWindows, n: int, length: int, seed: int, pairs: PairSplit, span: tuple[float, float] = (0, 1)
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`n` documents of `length` input tokens with filler from the fraction `span` of `text`:
        x, y (n, length) with y the next tokens, and answer (n, length) bool, True where y is the
        value of a question. A pure function of `seed` (the same seed gives the same documents)."""
        if length < self.min_length():
            raise UserError(
                f"context {length} is too short for {self.cfg.n_facts} retrieval facts; "
                f"it needs at least {self.min_length()} tokens."
            )
        fill = length + 1 - 6 * self.cfg.n_facts
        lo, hi = int(span[0] * len(text)), int(span[1] * len(text)) - fill
        if hi <= lo:
            raise UserError(
                f"the text has too few tokens ({len(text):,}) for {fill}-token filler windows; use more text."
            )
        rng = np.random.default_rng(_step_seed(seed, n))
        starts = rng.integers(lo, hi, size=n)
        docs = np.stack([self.document(np.asarray(text.tokens[s : s + fill]), rng, pairs) for s in starts])
        docs_t = torch.from_numpy(docs)  # (n, length + 1)
        x, y = docs_t[:, :-1].contiguous(), docs_t[:, 1:].contiguous()  # (n, length) each
        # a question's value follows its key: the answer positions are where x is a key inside the questions
        answer = torch.zeros_like(x, dtype=torch.bool)
        K = self.cfg.n_facts
        answer[:, length + 1 - 3 * K + 1 :: 3] = True  # the inputs k_p1, k_p2, ... of the questions
        return x, y, answer


def mixed_batch(
    task: RetrievalTask,
    text: TokenWindows,
    step: int,
    batch_size: int,
    length: int,
    fraction: float,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch: round(fraction * batch_size) retrieval documents (training pairs), the rest
    plain text windows; a pure function of (seed, step), as the training loop requires."""
    n_docs = round(fraction * batch_size)
    x, y = text.batch(step, batch_size - n_docs, length, seed=seed) if n_docs < batch_size else (None, None)
    if n_docs == 0:
        return x, y
    dx, dy, _ = task.documents(text, n_docs, length, _step_seed(seed + 1, step), "train")
    if x is None:
        return dx, dy
    return torch.cat([dx, x]), torch.cat([dy, y])


@torch.no_grad()
def retrieval_accuracy(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, answer: torch.Tensor, batch_size: int = 16
) -> float:
    """Share of questions whose value is the model's most likely next token (teacher forced: each
    question is scored given the questions before it, as greedy decoding of the value would be)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits = total = 0
    for i in range(0, len(x), batch_size):
        xb, yb, ab = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device), answer[i : i + batch_size]
        pred = model(xb).argmax(-1)  # (b, T)
        hits += int((pred == yb)[ab.to(device)].sum())
        total += int(ab.sum())
    model.train(was_training)
    return hits / max(1, total)
