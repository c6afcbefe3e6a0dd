"""Weight decay helps in-distribution and hurts transfer (CAT paper Table 1; thesis part 1).

Claim: an optimisation episode keeps only the features that pay on its own training distribution,
and an explicit regulariser such as L2 weight decay prunes harder. So pretraining with weight decay
gives better in-distribution (ID) accuracy but a representation that transfers worse: a linear
probe trained on a new task over the frozen features does better when the pretraining used no decay.

Paper (CAT, Table 1, mean ± std; CIFAR ResNet18, recipe unpublished):
  CIFAR10 ID 91.41 ± 0.81 (wd 0) vs 94.89 ± 0.23 (wd 5e-4); CIFAR10 -> CIFAR100 probe 49.68 ± 0.72
  vs 29.17 ± 0.50. CIFAR100 ID 70.37 vs 76.78; CIFAR100 -> CIFAR10 probe 78.87 vs 75.92.

Ours: pretrain a CIFAR ResNet18 (SGD momentum 0.9, lr 0.1 cosine, pad-crop + flip) with each weight
decay, measure its ID test accuracy, then freeze it and fit RRL's linear probe (BatchNorm + linear,
Nesterov SGD, 28 epochs, steps at 8/16/24) on the transfer task. Deviations: the `paper` preset is a
reconstruction (200 epochs; the recipe is not published); offline only CIFAR-10 exists, so the `cpu`
preset transfers between its disjoint halves (classes 0-4 -> 5-9 and back) with a width-8 ResNet18,
600 images per class and 8 epochs, and adds wd 5e-3: at ~180 SGD steps the paper's 5e-4 decays
the weights ~100x less than over a 200-epoch run. Probes see cached, unaugmented features and pick
their weight decay on a held-out 10% (RRL: augmented images, best grid point).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from repro import results
from repro.errors import UserError
from repro.experiments._transfer import (
    PretrainConfig,
    TransferData,
    diff_se,
    direction_verdict,
    effective_rank,
    fit_classifier,
    load_task,
    mean_std,
    parse_task,
    verdict_summary,
)
from repro.models.resnet import ResNet, ResNetConfig
from repro.registry import Experiment, register
from repro.runtime import RunContext
from repro.train.optim import OptimConfig
from repro.train.probe import ProbeConfig, accuracy, predict, probe_accuracy

# Table 1 of the CAT paper: (ID accuracy, transfer accuracy) for wd 0 and 5e-4.
PAPER = {
    "cifar10>cifar100": {"id": (91.41, 94.89), "transfer": (49.68, 29.17)},
    "cifar100>cifar10": {"id": (70.37, 76.78), "transfer": (78.87, 75.92)},
}
# Our disjoint-class halves stand in for the two directions of the paper's table.
PAPER_FOR = {"cifar10:0-4>cifar10:5-9": "cifar10>cifar100", "cifar10:5-9>cifar10:0-4": "cifar100>cifar10"}
CPU_NOTES = [
    "What the cpu scale can and cannot show: width-8 nets trained ~180 SGD steps reach only 59-71% ID",
    "accuracy, far from converged, and weight decay has had little time to act (5e-4 x lr 0.1 x 180 steps",
    "shrinks weights by ~1%), so wd 5e-3 was added. The paper's 20-point transfer drop is not seen at this",
    "scale; only the direction can be compared, and most differences are within noise (reports/LOG.md).",
]
MEASURES = {"id": ("source", "test_acc", 1), "transfer": ("target", "probe_acc", -1)}  # paper's sign of (wd - 0)


@dataclass
class WdTransferConfig:
    tasks: tuple[str, ...] = ("cifar10>cifar100", "cifar100>cifar10")
    weight_decays: tuple[float, ...] = (0.0, 5e-4)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    data: TransferData = field(default_factory=TransferData)
    device: str = "auto"


@register
class WdTransfer(Experiment):
    name = "wd-transfer"
    paper_ref = "CAT (ICML 2023) Table 1; thesis part 1 (rich features)"
    claim = "weight decay raises in-distribution accuracy but lowers linear-probe transfer accuracy"
    preset_costs = {
        "smoke": "~10 s (generated images)",
        "cpu": "~6 min on 2 idle cores (CIFAR-10 halves, width 8)",
        "paper": "~6 GPU-hours (CIFAR-10 <-> CIFAR-100, ResNet18, 200 epochs)",
    }

    def presets(self) -> dict[str, WdTransferConfig]:
        halves = ("cifar10:0-4>cifar10:5-9", "cifar10:5-9>cifar10:0-4")
        return {
            "smoke": WdTransferConfig(
                tasks=("cifar10:0-1>cifar10:2-3",),
                pretrain=PretrainConfig(width=4, epochs=2, batch_size=16),
                probe=ProbeConfig(epochs=2, weight_decays=(1e-4,)),
                data=TransferData(train_per_class=16, target_per_class=16, test_per_class=8),
                device="cpu",
            ),
            "cpu": WdTransferConfig(
                tasks=halves,
                weight_decays=(0.0, 5e-4, 5e-3),
                pretrain=PretrainConfig(width=8, epochs=8),
                probe=ProbeConfig(weight_decays=(1e-4, 1e-3, 1e-2)),
                data=TransferData(train_per_class=600, target_per_class=600, test_per_class=400),
                device="cpu",
            ),
            "paper": WdTransferConfig(),
        }

    def check(self, cfg: WdTransferConfig) -> None:
        for task in cfg.tasks:
            parse_task(task)
        if not cfg.weight_decays or min(cfg.weight_decays) < 0:
            raise UserError("weight_decays: give one or more non-negative values, e.g. 0,5e-4.")

    def run(self, cfg: WdTransferConfig, ctx: RunContext) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for t, task in enumerate(cfg.tasks):
            data = load_task(task, cfg.data)
            for k, wd in enumerate(cfg.weight_decays):
                model_name, seed = f"wd={wd:g}", ctx.seed * 1000 + 10 * t + k
                torch.manual_seed(seed)
                model = ResNet(ResNetConfig(width=cfg.pretrain.width, n_class=data.source_train.n_class))
                optim = OptimConfig(**{**cfg.pretrain.optim.__dict__, "weight_decay": wd})
                loss = fit_classifier(model, data.source_train, cfg.pretrain, optim, ctx, f"t{t}.{model_name}", seed)
                id_acc = accuracy(predict(model, data.source_test.x, ctx.device), data.source_test.y)
                f_train = predict(model.features, data.target_train.x, ctx.device)
                f_test = predict(model.features, data.target_test.x, ctx.device)
                probe = probe_accuracy(
                    f_train,
                    data.target_train.y,
                    f_test,
                    data.target_test.y,
                    data.target_train.n_class,
                    cfg.probe,
                    ctx,
                    f"t{t}.{model_name}",
                    seed,
                )
                ctx.tracker.log(
                    0, **{f"t{t}.{model_name}/id_acc": id_acc, f"t{t}.{model_name}/probe": probe["test_acc"]}
                )
                values = [
                    ("source", "train_loss", loss),
                    ("source", "test_acc", id_acc),
                    ("source", "n_test", len(data.source_test.y)),
                    ("target", "probe_acc", probe["test_acc"]),
                    ("target", "probe_wd", probe["weight_decay"]),
                    ("target", "n_test", len(data.target_test.y)),
                    ("target", "feature_erank", effective_rank(f_test)),
                ]
                for split, metric, value in values:
                    rows.append(
                        ctx.row(
                            model=model_name,
                            split=split,
                            metric=metric,
                            value=value,
                            step=0,
                            slice_key="task",
                            slice_value=task,
                        )
                    )
        rows.append(ctx.row(model="run", split="all", metric="wall_s", value=time.time() - ctx.started, step=0))
        return rows

    def report(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        results.figure_style()
        runs = df[df.model != "run"]
        wds = sorted({float(m.split("=")[1]) for m in runs.model.unique()})
        tasks = list(dict.fromkeys(runs.slice_value))
        seeds = sorted(int(s) for s in df.seed.unique())
        entries = []
        for i, task in enumerate(tasks):
            paper_task = _paper_task(task, i)
            for measure, (split, metric, sign) in MEASURES.items():
                sub = runs[(runs.slice_value == task) & (runs.split == split)]
                acc = {wd: sub[(sub.model == f"wd={wd:g}") & (sub.metric == metric)].value.to_numpy() for wd in wds}
                n_test = int(sub[sub.metric == "n_test"].value.iloc[0]) * len(seeds)
                entry: dict[str, Any] = {
                    "task (ours)": task,
                    "paper task": paper_task,
                    "measure": "ID test acc" if measure == "id" else "transfer probe acc",
                    "paper wd 0 / 5e-4": "{} / {}".format(*PAPER[paper_task][measure]),
                }
                for wd in wds:
                    entry[f"ours wd {wd:g}"] = mean_std(acc[wd])
                for wd in wds:
                    if wd > 0 and 0.0 in acc:
                        a0, a1 = acc[0.0].mean(), acc[wd].mean()
                        entry[f"verdict 0 vs {wd:g}"] = direction_verdict(a1 - a0, sign, diff_se(a0, a1, n_test))
                entries.append(entry)
        erank = runs[runs.metric == "feature_erank"].groupby("model").value.mean()
        wall = df[df.metric == "wall_s"].value
        verdicts = [v for e in entries for k, v in e.items() if k.startswith("verdict")]
        notes = [
            verdict_summary(verdicts),
            *(CPU_NOTES if df.preset.iloc[0] == "cpu" else []),
            f"Ours: preset `{df.preset.iloc[0]}`, seeds {seeds}, mean ± std over seeds; wall time per run "
            f"{wall.mean() / 60:.1f} min. Paper: CAT Table 1 (mean ± std over repeats).",
            "Paper effect: wd 5e-4 raises ID accuracy and lowers transfer accuracy. `verdict` compares the",
            "direction of our (wd - 0) difference with the paper's; a difference under 2 binomial standard",
            "errors (pooled test examples) is marked as within noise (seed-to-seed spread is not in it).",
            "Effective rank of the frozen target features (higher = more directions used): "
            + ", ".join(f"{m} {v:.1f}" for m, v in erank.items())
            + ".",
            "Stand-ins: our first task plays the paper's CIFAR10 -> CIFAR100 row, the reverse plays",
            "CIFAR100 -> CIFAR10 (same direction of effect in both paper rows).",
        ]
        paths = results.write_table(entries, out_dir, "Weight decay vs transfer: paper vs ours", notes)
        paths.append(_plot(runs, tasks, wds, out_dir / "fig_wd_transfer.png"))
        return paths


def _paper_task(task: str, index: int = 0) -> str:
    """The paper's row our task stands in for (by name, else by position)."""
    return task if task in PAPER else PAPER_FOR.get(task, list(PAPER)[min(index, len(PAPER) - 1)])


def _plot(runs: pd.DataFrame, tasks: list[str], wds: list[float], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    colors = plt.get_cmap("viridis")(np.linspace(0.15, 0.85, max(2, len(wds))))
    groups = [(task, m) for m in MEASURES for task in tasks]
    for ax, source in zip(axes, ("paper", "ours"), strict=True):
        for g, (task, measure) in enumerate(groups):
            if source == "paper":
                paper = PAPER[_paper_task(task)][measure]
                bars = [(0.0, paper[0], 0.0), (5e-4, paper[1], 0.0)]
            else:
                split, metric, _ = MEASURES[measure]
                sub = runs[(runs.slice_value == task) & (runs.split == split) & (runs.metric == metric)]
                bars = [
                    (wd, 100 * v.mean(), 100 * v.std(ddof=1) if len(v) > 1 else 0.0)
                    for wd in wds
                    for v in [sub[sub.model == f"wd={wd:g}"].value.to_numpy()]
                ]
            width = 0.8 / len(bars)
            for b, (wd, mean, err) in enumerate(bars):
                color = colors[wds.index(wd)] if wd in wds else colors[b]
                ax.bar(
                    g + (b - (len(bars) - 1) / 2) * width,
                    mean,
                    width,
                    yerr=err,
                    color=color,
                    label=f"wd {wd:g}" if g == 0 else None,
                )
        ax.set_xticks(
            range(len(groups)),
            [f"{'ID' if m == 'id' else 'transfer'}\n{_paper_task(t) if source == 'paper' else t}" for t, m in groups],
            fontsize=7,
        )
        ax.set_ylabel("accuracy (%)")
        ax.set_title("paper (CIFAR-10 <-> CIFAR-100)" if source == "paper" else "ours")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
