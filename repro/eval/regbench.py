"""RegBench metrics (reference regbench.md §5), vectorised over a batch, teacher-forced.

For input position t (a non-pad token x_t), s_t is the automaton state reached by the current
string's prefix up to x_t (the start state after `|`), tracked incrementally by
`repro.data.regbench.track_states`, and V(s_t) the symbols with a transition out of s_t.

- accuracy: over positions whose target is a symbol (not `|`), argmax_v p_t(v) over all 20 ids is
  in V(s_t); predicting `|` or `.` is wrong. Micro-averaged over every such position.
- TVD: 1/2 sum_v |p_t(v) - q_t(v)| with q_t uniform on V(s_t), averaged over *every* input position,
  those whose target is `|` included (the original logs the L1, i.e. 2 TVD; the figures show TVD).

Reference rows come from in-context n-gram predictors, scored by the same `score`: the benchmark's own
back-off (`ngram_probs_original`, berlino/seq_icl `ngram.py`, which its evaluation logs for n = 3) and
a simple back-off (`ngram_probs`, the estimator of reference regbench.md §5 [SIM]). They differ in
three ways (the original's, then the simple one's):
- back-off: the original keeps the maximum-likelihood estimate of every continuation seen after the
  n-1 context, with the context's occurrences that have no continuation yet (the current one; those
  at a string's end) left in the denominator; that left-over mass goes to the unseen continuations in
  proportion to the next lower order's probabilities (renormalised over them), recursively (Katz's
  scheme without discounting). The simple one uses the highest order with any continuation alone and
  renormalises its counts to one, so an unseen continuation gets nothing once any was seen.
- counts: the original counts n-grams of every string padded with n-1 start symbols (`_`), the first
  string's start included, and its unigram level counts every letter read, the first one included;
  the simple one counts continuations x_{j+1} of earlier positions j, so the first letter of the
  sequence is never a continuation.
- mass: when every letter read so far has been seen after the context, the original's distribution
  sums to less than one (the left-over mass is dropped; TVD counts it); the simple one always sums to one.
Both predict only letters already read in the sequence (the simple one: uniform over the 18 letters
before any continuation). The original has no 1-gram (its unigram case fails for a non-empty string):
our 1-gram is its unigram level, letter frequencies of the sequence read so far.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from repro.data.regbench import N_LETTERS, PAD, SEP, V, track_states, valid_next


@dataclass
class Tally:
    """Running sums of one evaluation: correct greedy predictions over symbol targets, and the
    summed TVD over all positions."""

    correct: float = 0.0
    symbols: int = 0
    tvd: float = 0.0
    positions: int = 0

    def add(self, other: Tally) -> None:
        self.correct += other.correct
        self.symbols += other.symbols
        self.tvd += other.tvd
        self.positions += other.positions

    @property
    def accuracy(self) -> float:
        return self.correct / max(1, self.symbols)

    @property
    def mean_tvd(self) -> float:
        return self.tvd / max(1, self.positions)


def score(probs: torch.Tensor, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor) -> Tally:
    """Sums of both metrics for next-symbol distributions probs (B, T, V) on inputs x (B, T) with
    targets y (B, T; -1 at padding and at `|` targets) in automata delta (B, S, V)."""
    valid = valid_next(track_states(x, delta), delta)  # (B, T, V)
    positions = x != PAD  # (B, T): every real input position
    symbols = positions & (y >= 0)  # (B, T): targets that are symbols, not `|`
    hit = valid.gather(-1, probs.argmax(-1, keepdim=True)).squeeze(-1)  # (B, T)
    q = valid.float() / valid.sum(-1, keepdim=True).clamp(min=1)  # (B, T, V): uniform on V(s_t)
    tvd = 0.5 * (probs.float() - q).abs().sum(-1)  # (B, T)
    return Tally(
        correct=float(hit[symbols].sum()),
        symbols=int(symbols.sum()),
        tvd=float(tvd[positions].sum()),
        positions=int(positions.sum()),
    )


def _context_codes(x: torch.Tensor, k: int) -> torch.Tensor:
    """An integer per position naming the last k symbols of the current string up to x_t, padded
    with `.` (id 0, never an input) before the string's start; (B, T). k = 0 gives one code."""
    B, T = x.shape
    letter = (x != SEP) & (x != PAD)
    # position within the current string: letters since the last `|`, x_t included (0 at a `|`)
    run = torch.zeros(B, T, dtype=torch.int64)
    count = torch.zeros(B, dtype=torch.int64)
    for t in range(T):
        count = torch.where(letter[:, t], count + 1, torch.zeros_like(count))
        run[:, t] = count
    code = torch.zeros(B, T, dtype=torch.int64)
    for i in range(k):
        back = torch.roll(x, shifts=i, dims=1)  # back[:, t] = x[:, t - i]
        sym = torch.where(run > i, back, torch.zeros_like(back))
        code = code * V + sym
    return code


def ngram_probs(x: torch.Tensor, n: int) -> torch.Tensor:
    """In-context n-gram next-symbol distributions (B, T, V) with back-off, from inputs x (B, T).

    At position t the predictor counts, among earlier positions j < t of the same sequence, those
    whose last n-1 string symbols (padded at the string's start) equal position t's, and takes the
    symbols that followed them (x_{j+1}, known by position t). If none was seen it backs off to
    n-2 symbols, down to plain symbol frequencies, and to uniform over the 18 letters before any.
    As the original's in-context n-gram (reference §5), counts stay within strings: `|` is never a
    continuation, so the predictor never predicts it.
    """
    B, T = x.shape
    follow = torch.nn.functional.one_hot(torch.roll(x, -1, dims=1), V).float()  # (B, T, V): x_{j+1}
    follow[:, -1] = 0  # the last position's continuation is not in the input
    follow[..., SEP] = 0
    follow[..., PAD] = 0
    earlier = torch.ones(T, T, dtype=torch.bool).tril(-1)  # j < t
    probs = torch.zeros(B, T, V)
    probs[..., 1 : N_LETTERS + 1] = 1.0 / N_LETTERS
    decided = torch.zeros(B, T, dtype=torch.bool)
    for order in range(n, 0, -1):
        code = _context_codes(x, order - 1)  # (B, T)
        same = (code[:, :, None] == code[:, None, :]) & earlier  # (B, T, T): [t, j]
        counts = torch.bmm(same.float(), follow)  # (B, T, V)
        total = counts.sum(-1, keepdim=True)
        use = (total.squeeze(-1) > 0) & ~decided
        probs = torch.where(use[..., None], counts / total.clamp(min=1), probs)
        decided |= use
    return probs


START = -1  # the original's string-start padding symbol `_` (never a prediction)


def _original_distribution(counts: list[Counter], prefix: tuple[int, ...], vocab: list[int]) -> dict[int, float]:
    """The original's `get_next_char_prob` for every letter of `vocab` after `prefix` (n-1 symbols, n =
    len(prefix) + 1): counts[k] holds the k-gram counts (counts[0] unused)."""
    k = len(prefix) + 1
    if k == 1:
        total = sum(counts[1].values())  # the start padding is counted too (it cancels when backing off)
        return {c: counts[1][(c,)] / total for c in vocab}
    denominator = counts[k - 1][prefix]  # every occurrence of the context, continued or not
    probs = {c: counts[k][(*prefix, c)] / denominator for c in vocab if (*prefix, c) in counts[k]}
    missing = [c for c in vocab if c not in probs]
    if missing:
        left = 1.0 - sum(probs.values())
        lower = _original_distribution(counts, prefix[1:], vocab)
        norm = sum(lower[c] for c in missing)
        probs.update({c: left * lower[c] / norm for c in missing})
    return probs


def _original_sequence(ids: list[int], n: int) -> list[dict[int, float]]:
    """Next-letter distributions after each input of one sequence (padding removed), the original's
    `predict_with_n_gram_back_off(inputs, N=n)` counted incrementally: at position t its counts are those
    of inputs[: t + 1] split at `|`, each string padded with n - 1 start symbols."""
    counts = [Counter() for _ in range(n + 1)]
    text: list[int] = []

    def append(symbol: int) -> None:
        text.append(symbol)
        for k in range(1, min(n, len(text)) + 1):
            counts[k][tuple(text[-k:])] += 1

    def new_string() -> None:
        text.clear()
        for _ in range(n - 1):
            append(START)

    new_string()
    seen: set[int] = set()
    out = []
    for symbol in ids:
        if symbol == SEP:
            new_string()
        else:
            append(symbol)
            seen.add(symbol)
        prefix = tuple(text[len(text) - (n - 1) :]) if n > 1 else ()
        out.append(_original_distribution(counts, prefix, sorted(seen)))
    return out


def ngram_probs_original(x: torch.Tensor, n: int) -> torch.Tensor:
    """The benchmark's in-context n-gram with its back-off (module doc): next-symbol distributions
    (B, T, V) for inputs x (B, T); zero at padding positions. A pure-Python count per sequence
    (incremental, O(T n V) per sequence, where the original recounts the prefix at every position)."""
    B, T = x.shape
    probs = torch.zeros(B, T, V, dtype=torch.float64)
    for b in range(B):
        ids = [int(i) for i in x[b] if i != PAD]
        for t, dist in enumerate(_original_sequence(ids, n)):
            probs[b, t, list(dist)] = torch.tensor(list(dist.values()), dtype=torch.float64)
    return probs.float()
