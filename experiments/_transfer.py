"""What the CIFAR transfer experiments share (wd-transfer, rich-ensemble, very-large-dropout):
the task notation, data loading with per-class subsets, supervised (pre)training of a ResNet
through the one training loop. Their reports' statistics come from `repro.stats`.

A task is written `SOURCE>TARGET`, each side `dataset` or `dataset:a-b` (classes a..b, relabelled
from 0). The paper's warm-up is `cifar10>cifar100`; offline we only have CIFAR-10, so the cpu presets
use its disjoint halves, `cifar10:0-4>cifar10:5-9` and back (airplane, automobile, bird, cat, deer
vs dog, frog, horse, ship, truck).

Pretraining goes through `pretrained`: a backbone is trained once per resolved spec (architecture,
a digest of the training images, recipe, seed) and stored in the shared cache (`repro.cache`), so the
three experiments and any rerun load it instead of training it again. Backbone seeds follow one rule
(`member_seed`), the same in every arm and every experiment: the wd=0 and wd=5e-4 networks of a seed
share their initialisation and batch order (a paired comparison), and the cpu presets' CIFAR-10 0-4
backbone of seed s is one cache entry used by all three experiments.

Verdicts are paired by seed (`repro.stats.paired_diff`): the per-seed difference between two arms,
its mean and 95% t-interval; the paper's direction holds "beyond noise" when the interval excludes 0.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from repro.cache import ModelCache, array_digest, cache_root
from repro.data.vision import SPECS, augment, class_subset, load_images, to_tensor
from repro.errors import UserError
from repro.models.resnet import ResNet, Towers
from repro.runtime import RunContext
from repro.track import console
from repro.train.loop import LoopConfig, train
from repro.train.optim import OptimConfig, lr_at
from repro.train.probe import accuracy, epoch_indices, predict, steps_for

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
    cache_dir: str | None = "auto"  # auto: $REPRO_CACHE_DIR, else <runs>/_cache; none: train every time


def cpu_backbone() -> PretrainConfig:
    """The one backbone recipe of the three experiments' cpu presets (issue 17): a width-8 CIFAR
    ResNet18 on all 25 000 images of a CIFAR-10 class half, SGD momentum 0.9, lr 0.1 cosine, batch
    128, pad-crop + flip, wd 5e-4 on every parameter (RRL), `CPU_EPOCHS` epochs. The same recipe in
    every experiment is what lets them share cached backbones; the sizing (throughput, convergence
    probe, costs) is in reports/LOG.md (2026-12-01)."""
    return PretrainConfig(width=8, epochs=CPU_EPOCHS)


CPU_EPOCHS = 10.0  # the budget's ceiling for ~2 h cold (reports/LOG.md 2026-12-01)

PRETRAIN_VERSION = 1  # bump when the training code changes what a spec produces (invalidates the cache)


def member_seed(run_seed: int, j: int = 0) -> int:
    """The seed of backbone j of a run seed, the same in every arm and experiment (so arms pair
    and the cache shares): wd-transfer's networks and very-large-dropout's backbone are member 0,
    rich-ensemble's CATn members are 0..n-1."""
    return 1000 * run_seed + j


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
    x: torch.Tensor  # (N, 3, 32, 32) normalised, channels-last memory
    y: torch.Tensor  # (N,) labels 0..n_class-1
    n_class: int
    spec: dict = field(default_factory=dict)  # what the images are (dataset, classes, count, content digest)


def load_side(side: Side, split: str, per_class: int | None, data: TransferData) -> Split:
    if side.dataset not in SPECS:
        raise UserError(f"dataset {side.dataset}: choose one of {', '.join(SPECS)}.")
    images, labels = load_images(side.dataset, split, data.path, data.cache_dir, data.data_dir)
    images, labels = class_subset(images, labels, side.classes, per_class, data.subset_seed)
    spec = {
        "dataset": side.dataset,
        "classes": list(side.classes),
        "split": split,
        "n_train": len(labels),
        "digest": array_digest(images, labels),  # the exact pixels: JPEG and pickle copies differ
    }
    return Split(to_tensor(images), torch.from_numpy(labels), len(side.classes), spec)


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


def train_classifier(
    model: nn.Module,
    data: Split,
    cfg: PretrainConfig,
    optim: OptimConfig,
    ctx: RunContext,
    name: str,
    seed: int,
    epochs: float | None = None,
) -> list[float]:
    """Supervised training (cross-entropy, augmented mini-batches) through the shared loop, in
    channels-last memory; a killed run resumes from the loop's checkpoint. Returns every step's loss."""
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

    model.to(memory_format=torch.channels_last)
    loop = LoopConfig(checkpoint_every=cfg.checkpoint_every)
    return train(model, batch_fn, loss_fn, optim, steps, ctx, name, loop=loop)


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
    """`train_classifier`, returning the mean loss of the last 10% of steps."""
    losses = train_classifier(model, data, cfg, optim, ctx, name, seed, epochs)
    return float(np.mean(losses[-max(1, len(losses) // 10) :]))


def arch_spec(model: nn.Module) -> dict:
    if isinstance(model, Towers):
        c = model.towers[0].cfg
        towers = len(model.towers)
    elif isinstance(model, ResNet):
        c, towers = model.cfg, 1
    else:
        raise TypeError(f"no cache spec for {type(model).__name__}")
    n_class = model.head.out_features
    return {
        "family": "cifar-resnet",
        "towers": towers,
        "width": c.width,
        "blocks": list(c.blocks),
        "in_channels": c.in_channels,
        "n_class": n_class,
    }


def backbone_spec(
    model: nn.Module, data: Split, cfg: PretrainConfig, optim: OptimConfig, seed: int, device: torch.device
) -> dict:
    """Everything that decides the trained weights, and nothing else (not the run, not the experiment)."""
    recipe = {
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "augment": cfg.augment,
        "optim": asdict(optim),
        "precision": "bf16" if device.type == "cuda" else "fp32",  # the loop's autocast
    }
    return {
        "kind": "supervised",
        "version": PRETRAIN_VERSION,
        "arch": arch_spec(model),
        "data": data.spec,
        "recipe": recipe,
        "seed": seed,
    }


def pretrained(
    model: nn.Module,
    data: Split,
    cfg: PretrainConfig,
    optim: OptimConfig,
    ctx: RunContext,
    name: str,
    seed: int,
    test: Split | None = None,
) -> dict:
    """Give `model` the weights of its supervised pretraining: from the shared cache when an entry
    with the same spec exists (logged as a hit, with the time it saves), else by training it (and
    storing weights, training curve and meta in the cache). `model` must be freshly built with
    `torch.manual_seed(seed)` as the caller does. Returns hit, hash, train_s (the original training
    time), loss (mean of the last 10% of steps) and test_acc (on `test`, measured now)."""
    spec = backbone_spec(model, data, cfg, optim, seed, ctx.device)
    store = None
    if cfg.cache_dir is not None:
        store = ModelCache(cache_root(ctx.run_dir) if cfg.cache_dir == "auto" else Path(cfg.cache_dir))
    model.to(memory_format=torch.channels_last)
    start = time.time()
    meta = store.load(spec, model) if store is not None else None
    if meta is not None:
        model.to(ctx.device).eval()
        info = {
            "hit": True,
            "hash": meta["hash"],
            "train_s": meta.get("train_s", float("nan")),
            "loss": meta.get("loss", float("nan")),
        }
        console.print(
            f"[green]backbone cache hit[/] {name}: {meta['hash']} loaded in {time.time() - start:.1f} s "
            f"(its training took {info['train_s']:.0f} s; {meta['path']})",
            highlight=False,
        )
    else:
        losses = train_classifier(model, data, cfg, optim, ctx, name, seed)
        train_s = time.time() - start
        steps = len(losses)
        info = {"hit": False, "hash": "", "train_s": train_s, "loss": float(np.mean(losses[-max(1, steps // 10) :]))}
    if test is not None:
        info["test_acc"] = accuracy(predict(model, test.x, ctx.device), test.y)
    if store is not None and meta is None:
        curve = [{"step": i, "loss": v, "lr": lr_at(i, len(losses), optim)} for i, v in enumerate(losses)]
        extra = {k: info[k] for k in ("train_s", "loss", "test_acc") if k in info}
        saved = store.save(
            spec,
            model,
            curve,
            {
                **extra,
                "name": name,
                "experiment": ctx.experiment,
                "threads": torch.get_num_threads(),
                "device": str(ctx.device),
            },
        )
        info["hash"] = saved.name
        console.print(f"backbone {name} trained in {info['train_s']:.0f} s, cached as {saved}", highlight=False)
    ctx.tracker.log(0, **{f"{name}/cache_hit": float(info["hit"]), f"{name}/pretrain_s": time.time() - start})
    return info


def pretrain_rows(ctx: RunContext, model: str, info: dict, **slice_: str) -> list[dict]:
    """Rows recording where a backbone came from: cache_hit (1/0) and the seconds its training took."""
    return [
        ctx.row(model=model, split="pretrain", metric=metric, value=float(info[key]), step=0, **slice_)
        for metric, key in (("cache_hit", "hit"), ("train_s", "train_s"), ("train_loss", "loss"))
    ]


def effective_rank(feats: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of the centred features: how many directions
    the representation really uses (a cheap proxy for its richness)."""
    s = torch.linalg.svdvals(feats - feats.mean(0))
    p = s / s.sum().clamp_min(1e-12)
    return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))


def wall_note(df: pd.DataFrame) -> str:
    wall = df[df.metric == "wall_s"].value
    return f"wall time per run {wall.mean() / 60:.1f} min (min {wall.min() / 60:.1f}, max {wall.max() / 60:.1f})."


def provenance(df: pd.DataFrame) -> list[str]:
    """Where the backbones came from: how many were loaded from the shared cache, how long the others took."""
    pre = df[df.split == "pretrain"]
    hits, trained = pre[pre.metric == "cache_hit"], pre[pre.metric == "train_s"]
    if hits.empty:
        return []
    hit = hits.value.to_numpy() == 1
    seconds = trained.value.to_numpy() if len(trained) == len(hits) else np.full(len(hits), np.nan)
    return [
        f"Backbones: {len(hits)} used; {len(hits) - hit.sum()} trained in these runs "
        f"({np.nansum(seconds[~hit]) / 60:.1f} min), {hit.sum()} loaded from the shared cache "
        f"(runs/_cache/backbones; their training had taken {np.nansum(seconds[hit]) / 60:.1f} min)."
    ]
