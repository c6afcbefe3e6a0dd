"""RegBench (Akyurek et al. 2024): in-context learning of random regular languages.

Reference: ../shared/reference/regbench.md §1-3. Each "environment" is one random DFA, minimised and
trimmed, used as a probabilistic automaton in which every defined next symbol is equally likely.
One sequence per DFA: 10-19 random walks from the start state (lengths 1-49), joined by `|`.

Vocabulary (20 ids, sorted by character as in the original): `.` = 0 (padding), `a`..`r` = 1..18,
`|` = 19. Every state accepts, so a string is valid iff each of its transitions is defined.

Splits come from three independent random streams derived from the seed (test, validation, train),
so the test automata are the same for every training-set size, and the train set of size N is the
first N automata of the train stream (the sizes are nested). Languages are kept disjoint across
splits: a drawn automaton whose minimal DFA (in canonical numbering) already sits in an earlier
split is drawn again. Deliberate deviations from the original (which re-draws the test set per N and
has no isomorphism check): recorded in the experiment's report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

VOCAB = ".abcdefghijklmnopqr|"
PAD, SEP = 0, 19
N_LETTERS = 18  # ids 1..18
V = len(VOCAB)  # 20
MAX_STATES = 12

# sampling ranges, inclusive (the original's numpy `integers(lo, hi)` excludes hi; reference §1-2)
STATES = (4, 12)
ALPHABET = (4, 18)
OUT_DEGREE = (1, 3)
STRINGS = (10, 19)
STRING_LENGTH = (1, 49)


def sample_dfa(rng: np.random.Generator) -> np.ndarray:
    """A raw random DFA as a transition table (S, V) of next states, -1 where undefined; start 0.

    S ~ U{4..12} states, an alphabet of U{4..18} letters drawn without replacement, U{1..3} edges out
    of each state with distinct symbols and distinct targets among the *other* states (reference §1).
    """
    n_states = int(rng.integers(STATES[0], STATES[1] + 1))
    alphabet = rng.choice(
        np.arange(1, N_LETTERS + 1), size=int(rng.integers(ALPHABET[0], ALPHABET[1] + 1)), replace=False
    )
    delta = np.full((n_states, V), -1, dtype=np.int64)
    for s in range(n_states):
        k = int(rng.integers(OUT_DEGREE[0], OUT_DEGREE[1] + 1))
        symbols = rng.choice(alphabet, size=k, replace=False)
        targets = rng.choice(np.delete(np.arange(n_states), s), size=k, replace=False)
        delta[s, symbols] = targets
    return delta


def minimize(delta: np.ndarray) -> np.ndarray:
    """The minimal trimmed DFA of a partial all-accepting DFA, states renumbered canonically.

    As pythomata's `_minimize()._trim()` (reference §1): complete with a non-accepting sink, merge
    equivalent states (Moore's partition refinement: split classes by their successors' classes
    until nothing splits; at most 13 states here, so the quadratic algorithm costs nothing), then
    drop the sink and every unreachable class. States are numbered in breadth-first order from the
    start over symbols in id order, so two automata of the same language get the same table.
    """
    S = delta.shape[0]
    full = np.vstack([np.where(delta >= 0, delta, S), np.full((1, V), S)])  # (S + 1, V); row S = sink
    part = np.r_[np.zeros(S, dtype=np.int64), 1]  # accepting | sink
    while True:
        signature = np.concatenate([part[:, None], part[full]], axis=1)  # (S + 1, 1 + V)
        _, refined = np.unique(signature, axis=0, return_inverse=True)
        refined = refined.reshape(-1)
        if refined.max() == part.max():
            break
        part = refined
    sink = part[S]
    order = {int(part[0]): 0}  # class -> canonical id, by BFS from the start state
    reps = [0]
    queue = [0]
    while queue:
        rep = queue.pop(0)
        for v in range(V):
            c = int(part[full[rep, v]])
            if c != sink and c not in order:
                order[c] = len(order)
                reps.append(int(np.nonzero(part == c)[0][0]))
                queue.append(reps[-1])
    out = np.full((len(order), V), -1, dtype=np.int64)
    for i in order.values():
        rep = reps[i]
        for v in range(V):
            target = int(part[full[rep, v]])
            if target != sink:
                out[i, v] = order[target]
    return out


def sample_walks(delta: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One sequence: 10-19 strings of length 1-49, each a uniform random walk from the start state,
    joined by `|` (no BOS, no EOS, no trailing separator). Returns the ids (L,) and the state reached
    after each token (L,): the string's state so far, or the start state after a `|`."""
    ids, states = [], []
    for k in range(int(rng.integers(STRINGS[0], STRINGS[1] + 1))):
        if k:
            ids.append(SEP)
            states.append(0)
        s = 0
        for _ in range(int(rng.integers(STRING_LENGTH[0], STRING_LENGTH[1] + 1))):
            options = np.nonzero(delta[s] >= 0)[0]
            v = int(options[rng.integers(len(options))])
            s = int(delta[s, v])
            ids.append(v)
            states.append(s)
    return np.array(ids, dtype=np.int64), np.array(states, dtype=np.int64)


@dataclass
class RegBenchSplit:
    """Sequences of one split: `ids[i]` (L_i,), its automaton `delta[i]` (MAX_STATES, V), padded
    with -1 rows, and the states after each token `states[i]` (L_i,) recorded by the generator."""

    ids: list[np.ndarray]
    states: list[np.ndarray]
    delta: np.ndarray  # (N, MAX_STATES, V)

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.ids])

    def subset(self, n: int) -> RegBenchSplit:
        return RegBenchSplit(self.ids[:n], self.states[:n], self.delta[:n])

    def batch(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sequences `index` padded to their own longest: inputs (B, T) (pad `.`), targets (B, T)
        (-1 at padding and where the target is `|`: separators are never trained, reference §2)
        and automata (B, MAX_STATES, V)."""
        T = max(len(self.ids[i]) for i in index) - 1
        x = np.full((len(index), T), PAD, dtype=np.int64)
        y = np.full((len(index), T), -1, dtype=np.int64)
        for b, i in enumerate(index):
            seq = self.ids[i]
            x[b, : len(seq) - 1] = seq[:-1]
            y[b, : len(seq) - 1] = np.where(seq[1:] == SEP, -1, seq[1:])
        return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(self.delta[index])


def _stream(seed: int, split: int) -> np.random.Generator:
    return np.random.default_rng([seed, split])


def make_split(seed: int, split: int, n: int, exclude: set[bytes]) -> tuple[RegBenchSplit, set[bytes]]:
    """n automata from stream `split` of `seed`, none whose language is in `exclude`. Each automaton
    gets its own generator seeded from the stream (as the original re-seeds each DFA's sampler)."""
    rng = _stream(seed, split)
    ids, states, tables, seen = [], [], [], set(exclude)
    while len(ids) < n:
        sub = np.random.default_rng(int(rng.integers(0, 2**32)))
        delta = minimize(sample_dfa(sub))
        key = delta.tobytes()
        if key in seen:
            continue
        seen.add(key)
        seq, st = sample_walks(delta, sub)
        ids.append(seq)
        states.append(st)
        tables.append(np.pad(delta, ((0, MAX_STATES - len(delta)), (0, 0)), constant_values=-1))
    table = np.stack(tables) if tables else np.zeros((0, MAX_STATES, V), dtype=np.int64)
    return RegBenchSplit(ids, states, table), seen - set(exclude)


def make_splits(seed: int, n_train: int, n_val: int, n_test: int) -> dict[str, RegBenchSplit]:
    """Test, validation and train splits of disjoint languages. The test split depends only on
    (seed, n_test), the validation split only on (seed, n_test, n_val): neither moves with n_train,
    and train of size N is a prefix of train of any larger size."""
    test, used = make_split(seed, 0, n_test, set())
    val, more = make_split(seed, 1, n_val, used)
    train, _ = make_split(seed, 2, n_train, used | more)
    return {"train": train, "validation": val, "test": test}


def track_states(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """States s_t after reading inputs x (B, T) in automata delta (B, S, V), one gather per step
    (never re-walking a prefix): s_t = 0 after `|`, else delta[s_{t-1}, x_t]. An undefined
    transition or padding leaves -1 (no valid continuation). Returns (B, T) int64."""
    B, T = x.shape
    rows = torch.arange(B)
    s = torch.zeros(B, dtype=torch.int64)
    out = torch.empty(B, T, dtype=torch.int64)
    for t in range(T):
        step = delta[rows, s.clamp(min=0), x[:, t]]  # (B,)
        s = torch.where(x[:, t] == SEP, 0, torch.where(s < 0, -1, step))
        out[:, t] = s
    return out


def valid_next(states: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """V(s_t) as a mask (B, T, V): symbols with a transition out of s_t (none where s_t = -1)."""
    rows = torch.arange(states.shape[0])[:, None]  # (B, 1)
    mask = delta[rows, states.clamp(min=0)] >= 0  # (B, T, V)
    return mask & (states >= 0)[..., None]
