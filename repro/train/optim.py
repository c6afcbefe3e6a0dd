"""Training recipes: AdamW (or SGD with momentum) with decay groups, learning-rate schedules, and the
one training loop's settings (`LoopConfig`: accumulation, logging, checkpoints, precision, strategy)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr: float = 0.0  # the schedule's final value
    schedule: Literal["constant", "linear", "cosine", "multistep"] = "cosine"
    warmup_steps: int = 0
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max global grad norm; 0 turns clipping off
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    milestones: tuple[float, ...] = ()  # multistep: fractions of the run where lr is multiplied by gamma
    gamma: float = 0.1
    decay_all: bool = False  # weight decay on gains and biases too (RRL's pretraining decays BN)


@dataclass
class LoopConfig:
    accum: int = 1  # micro-batches per optimizer step
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end (when an eval_fn is given)
    checkpoint_every: int = 100
    compile: bool = False  # torch.compile the model (CPU inductor works; the first compile is slow)
    amp: Literal["auto", "off", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    strategy: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate (DDP) or shard (FSDP2)
    activation_checkpointing: bool = False  # recompute each block's activations in the backward


@dataclass
class Stage:
    """One training stage of a language-model experiment: its context, length, batch and recipe."""

    block_size: int
    steps: int
    batch_size: int
    optim: OptimConfig


def mmv2_recipe(lr: float, warmup: int) -> OptimConfig:
    """Memory Mosaics v2 §4.2: AdamW (0.9, 0.95), wd 0.1, clip 1, warmup then cosine decay to lr/100."""
    return OptimConfig(
        lr=lr, min_lr=lr / 100, schedule="cosine", warmup_steps=warmup, beta2=0.95, weight_decay=0.1, grad_clip=1.0
    )


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Weight decay on matrices, kernels and embeddings (dim >= 2), none on scalars, gains and biases
    unless `decay_all`."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": cfg.weight_decay if cfg.decay_all else 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warmup to `lr`, then constant, linear or cosine decay to `min_lr` at `total`, or
    `multistep`: `lr` times `gamma` per milestone passed (milestones as fractions of `total`)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "multistep":
        return cfg.lr * cfg.gamma ** sum(step >= round(m * total) for m in cfg.milestones)
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    if cfg.schedule == "linear":
        return cfg.lr + (cfg.min_lr - cfg.lr) * frac
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac))
