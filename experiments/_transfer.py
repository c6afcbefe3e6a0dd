"""What the CIFAR transfer experiments share (wd-transfer, rich-ensemble, very-large-dropout):
the task notation, data loading with per-class subsets, supervised (pre)training of a ResNet
through the one training loop, and the verdict wording of the reports.

A task is written `SOURCE>TARGET`, each side `dataset` or `dataset:a-b` (classes a..b, relabelled
from 0). The paper's warm-up is `cifar10>cifar100`; offline we only have CIFAR-10, so the cpu presets
use its disjoint halves, `cifar10:0-4>cifar10:5-9` and back (airplane, automobile, bird, cat, deer
vs dog, frog, horse, ship, truck).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from repro.data.vision import SPECS, augment, class_subset, load_images, to_tensor
from repro.errors import UserError
from repro.runtime import RunContext
from repro.train.loop import LoopConfig, train
from repro.train.optim import OptimConfig
from repro.train.probe import epoch_indices, steps_for

N_CLASSES = {"cifar10": 10, "cifar100": 100}
_SIDE = re.compile(r"^(cifar10|cifar100)(?::(\d+)-(\d+))?$")


@dataclass
class TransferData:
    path: str | None = None  # a folder holding the dataset files; else data_dir/<folder>/, else the hub
    data_dir: str | None = None  # a folder of local copies (`repro run --data-dir` sets it)
    cache_dir: str | None = ".cache/repro"  # decoded arrays as .npy; none: no cache
    train_per_class: int | None = None  # source images per class for (pre)training; None: all
    target_per_class: int | None = None  # target training images per class (probes, fine-tuning)
    test_per_class: int | None = None  # test images per class, both tasks
    subset_seed: int = 0  # the subsets are the same for every run seed


@dataclass
class PretrainConfig:
    width: int = 64  # ResNet18 base width (64 is the usual ResNet18)
    epochs: float = 200
    batch_size: int = 128
    augment: bool = True  # pad-4 random crop + horizontal flip
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            optimizer="sgd", lr=0.1, momentum=0.9, schedule="cosine", weight_decay=5e-4, decay_all=True
        )
    )
    checkpoint_every: int = 200


@dataclass
class Side:
    dataset: str
    classes: tuple[int, ...]


def parse_side(text: str) -> Side:
    m = _SIDE.match(text.strip())
    if not m:
        raise UserError(f"task side '{text}': write cifar10, cifar100 or e.g. cifar10:0-4.")
    name, lo, hi = m.group(1), m.group(2), m.group(3)
    n = N_CLASSES[name]
    classes = tuple(range(int(lo), int(hi) + 1)) if lo is not None else tuple(range(n))
    if not classes or classes[-1] >= n:
        raise UserError(f"task side '{text}': classes must lie in 0-{n - 1}.")
    return Side(name, classes)


def parse_task(text: str) -> tuple[Side, Side]:
    if text.count(">") != 1:
        raise UserError(f"task '{text}': write SOURCE>TARGET, e.g. cifar10:0-4>cifar10:5-9.")
    src, tgt = (parse_side(s) for s in text.split(">"))
    return src, tgt


@dataclass
class Split:
    x: torch.Tensor  # (N, 3, 32, 32) normalised
    y: torch.Tensor  # (N,) labels 0..n_class-1
    n_class: int


def load_side(side: Side, split: str, per_class: int | None, data: TransferData) -> Split:
    if side.dataset not in SPECS:
        raise UserError(f"dataset {side.dataset}: choose one of {', '.join(SPECS)}.")
    images, labels = load_images(side.dataset, split, data.path, data.cache_dir, data.data_dir)
    images, labels = class_subset(images, labels, side.classes, per_class, data.subset_seed)
    return Split(to_tensor(images), torch.from_numpy(labels), len(side.classes))


@dataclass
class TaskData:
    source_train: Split
    source_test: Split
    target_train: Split
    target_test: Split


def load_task(task: str, data: TransferData) -> TaskData:
    src, tgt = parse_task(task)
    return TaskData(
        load_side(src, "train", data.train_per_class, data),
        load_side(src, "test", data.test_per_class, data),
        load_side(tgt, "train", data.target_per_class, data),
        load_side(tgt, "test", data.test_per_class, data),
    )


def fit_classifier(
    model: nn.Module,
    data: Split,
    cfg: PretrainConfig,
    optim: OptimConfig,
    ctx: RunContext,
    name: str,
    seed: int,
    epochs: float | None = None,
) -> float:
    """Supervised training (cross-entropy, augmented mini-batches) through the shared loop; a killed
    run resumes from the loop's checkpoint. Returns the mean loss of the last 10% of steps."""
    bs = min(cfg.batch_size, len(data.x))
    steps = steps_for(cfg.epochs if epochs is None else epochs, len(data.x), bs)

    def batch_fn(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = epoch_indices(i, len(data.x), bs, seed)
        x = data.x[idx]
        if cfg.augment:
            x = augment(x, torch.Generator().manual_seed(seed * 7919 + i))
        return x, data.y[idx]

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(m(batch[0]), batch[1])

    losses = train(
        model, batch_fn, loss_fn, optim, steps, ctx, name, loop=LoopConfig(checkpoint_every=cfg.checkpoint_every)
    )
    return float(np.mean(losses[-max(1, steps // 10) :]))


def effective_rank(feats: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of the centred features: how many directions
    the representation really uses (a cheap proxy for its richness)."""
    s = torch.linalg.svdvals(feats - feats.mean(0))
    p = s / s.sum().clamp_min(1e-12)
    return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))


def direction_verdict(diff: float, expected_sign: int, se: float) -> str:
    """`diff` is (method - baseline) in accuracy, the paper's effect has sign `expected_sign`; `se`
    is the standard error of `diff` (binomial, over the pooled test examples). Within 2 s.e. the
    direction is still given, marked as within noise."""
    same = np.sign(diff) == expected_sign
    if abs(diff) < 2 * se:
        return f"{'same' if same else 'opposite'} direction, within noise (< 2 s.e. = {200 * se:.1f} pt)"
    return "reproduced (same direction)" if same else "not reproduced (opposite direction)"


def diff_se(p1: float, p2: float, n: int) -> float:
    """Standard error of the difference of two accuracies, each measured on n test examples."""
    return float(np.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / max(1, n)))


def verdict_summary(verdicts: list[str]) -> str:
    """One line counting the verdicts: how many point the paper's way, and how many beyond the noise."""
    same = [v for v in verdicts if v.startswith(("reproduced", "same direction"))]
    resolved = [v for v in verdicts if not v.startswith(("same direction", "opposite direction"))]
    return (
        f"Summary: {len(same)} of {len(verdicts)} comparisons point the paper's way; "
        f"{len(resolved)} of {len(verdicts)} are beyond 2 s.e. "
        f"({sum(v.startswith('reproduced') for v in verdicts)} reproduced, "
        f"{sum(v.startswith('not reproduced') for v in verdicts)} opposite)."
    )


def mean_std(values: list[float] | np.ndarray, scale: float = 100.0) -> str:
    v = np.asarray(values, dtype=float) * scale
    if len(v) == 0:
        return "n/a"
    return f"{v.mean():.2f}" if len(v) == 1 else f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"
