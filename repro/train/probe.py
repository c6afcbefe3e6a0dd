"""Frozen features, linear probes and the small pieces every image experiment shares.

The probe is RRL's protocol: BatchNorm1d + linear head on frozen features, SGD with Nesterov
momentum 0.9, lr 0.01, 28 epochs with the lr divided by 10 at epochs 8, 16 and 24, batch 256, no
weight decay on the BN parameters, the weight decay chosen from a grid. RRL trains on augmented
images and reports the best grid point; we train on cached features of unaugmented images (so a
probe costs seconds) and choose the weight decay on a held-out slice of the probe's training set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from repro.models.resnet import LinearProbe
from repro.runtime import RunContext
from repro.train.loop import LoopConfig, train
from repro.train.optim import OptimConfig


@dataclass
class ProbeConfig:
    epochs: int = 28
    batch_size: int = 256
    lr: float = 0.01
    milestones: tuple[float, ...] = (8 / 28, 16 / 28, 24 / 28)  # epochs 8, 16, 24 of 28
    weight_decays: tuple[float, ...] = (1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2)
    val_fraction: float = 0.1  # of the probe's training set, to choose the weight decay
    batch_norm: bool = True


def epoch_indices(i: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of batch i when each epoch is a fresh permutation of n examples (a pure function of i,
    as `train` requires: a resumed run sees the same batches)."""
    per_epoch = max(1, n // batch_size)
    epoch, j = divmod(i, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[j * batch_size : (j + 1) * batch_size]


def steps_for(epochs: float, n: int, batch_size: int) -> int:
    return max(1, math.ceil(epochs * max(1, n // batch_size)))


@torch.no_grad()
def predict(fn: Any, x: torch.Tensor, device: torch.device, batch_size: int = 500) -> torch.Tensor:
    """`fn` (a module's forward or its `features`) over x in batches, in eval mode, on CPU at the end."""
    module = getattr(fn, "__self__", fn)
    was_training = module.training if isinstance(module, nn.Module) else False
    if isinstance(module, nn.Module):
        module.eval()
    out = torch.cat([fn(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])
    if isinstance(module, nn.Module):
        module.train(was_training)
    return out


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    if logits.shape[-1] == 1:  # one binary logit
        return ((logits.view(-1) > 0).float() == y.view(-1).float()).float().mean().item()
    return (logits.argmax(-1) == y.view(-1)).float().mean().item()


def fit_probe(
    feats: torch.Tensor,
    y: torch.Tensor,
    n_class: int,
    cfg: ProbeConfig,
    weight_decay: float,
    ctx: RunContext,
    name: str,
    seed: int,
    probe: nn.Module | None = None,
) -> nn.Module:
    """One probe, trained by the shared loop on cached features; `probe` gives a head to start from
    (two-stage fine-tuning starts at the members' averaged heads), else a fresh `LinearProbe`."""
    torch.manual_seed(seed)
    probe = probe if probe is not None else LinearProbe(feats.shape[1], n_class, cfg.batch_norm)
    optim = OptimConfig(
        optimizer="sgd",
        lr=cfg.lr,
        momentum=0.9,
        nesterov=True,
        schedule="multistep",
        milestones=cfg.milestones,
        weight_decay=weight_decay,
    )
    bs = min(cfg.batch_size, len(feats))

    def batch_fn(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = epoch_indices(i, len(feats), bs, seed)
        return feats[idx], y[idx]

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(m(batch[0]), batch[1])

    steps = steps_for(cfg.epochs, len(feats), bs)
    train(probe, batch_fn, loss_fn, optim, steps, ctx, name, loop=LoopConfig(checkpoint_every=0))
    return probe.cpu()


def probe_accuracy(
    train_feats: torch.Tensor,
    train_y: torch.Tensor,
    test_feats: torch.Tensor,
    test_y: torch.Tensor,
    n_class: int,
    cfg: ProbeConfig,
    ctx: RunContext,
    name: str,
    seed: int = 0,
) -> dict[str, float]:
    """Test accuracy of the probe whose weight decay does best on the held-out slice; cached in the
    run's state so a resumed run does not redo it."""
    done = ctx.load_state(f"{name}.probe")
    if done is not None:
        return done
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train_feats), generator=gen)
    n_val = int(len(perm) * cfg.val_fraction) if len(cfg.weight_decays) > 1 else 0
    val_idx, fit_idx = perm[:n_val], perm[n_val:]
    best: dict[str, float] = {}
    for wd in cfg.weight_decays:
        probe = fit_probe(train_feats[fit_idx], train_y[fit_idx], n_class, cfg, wd, ctx, f"{name}.wd{wd:g}", seed)
        val = accuracy(predict(probe, train_feats[val_idx], torch.device("cpu")), train_y[val_idx]) if n_val else 0.0
        if not best or val > best["val_acc"]:
            test = accuracy(predict(probe, test_feats, torch.device("cpu")), test_y)
            best = {"test_acc": test, "val_acc": val, "weight_decay": wd}
    ctx.save_state(f"{name}.probe", best)
    return best
