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
Nesterov SGD, 28 epochs, steps at 8/16/24) on the transfer task. The wd=0 and wd=5e-4 networks of a
run seed share initialisation and batch order, and verdicts are on the per-seed differences (95%
t-interval). Backbones come from the shared cache (`repro cache list`) when they were trained before.

`cpu` preset (issue 17): offline only CIFAR-10 exists, so it transfers between its disjoint halves
(classes 0-4 -> 5-9 and back) using ALL their images (25 000 training, 5 000 test per half), a
width-8 ResNet18 trained `CPU_EPOCHS` (10) epochs, the paper's weight decays (0, 5e-4). The first
task's wd=5e-4 backbone of seed 0 is also trained 20 epochs: the report's convergence table states
how much doubling the epochs still adds (the issue asks for < ~3 points). That backbone (task 0,
wd 5e-4) is rich-ensemble's member 0 and very-large-dropout's backbone: one cache entry per seed.
Sizing (reports/LOG.md, 2026-12-01): 946 training images per CPU-second for width 8 (1 thread,
channels-last); one backbone = 4.4 CPU-min; 3 seeds cold ~34 min on 2 idle cores, ~3 min warm.
Deviations: the `paper` preset is a reconstruction (200 epochs; the recipe is not published);
probes see cached, unaugmented features and pick their weight decay on a held-out 10% (RRL:
augmented images, best grid point); 10 epochs decay the weights far less than 200 (lr x wd x steps).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from repro import results, stats
from repro.data.vision import GENERATED
from repro.errors import UserError
from repro.experiments._transfer import (
    PretrainConfig,
    TransferData,
    cpu_backbone,
    effective_rank,
    load_task,
    member_seed,
    parse_task,
    pretrain_rows,
    pretrained,
    provenance,
    wall_note,
)
from repro.models.registry import build_model
from repro.registry import Experiment, register
from repro.runtime import RunContext
from repro.train.probe import ProbeConfig, predict, probe_accuracy

# Table 1 of the CAT paper: (ID accuracy, transfer accuracy) for wd 0 and 5e-4.
PAPER = {
    "cifar10>cifar100": {"id": (91.41, 94.89), "transfer": (49.68, 29.17)},
    "cifar100>cifar10": {"id": (70.37, 76.78), "transfer": (78.87, 75.92)},
}
# Our disjoint-class halves stand in for the two directions of the paper's table.
PAPER_FOR = {"cifar10:0-4>cifar10:5-9": "cifar10>cifar100", "cifar10:5-9>cifar10:0-4": "cifar100>cifar10"}
MEASURES = {"id": ("source", "test_acc", 1), "transfer": ("target", "probe_acc", -1)}  # paper's sign of (wd - 0)


@dataclass
class WdTransferConfig:
    tasks: tuple[str, ...] = ("cifar10>cifar100", "cifar100>cifar10")
    weight_decays: tuple[float, ...] = (0.0, 5e-4)
    convergence_wds: tuple[float, ...] = ()  # also pretrain these at 2x epochs (first task): the convergence check
    convergence_seed: int = 0  # the run seed that does the check (it costs two backbones' time)
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
        "cpu": "3 seeds ~34 min cold / ~3 min warm on 2 idle cores (CIFAR-10 halves, all 50k images, width 8, 10 ep)",
        "paper": "~6 GPU-hours (CIFAR-10 <-> CIFAR-100, ResNet18, 200 epochs)",
    }

    def presets(self) -> dict[str, WdTransferConfig]:
        halves = ("cifar10:0-4>cifar10:5-9", "cifar10:5-9>cifar10:0-4")
        return {
            "smoke": WdTransferConfig(
                tasks=("cifar10:0-1>cifar10:2-3",),
                convergence_wds=(5e-4,),
                pretrain=PretrainConfig(width=4, epochs=2, batch_size=16),
                probe=ProbeConfig(epochs=2, weight_decays=(1e-4,)),
                data=TransferData(path=GENERATED, train_per_class=16, target_per_class=16, test_per_class=8),
                device="cpu",
            ),
            "cpu": WdTransferConfig(
                tasks=halves,
                convergence_wds=(5e-4,),
                pretrain=cpu_backbone(),
                probe=ProbeConfig(weight_decays=(1e-4, 1e-3, 1e-2)),
                data=TransferData(),  # all 5 000 training and 1 000 test images of each class
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
        seed = member_seed(ctx.seed)  # the same in every arm: wd=0 and wd>0 share init and batch order
        for t, task in enumerate(cfg.tasks):
            data = load_task(task, cfg.data)
            where = {"slice_key": "task", "slice_value": task}
            for wd in cfg.weight_decays:
                model_name = f"wd={wd:g}"
                torch.manual_seed(seed)
                model = build_model("resnet", width=cfg.pretrain.width, n_class=data.source_train.n_class)
                optim = dataclasses.replace(cfg.pretrain.optim, weight_decay=wd)
                info = pretrained(
                    model, data.source_train, cfg.pretrain, optim, ctx, f"t{t}.{model_name}", seed, data.source_test
                )
                rows += pretrain_rows(ctx, model_name, info, **where)
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
                    0,
                    **{f"t{t}.{model_name}/id_acc": info["test_acc"], f"t{t}.{model_name}/probe": probe["test_acc"]},
                )
                values = [
                    ("source", "train_loss", info["loss"]),
                    ("source", "test_acc", info["test_acc"]),
                    ("source", "n_test", len(data.source_test.y)),
                    ("target", "probe_acc", probe["test_acc"]),
                    ("target", "probe_wd", probe["weight_decay"]),
                    ("target", "n_test", len(data.target_test.y)),
                    ("target", "feature_erank", effective_rank(f_test)),
                ]
                for split, metric, value in values:
                    rows.append(ctx.row(model=model_name, split=split, metric=metric, value=value, step=0, **where))
                if (
                    t == 0 and wd in cfg.convergence_wds and ctx.seed == cfg.convergence_seed
                ):  # same recipe and seed, twice the epochs
                    torch.manual_seed(seed)
                    twice = build_model("resnet", width=cfg.pretrain.width, n_class=data.source_train.n_class)
                    pre2 = dataclasses.replace(cfg.pretrain, epochs=2 * cfg.pretrain.epochs)
                    info2 = pretrained(
                        twice, data.source_train, pre2, optim, ctx, f"t{t}.{model_name}.x2", seed, data.source_test
                    )
                    rows += pretrain_rows(ctx, f"{model_name}.x2", info2, **where)
                    rows.append(
                        ctx.row(
                            model=model_name,
                            split="source",
                            metric="test_acc_2x",
                            value=info2["test_acc"],
                            step=0,
                            **where,
                        )
                    )
        rows.append(ctx.row(model="run", split="all", metric="wall_s", value=time.time() - ctx.started, step=0))
        return rows

    def report(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        results.figure_style()
        runs = df[(df.model != "run") & (df.split != "pretrain")]
        wds = sorted({float(m.split("=")[1]) for m in runs.model.unique() if not m.endswith(".x2")})
        tasks = list(dict.fromkeys(runs.slice_value))
        seeds = sorted(int(s) for s in df.seed.unique())
        entries = []
        for i, task in enumerate(tasks):
            paper_task = _paper_task(task, i)
            for measure, (split, metric, sign) in MEASURES.items():
                sub = runs[(runs.slice_value == task) & (runs.split == split) & (runs.metric == metric)]
                acc = {wd: sub[sub.model == f"wd={wd:g}"].set_index("seed").value for wd in wds}
                entry: dict[str, Any] = {
                    "task (ours)": task,
                    "paper task": paper_task,
                    "measure": "ID test acc" if measure == "id" else "transfer probe acc",
                    "paper wd 0 / 5e-4": "{} / {}".format(*PAPER[paper_task][measure]),
                }
                for wd in wds:
                    entry[f"ours wd {wd:g}"] = stats.mean_std(acc[wd].to_numpy(), 2, 100)
                for wd in wds:
                    if wd > 0 and 0.0 in acc:
                        diff, word = stats.compare(acc[wd], acc[0.0], sign)
                        entry[f"ours wd {wd:g} - wd 0 (95% CI)"] = diff
                        entry[f"verdict 0 vs {wd:g}"] = word
                entries.append(entry)
        verdicts = [v for e in entries for k, v in e.items() if k.startswith("verdict")]
        notes = [
            stats.verdict_summary(verdicts, "the paired 95% interval"),
            f"Ours: preset `{df.preset.iloc[0]}`, seeds {seeds}, mean ± std over seeds; {wall_note(df)}",
            "Paper: CAT Table 1 (mean ± std over repeats).",
            "Paper effect: wd 5e-4 raises ID accuracy and lowers transfer accuracy. `verdict` compares the",
            "direction of our (wd - 0) difference with the paper's, paired by seed (both arms of a seed share",
            "initialisation and batch order): reproduced when the 95% t-interval of the per-seed differences",
            "excludes 0, else within noise.",
            "Effective rank of the frozen target features (higher = more directions used): "
            + ", ".join(
                f"{m} {v:.1f}" for m, v in runs[runs.metric == "feature_erank"].groupby("model").value.mean().items()
            )
            + ".",
            "Stand-ins: our first task plays the paper's CIFAR10 -> CIFAR100 row, the reverse plays",
            "CIFAR100 -> CIFAR10 (same direction of effect in both paper rows).",
            *provenance(df),
        ]
        extra = {}
        conv = _convergence(runs, tasks[0] if tasks else "")
        if conv:
            extra["Convergence: ID accuracy at the preset's epochs and at twice as many"] = conv
        paths = results.write_table(entries, out_dir, "Weight decay vs transfer: paper vs ours", notes, extra)
        paths.append(_plot(runs, tasks, wds, out_dir / "fig_wd_transfer.png"))
        return paths


def _convergence(runs: pd.DataFrame, task: str) -> list[dict[str, Any]]:
    """ID accuracy at E and 2E epochs (same seed, recipe and data), paired by seed."""
    out = []
    sub = runs[(runs.slice_value == task) & (runs.split == "source")]
    for model in sorted(sub[sub.metric == "test_acc_2x"].model.unique()):
        at_e = sub[(sub.model == model) & (sub.metric == "test_acc")].set_index("seed").value
        at_2e = sub[(sub.model == model) & (sub.metric == "test_acc_2x")].set_index("seed").value
        p = stats.paired_diff(at_2e, at_e)
        gap = f"{100 * p['mean']:+.2f}" + (f" [{100 * p['lo']:+.2f}, {100 * p['hi']:+.2f}]" if p["n"] > 1 else "")
        out.append(
            {
                "task": task,
                "backbone": model,
                "ID acc, preset epochs": stats.mean_std(at_e[p["seeds"]].to_numpy(), 2, 100),
                "ID acc, 2x epochs": stats.mean_std(at_2e[p["seeds"]].to_numpy(), 2, 100),
                "gain of 2x (95% CI)": gap,
                "converged (gain < 3 pt)": "yes" if p["n"] and p["mean"] < 0.03 else "no",
            }
        )
    return out


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
