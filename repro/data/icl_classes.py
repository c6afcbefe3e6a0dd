"""Synthetic in-context classification episodes that a CPU can train on from scratch.

An episode is `x1 D y1 D x2 D y2 D ... xq D ?`: items `x` are short token strings drawn around class
prototypes (each token resampled with probability `noise_fraction`, so two items of a class rarely
coincide), `y` a label token, `D` the delimiter (one of two tokens: the paper's newline / space
prompts). Demonstrations come in *rounds*, one item of every class of the episode per round, as in
the Memory Mosaics v2 / LongICLBench protocol (reference evaluations.md §3): an n-shot prompt holds n
rounds, classes in the episode's order (`ordered`) or shuffled within each round (`shuffled`).

Labels:
- **semantic**: every class keeps one label token from a pool of `n_labels` for the whole world
  (several classes share a token; the classes of one episode never do), so a model can learn the
  class -> label map of the training classes in its weights;
- **anonymous**: `ways` tokens (`class_0` .. `class_{K-1}`) assigned to the episode's classes by a
  permutation drawn afresh for every episode, so only the context tells which is which.

Training data follows Chan et al. 2022, "Data distributional properties drive emergent in-context
learning in transformers" (arXiv 2205.05055; code google-deepmind/emergent_in_context_learning):
- many classes with Zipfian frequencies (p(class of rank r) ~ r^-alpha, alpha = 1: the exponent
  at which their transformer learned both in context and in weights);
- bursty sequences: a share `1 - iid_fraction` of the sequences are few-shot problems (their
  p_bursty = 0.9), the others draw every item i.i.d. from the Zipfian class distribution (their
  `non_bursty_type='zipfian'`);
- within-class variation (their Omniglot exemplars and pixel noise; our token noise);
- held-out classes never seen in training (their `eval_fewshot_holdout`), and a disjoint set of
  validation classes, ours, for choosing learning rates without touching the test classes.
Ours beyond theirs: a share `anonymous_fraction` of the bursty episodes has anonymous labels (their
`labeling_rare='unfixed'`); a bursty sequence holds `train_shots` items of each of its classes (their
3) in a random order, not in rounds (in rounds a model can copy the label one round back by position,
which no test query allows); every label of a training sequence is a target (a query for the items
before it), and the sequence ends with a query, so it is exactly as long as the longest test prompt.

Everything is a pure function of (seed, batch index), so a resumed run sees the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from repro.errors import UserError

LABEL_KINDS = ("semantic", "anonymous")
DELIMITERS = ("newline", "space")
ORDERS = ("shuffled", "ordered")
PROMPTS = tuple(f"{d}-{o}" for d in DELIMITERS for o in ORDERS)  # the paper's 4-prompt sweep
CLASS_SETS = ("heldout", "train", "validation", "train-validation")  # test sets, then validation sets
BOS, NEWLINE, SPACE = 0, 1, 2


@dataclass
class WorldConfig:
    """The classes, their items and labels, and the training mixture."""

    train_classes: int = 256
    val_classes: int = 32
    test_classes: int = 64
    n_labels: int = 64  # semantic label tokens, shared by all classes
    item_len: int = 4  # tokens per item
    item_vocab: int = 64  # tokens items are made of
    noise_fraction: float = 0.35  # each item token is resampled with this probability
    min_distance: int = 3  # prototypes differ in at least this many positions
    ways: int = 4  # classes per episode (K); chance is 1 / K
    train_shots: int = 16  # rounds per training sequence (the longest test prompt)
    zipf_exponent: float = 1.0
    iid_fraction: float = 0.1  # non-bursty sequences (Chan et al.: 1 - p_bursty)
    anonymous_fraction: float = 0.5  # bursty episodes with anonymous labels

    @property
    def vocab_size(self) -> int:
        return 3 + self.ways + self.n_labels + self.item_vocab

    @property
    def anon_base(self) -> int:
        return 3

    @property
    def label_base(self) -> int:
        return 3 + self.ways

    @property
    def item_base(self) -> int:
        return 3 + self.ways + self.n_labels

    def demo_len(self) -> int:
        return self.item_len + 3  # item, delimiter, label, delimiter

    def seq_len(self, shots: int) -> int:
        """Tokens of an n-shot prompt: BOS, n rounds of `ways` demonstrations, the query and its delimiter."""
        return 1 + shots * self.ways * self.demo_len() + self.item_len + 1

    @property
    def train_len(self) -> int:
        """Inputs per training sequence: the longest test prompt (its answer is the last target)."""
        return self.seq_len(self.train_shots)


def check_world(cfg: WorldConfig) -> None:
    """One sentence per impossible world (raised before anything is written)."""
    if cfg.ways < 2:
        raise UserError(f"data.ways={cfg.ways}: an episode needs at least 2 classes.")
    if cfg.n_labels < cfg.ways:
        raise UserError(f"data.n_labels={cfg.n_labels} must be at least data.ways={cfg.ways} (distinct labels).")
    if min(cfg.val_classes, cfg.test_classes, cfg.train_classes) < cfg.ways:
        raise UserError(f"every class set needs at least data.ways={cfg.ways} classes.")
    if cfg.min_distance > cfg.item_len:
        raise UserError(f"data.min_distance={cfg.min_distance} exceeds data.item_len={cfg.item_len}.")
    if cfg.item_vocab < 2:
        raise UserError("data.item_vocab must be at least 2.")


class World:
    """Prototypes, semantic labels and class sets of one seed. Class ids: training classes first
    (id = Zipf rank - 1), then validation, then held-out test classes."""

    def __init__(self, cfg: WorldConfig, seed: int):
        check_world(cfg)
        self.cfg = cfg
        rng = np.random.default_rng([seed, 29, 0])
        n = cfg.train_classes + cfg.val_classes + cfg.test_classes
        self.prototypes = _prototypes(rng, n, cfg.item_len, cfg.item_vocab, cfg.min_distance)  # (C, L)
        # semantic label token of every class, balanced: each token names ~C / n_labels classes
        self.labels = cfg.label_base + rng.permutation(np.arange(n) % cfg.n_labels)
        a, b = cfg.train_classes, cfg.train_classes + cfg.val_classes
        self.sets = {"train": np.arange(a), "validation": np.arange(a, b), "heldout": np.arange(b, n)}
        ranks = np.arange(1, a + 1, dtype=float)
        self.zipf = ranks**-cfg.zipf_exponent / (ranks**-cfg.zipf_exponent).sum()

    def items(self, rng: np.random.Generator, classes: np.ndarray) -> np.ndarray:
        """Token ids of one noisy item per class id: (...,) -> (..., L)."""
        cfg = self.cfg
        proto = self.prototypes[classes]  # (..., L)
        noise = rng.random(proto.shape) < cfg.noise_fraction
        return cfg.item_base + np.where(noise, rng.integers(0, cfg.item_vocab, proto.shape), proto)

    def episode_classes(self, rng: np.random.Generator, n: int, pool: str, zipf: bool) -> np.ndarray:
        """(n, K) distinct classes per episode whose semantic labels are distinct, drawn without
        replacement from `pool` (Zipf-weighted: successive sampling by the Gumbel top-k trick)."""
        ids, K = self.sets[pool], self.cfg.ways
        logw = np.log(self.zipf) if zipf else np.zeros(len(ids))
        out = np.empty((n, K), dtype=np.int64)
        todo = np.arange(n)
        while len(todo):
            keys = logw + rng.gumbel(size=(len(todo), len(ids)))
            out[todo] = ids[np.argsort(-keys, axis=1)[:, :K]]
            labels = np.sort(self.labels[out[todo]], axis=1)
            todo = todo[(labels[:, 1:] == labels[:, :-1]).any(axis=1)]  # a shared label: draw again
        return out


def _prototypes(rng: np.random.Generator, n: int, length: int, vocab: int, min_distance: int) -> np.ndarray:
    """n random strings pairwise at Hamming distance >= min_distance (rejection sampling)."""
    protos = np.empty((0, length), dtype=np.int64)
    for _ in range(100):
        cand = rng.integers(0, vocab, (2 * (n - len(protos)) + 8, length))
        for row in cand:
            if len(protos) == n:
                return protos
            if not len(protos) or (protos != row).sum(1).min() >= min_distance:
                protos = np.vstack([protos, row])
    raise UserError(
        f"cannot draw {n} prototypes of {length} tokens from {vocab} at distance >= {min_distance}; "
        "lower data.min_distance or raise data.item_vocab / data.item_len."
    )


# ---- rendering ------------------------------------------------------------------------------------


def render(
    world: World,
    items: np.ndarray,
    labels: np.ndarray,
    order: np.ndarray,
    delim: np.ndarray,
    query: np.ndarray | None = None,
) -> np.ndarray:
    """Token sequences of episodes.

    items (E, R, K, L): round r's item of each class; labels (E, K) each class's label token, or
    (E, R, K) one per item; order (E, R, K): which class sits at each position of a round;
    delim (E,): delimiter token per episode; query (E, L) or None: a query item after the rounds.
    Returns (E, T) int64 tokens: BOS, the demonstrations `item D label D`, then `query D`."""
    E, R, K, L = items.shape
    labels = labels if labels.ndim == 3 else np.broadcast_to(labels[:, None, :], (E, R, K))
    demo_items = np.take_along_axis(items, order[..., None], axis=2)  # (E, R, K, L)
    demo_labels = np.take_along_axis(labels, order, axis=2)  # (E, R, K)
    d = np.broadcast_to(delim[:, None, None, None], (E, R, K, 1))
    demos = np.concatenate([demo_items, d, demo_labels[..., None], d], axis=-1)  # (E, R, K, L + 3)
    parts = [np.full((E, 1), BOS), demos.reshape(E, R * K * (L + 3))]  # rounds flattened in order
    if query is not None:
        parts += [query, delim[:, None]]
    return np.concatenate(parts, axis=1).astype(np.int64)


def label_targets(world: World, tokens: np.ndarray) -> np.ndarray:
    """Next-token targets that keep only label tokens (the rest -1): the training loss reads labels."""
    y = tokens[:, 1:].copy()
    is_label = (y >= world.cfg.anon_base) & (y < world.cfg.item_base)
    y[~is_label] = -1
    return y


def train_batch(world: World, seed: int, index: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training batch number `index` (a pure function of seed and index): (x, y), each (B, train_len).

    A sequence holds `train_shots` items of each of its `ways` classes in a random order, then a
    query: x is as long as the longest test prompt, so no test position lies beyond what training
    showed. Every label is a target (y is -1 elsewhere)."""
    cfg = world.cfg
    rng = np.random.default_rng([seed, 29, 1, index])
    B, R, K = batch_size, cfg.train_shots, cfg.ways
    iid = rng.random(B) < cfg.iid_fraction
    anonymous = ~iid & (rng.random(B) < cfg.anonymous_fraction)
    classes = world.episode_classes(rng, B, "train", zipf=True)  # (B, K)
    perm = np.argsort(rng.random((B, K)), axis=1)  # a fresh permutation per episode
    labels = np.where(anonymous[:, None], cfg.anon_base + perm, world.labels[classes])  # (B, K)
    # bursty: the R copies of each episode class in a random order (not in rounds: rounds would let a
    # model copy the label from one round back by position, a shortcut that no test query allows)
    slot_pos = np.argsort(rng.random((B, R * K)), axis=1) % K  # (B, R*K): each class index R times
    slot = np.take_along_axis(classes, slot_pos, axis=1).reshape(B, R, K)  # class at each slot
    slot_labels = np.take_along_axis(labels, slot_pos, axis=1).reshape(B, R, K)
    q = rng.integers(0, K, B)
    query_class, query_label = classes[np.arange(B), q], labels[np.arange(B), q]
    # non-bursty: every slot (and the query) its own Zipfian class with its own semantic label
    n_iid = int(iid.sum())
    if n_iid:
        slot[iid] = rng.choice(world.sets["train"], size=(n_iid, R, K), p=world.zipf)
        slot_labels[iid] = world.labels[slot[iid]]
        query_class[iid] = rng.choice(world.sets["train"], size=n_iid, p=world.zipf)
        query_label[iid] = world.labels[query_class[iid]]
    delim = np.where(rng.random(B) < 0.5, NEWLINE, SPACE)
    items = world.items(rng, slot)  # (B, R, K, L), already in slot order
    identity = np.broadcast_to(np.arange(K), (B, R, K))
    tokens = render(world, items, slot_labels, identity, delim, world.items(rng, query_class))
    tokens = np.concatenate([tokens, query_label[:, None]], axis=1)  # (B, T + 1)
    return torch.from_numpy(tokens[:, :-1]), torch.from_numpy(label_targets(world, tokens))


# ---- evaluation episodes ---------------------------------------------------------------------------


@dataclass
class EpisodeSet:
    """Fixed evaluation episodes of one class set: every prompt, label kind and shot count reads the
    same classes, items and queries (n-shot uses the first n rounds), so they are paired."""

    classes: np.ndarray  # (E, K)
    items: np.ndarray  # (E, R, K, L)
    query_class: np.ndarray  # (E,) position of the query's class in `classes`
    query: np.ndarray  # (E, L)
    anon_perm: np.ndarray  # (E, K) anonymous token index of each class
    shuffles: np.ndarray  # (E, R, K) the within-round permutations of `shuffled` prompts

    def prompt(self, world: World, shots: int, kind: str, prompt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens (E, T), candidate label tokens (E, K), index of the right one (E,))."""
        delim_name, order_name = prompt.split("-")
        E, R, K = self.shuffles.shape
        if not 1 <= shots <= R:
            raise UserError(f"shots {shots}: these episodes hold 1 to {R} rounds.")
        labels = world.cfg.anon_base + self.anon_perm if kind == "anonymous" else world.labels[self.classes]
        order = self.shuffles[:, :shots] if order_name == "shuffled" else np.broadcast_to(np.arange(K), (E, shots, K))
        delim = np.full(E, NEWLINE if delim_name == "newline" else SPACE)
        tokens = render(world, self.items[:, :shots], labels, order, delim, self.query)
        return tokens, labels, self.query_class


def episode_set(world: World, which: str, n: int, max_shots: int, seed: int) -> EpisodeSet:
    """`n` evaluation episodes: `heldout` (test classes), `train` (training classes, uniform, not
    Zipfian, so the rare ones count as much as the common), `validation` (the validation classes)
    or `train-validation` (training classes, other episodes than `train`'s)."""
    if which not in CLASS_SETS:
        raise UserError(f"class set {which!r}: choose from {', '.join(CLASS_SETS)}.")
    pool = {"heldout": "heldout", "validation": "validation"}.get(which, "train")
    rng = np.random.default_rng([seed, 29, 2, CLASS_SETS.index(which)])
    K = world.cfg.ways
    classes = world.episode_classes(rng, n, pool, zipf=False)  # (n, K)
    items = world.items(rng, np.broadcast_to(classes[:, None, :], (n, max_shots, K)))
    query_class = rng.integers(0, K, n)
    query = world.items(rng, classes[np.arange(n), query_class])
    anon_perm = np.argsort(rng.random((n, K)), axis=1)
    shuffles = np.argsort(rng.random((n, max_shots, K)), axis=2)
    return EpisodeSet(classes, items, query_class, query, anon_perm, shuffles)
