"""Concatenating independently trained networks (CATn) transfers better than one network of the
same size (CAT paper, Figures 2-3 and the fine-tuning table; thesis part 1).

Claim: one training episode learns features that are "just rich enough" for its own task. The
concatenated penultimate features of n networks trained alike but for the seed (CATn) add little
in-distribution, but transfer clearly better than a wide network with as many parameters or than
n towers trained jointly in one episode (same architecture as CATn). For fine-tuning, fine-tuning
each member then training only the concatenated head ("two-stage", [2ft]) beats fine-tuning the
equal-size wide or joint networks.

Paper (ImageNet ResNet50s, linear probes; reference §3.1): CAT4 vs ResNet50w2 (both 94 M):
ImageNet (ID) 78.2 vs 77.6, CIFAR100 78.2 vs 72.6, iNat18 46.5 vs 37.3. Fine-tuning on CIFAR100
(§3.2): ResNet50 85.58, ResNet50w2 87.13, 4xResNet50 joint 85.56, [2ft]CAT4 88.00, [2ft]CAT2 87.07.

Ours: CIFAR ResNet18s pretrained on the source task, n = 1, 2, 4; wide = the integer width whose
backbone has the closest parameter count to n members (`matched_width`); joint = `Towers` trained in
one episode. Linear probes (RRL protocol on cached features) on the source (ID) and target
(transfer) tasks; fine-tuning on the target: whole network with a fresh head, and two-stage for CAT
(members fine-tuned separately, head initialised at their averaged heads, then trained 2 epochs).
Members, wide and joint networks come from the shared backbone cache when trained before (member 0
of a seed is wd-transfer's wd=5e-4 backbone and very-large-dropout's); verdicts are on per-seed
differences (paired by seed, 95% t-interval).

`cpu` preset (issue 17): no ImageNet offline, so it transfers CIFAR-10 classes 0-4 -> 5-9 using all
25 000 training images of each half; width-8 members trained 10 epochs (the shared recipe,
`_transfer.cpu_backbone`); n in {1, 4}: CAT4 against wide4 (width 16, 0.700 M vs 0.703 M backbone
parameters), the paper's headline pairing (CAT4 vs ResNet50w2); joint4 only with `--set joint=true`
(it would add 54 CPU-minutes to the cold run; the `paper` preset keeps it); fine-tuning 1 epoch
(SGD 0.01 cosine) on the 25 000 target images, two-stage head 2 epochs. Sizing (reports/LOG.md,
2026-12-01): training images per CPU-second 946 (width 8), 439 (width 16), 232 (4 towers of width 8);
3 seeds ~55 min cold (alone) / ~15 min warm on 2 idle cores. Deviations: the `paper` preset is the
RRL code's CIFAR configuration (CIFAR-10 -> CIFAR-100, width 64) trained with the paper's ImageNet
recipe (90 epochs, steps at 30 and 60, wd 1e-4), not the paper's ImageNet runs.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from repro import results, stats
from repro.data.vision import GENERATED
from repro.errors import UserError
from repro.experiments._transfer import (
    PretrainConfig,
    Split,
    TaskData,
    TransferData,
    cpu_backbone,
    fit_classifier,
    load_task,
    member_seed,
    parse_task,
    pretrain_rows,
    pretrained,
    provenance,
    wall_note,
)
from repro.models.registry import build_model
from repro.models.resnet import ResNetConfig, Towers, backbone_params, matched_width
from repro.registry import Experiment, register
from repro.runtime import RunContext
from repro.train.optim import OptimConfig
from repro.train.probe import ProbeConfig, accuracy, fit_probe, predict, probe_accuracy

# Paper numbers: linear probes from ImageNet (§3.1, read off the figure) and CIFAR100 fine-tuning (§3.2).
PAPER_PROBE = {  # model -> (ImageNet ID, CIFAR100 transfer)
    "single": (75.6, 73.2),
    "cat2": (77.6, 76.1),
    "cat4": (78.2, 78.2),
    "wide4": (77.6, 72.6),
}
PAPER_FT = {"single": 85.58, "wide4": 87.13, "joint2": 85.77, "joint4": 85.56, "cat2": 87.07, "cat4": 88.00}
FT_MODELS = ("single", "wide", "joint", "cat2ft", "catinit")


@dataclass
class FinetuneConfig:
    epochs: float = 100
    batch_size: int = 128
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            optimizer="sgd", lr=0.01, momentum=0.9, schedule="cosine", weight_decay=1e-4
        )
    )
    head_epochs: float = 2  # two-stage: the concatenated head's training
    head_lr: float = 1e-3
    models: tuple[str, ...] = FT_MODELS  # which models to fine-tune


@dataclass
class RichEnsembleConfig:
    tasks: tuple[str, ...] = ("cifar10>cifar100",)
    ns: tuple[int, ...] = (1, 2, 4)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    data: TransferData = field(default_factory=TransferData)
    joint: bool = True  # train the jointly trained towers (jointN) as the second equal-size comparison
    device: str = "auto"


@register
class RichEnsemble(Experiment):
    name = "rich-ensemble"
    paper_ref = "CAT (ICML 2023) Figs. 2-3, fine-tuning table; thesis part 1 (rich features)"
    claim = "CATn of separately trained nets transfers better than an equal-size wide or jointly trained net"
    preset_costs = {
        "smoke": "~20 s (generated images)",
        "cpu": "3 seeds ~55 min cold / ~15 warm, 2 idle cores (CIFAR-10 0-4 -> 5-9, all images, CAT4 vs w16)",
        "paper": "~1 GPU-day (CIFAR-10 -> CIFAR-100, ResNet18 width 64)",
    }

    def presets(self) -> dict[str, RichEnsembleConfig]:
        return {
            "smoke": RichEnsembleConfig(
                tasks=("cifar10:0-1>cifar10:2-3",),
                ns=(1, 2),
                pretrain=PretrainConfig(width=4, epochs=1, batch_size=16),
                probe=ProbeConfig(epochs=2, weight_decays=(1e-4,)),
                finetune=FinetuneConfig(
                    epochs=1, batch_size=16, head_epochs=1, models=("single", "wide", "joint", "cat2ft")
                ),
                data=TransferData(path=GENERATED, train_per_class=16, target_per_class=16, test_per_class=8),
                device="cpu",
            ),
            "cpu": RichEnsembleConfig(
                tasks=("cifar10:0-4>cifar10:5-9",),
                ns=(1, 4),  # CAT4 vs wide4, the paper's headline pairing (CAT4 vs ResNet50w2)
                pretrain=cpu_backbone(),  # member 0 is wd-transfer's and very-large-dropout's backbone
                probe=ProbeConfig(weight_decays=(1e-4, 1e-3, 1e-2)),
                finetune=FinetuneConfig(epochs=1, models=("single", "wide", "cat2ft")),
                data=TransferData(),  # all 25 000 source and target training images
                joint=False,  # joint4 costs 54 of the preset's ~155 CPU-minutes; --set joint=true adds it
                device="cpu",
            ),
            "paper": RichEnsembleConfig(
                # the CAT paper's pretraining recipe (90 epochs, lr x0.1 at 30 and 60, wd 1e-4 also on BN)
                pretrain=PretrainConfig(
                    epochs=90,
                    optim=OptimConfig(
                        optimizer="sgd",
                        lr=0.1,
                        schedule="multistep",
                        milestones=(1 / 3, 2 / 3),
                        weight_decay=1e-4,
                        decay_all=True,
                    ),
                ),
                finetune=FinetuneConfig(batch_size=256),  # 8 GPUs x 32
            ),
        }

    def check(self, cfg: RichEnsembleConfig) -> None:
        for task in cfg.tasks:
            parse_task(task)
        if not cfg.ns or min(cfg.ns) < 1:
            raise UserError("ns: give network counts of at least 1, e.g. 1,2,4.")
        bad = set(cfg.finetune.models) - set(FT_MODELS)
        if bad:
            raise UserError(f"finetune.models: unknown {sorted(bad)}; choose among {', '.join(FT_MODELS)}.")

    def run(self, cfg: RichEnsembleConfig, ctx: RunContext) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for t, task in enumerate(cfg.tasks):
            data = load_task(task, cfg.data)
            models = self._pretrain(cfg, data, ctx, t, rows)
            for name, model in models.items():
                row = dict(split="source", step=0, slice_key="task", slice_value=task, model=name)
                rows.append(ctx.row(**row, metric="params", value=backbone_params(model)))
                for split, (tr, te) in {
                    "source": (data.source_train, data.source_test),
                    "target": (data.target_train, data.target_test),
                }.items():
                    feats = [predict(model.features, s.x, ctx.device) for s in (tr, te)]
                    probe = probe_accuracy(
                        feats[0], tr.y, feats[1], te.y, tr.n_class, cfg.probe, ctx, f"t{t}.{name}.{split}", ctx.seed
                    )
                    rows.append(ctx.row(**{**row, "split": split}, metric="probe_acc", value=probe["test_acc"]))
                    rows.append(ctx.row(**{**row, "split": split}, metric="n_test", value=len(te.y)))
            for name, acc in self._finetune(cfg, data, models, ctx, t).items():
                rows.append(
                    ctx.row(
                        model=name,
                        split="target",
                        metric="ft_acc",
                        value=acc,
                        step=0,
                        slice_key="task",
                        slice_value=task,
                    )
                )
        rows.append(ctx.row(model="run", split="all", metric="wall_s", value=time.time() - ctx.started, step=0))
        return rows

    def _pretrain(
        self, cfg: RichEnsembleConfig, data: TaskData, ctx: RunContext, t: int, rows: list[dict[str, Any]]
    ) -> dict[str, nn.Module]:
        """Members (seeds), wide and joint networks, each in one supervised episode (or from the shared
        backbone cache: member 0 is wd-transfer's and very-large-dropout's backbone); CATn built from members."""
        w, n_class, task = cfg.pretrain.width, data.source_train.n_class, cfg.tasks[t]
        pre, optim = cfg.pretrain, cfg.pretrain.optim

        def fit(model: nn.Module, name: str, seed: int) -> nn.Module:
            info = pretrained(model, data.source_train, pre, optim, ctx, f"t{t}.{name}", seed, data.source_test)
            rows.extend(pretrain_rows(ctx, name, info, slice_key="task", slice_value=task))
            return model.eval()

        members = []
        for j in range(max(cfg.ns)):
            seed = member_seed(ctx.seed, 100 * t + j)
            torch.manual_seed(seed)
            members.append(fit(build_model("resnet", width=w, n_class=n_class), f"member{j}", seed))
        models: dict[str, nn.Module] = {"single": members[0]}
        for n in (n for n in cfg.ns if n > 1):
            seed = member_seed(ctx.seed, 100 * t + 50 + n)
            torch.manual_seed(seed)
            wide = fit(build_model("resnet", width=matched_width(w, n), n_class=n_class), f"wide{n}", seed)
            models[f"cat{n}"] = Towers.from_members(members[:n]).eval()
            models[f"wide{n}"] = wide
            if cfg.joint:
                torch.manual_seed(seed + 1)
                models[f"joint{n}"] = fit(
                    Towers.build(n, ResNetConfig(width=w, n_class=n_class)), f"joint{n}", seed + 1
                )
        return models

    def _finetune(
        self, cfg: RichEnsembleConfig, data: TaskData, models: dict[str, nn.Module], ctx: RunContext, t: int
    ) -> dict[str, float]:
        """Target accuracy after normal fine-tuning ("[init]", fresh head) and CAT's two-stage fine-tuning."""
        ft, tr, te = cfg.finetune, data.target_train, data.target_test
        done = ctx.load_state(f"t{t}.finetune")
        if done is not None:
            return done
        out: dict[str, float] = {}
        run_cfg = PretrainConfig(**{**cfg.pretrain.__dict__, "batch_size": ft.batch_size})

        def tune(name: str, model: nn.Module, seed: int) -> nn.Module:
            model = copy.deepcopy(model)
            torch.manual_seed(seed)
            model.head = nn.Linear(model.head.in_features, tr.n_class)
            nn.init.normal_(model.head.weight, std=0.01)  # RRL's `normal` head init
            nn.init.zeros_(model.head.bias)
            fit_classifier(model, tr, run_cfg, ft.optim, ctx, f"t{t}.ft.{name}", seed, epochs=ft.epochs)
            return model.eval()

        def test(model: nn.Module) -> float:
            return accuracy(predict(model, te.x, ctx.device), te.y)

        want = set(ft.models) - (set() if cfg.joint else {"joint"})
        if want & {"single", "cat2ft"}:
            n_members = max(cfg.ns) if "cat2ft" in want else 1
            members = models["single"], *(models[f"cat{max(cfg.ns)}"].towers[1:n_members] if n_members > 1 else ())
            tuned = [tune(f"member{j}", m, ctx.seed * 1000 + 7 + j) for j, m in enumerate(members)]
            out["single"] = test(tuned[0])
            for n in (n for n in cfg.ns if n > 1 and "cat2ft" in want):
                out[f"cat{n}"] = self._two_stage(tuned[:n], tr, te, ft, ctx, f"t{t}.2ft.cat{n}", cfg.probe)
        for n in (n for n in cfg.ns if n > 1):
            for family in ("wide", "joint"):
                if family in want:
                    out[f"{family}{n}"] = test(tune(f"{family}{n}", models[f"{family}{n}"], ctx.seed * 1000 + 60 + n))
            if "catinit" in want:
                out[f"catinit{n}"] = test(tune(f"catinit{n}", models[f"cat{n}"], ctx.seed * 1000 + 80 + n))
        ctx.save_state(f"t{t}.finetune", out)
        return out

    @staticmethod
    def _two_stage(
        tuned: list[nn.Module], tr: Split, te: Split, ft: FinetuneConfig, ctx: RunContext, name: str, probe: ProbeConfig
    ) -> float:
        """Concatenate fine-tuned members, start the head at their averaged heads (the logit ensemble)
        and train only the head, on cached features, with Nesterov SGD at a small lr."""
        cat = Towers.from_members(tuned).eval()
        f_tr, f_te = (predict(cat.features, s.x, ctx.device) for s in (tr, te))
        head_cfg = ProbeConfig(epochs=ft.head_epochs, lr=ft.head_lr, milestones=(), batch_size=probe.batch_size)
        head = fit_probe(f_tr, tr.y, tr.n_class, head_cfg, 0.0, ctx, name, ctx.seed, probe=copy.deepcopy(cat.head))
        return accuracy(predict(head, f_te, torch.device("cpu")), te.y)

    def report(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        results.figure_style()
        runs = df[(df.model != "run") & (df.split != "pretrain")]
        seeds = sorted(int(s) for s in df.seed.unique())
        ns = sorted({int(m[-1]) for m in runs.model.unique() if m[-1].isdigit()} | {1})
        params = runs[runs.metric == "params"].groupby("model").value.mean()

        def vals(model: str, split: str, metric: str) -> pd.Series:
            """One value per seed (the seeds pair the arms)."""
            sub = runs[(runs.model == model) & (runs.split == split) & (runs.metric == metric)]
            return sub.groupby("seed").value.mean()

        entries = []
        for name in ["single"] + [f"{f}{n}" for n in ns if n > 1 for f in ("cat", "wide", "joint")]:
            if name not in params:
                continue
            paper_ft = PAPER_FT.get(name)
            entries.append(
                {
                    "model": name,
                    "backbone params": f"{params[name] / 1e6:.3f} M",
                    "paper probe ID / transfer": "{} / {}".format(*PAPER_PROBE[name]) if name in PAPER_PROBE else "-",
                    "ours probe ID (source)": stats.mean_std(vals(name, "source", "probe_acc").to_numpy(), 2, 100),
                    "ours probe transfer (target)": stats.mean_std(
                        vals(name, "target", "probe_acc").to_numpy(), 2, 100
                    ),
                    "paper fine-tune": f"{paper_ft}" + (" [2ft]" if name.startswith("cat") else "")
                    if paper_ft
                    else "-",
                    "ours fine-tune": stats.mean_std(vals(name, "target", "ft_acc").to_numpy(), 2, 100)
                    + (" [2ft]" if name.startswith("cat") and len(vals(name, "target", "ft_acc")) else ""),
                }
            )
        verdicts = [
            row for n in ns if n > 1 for other in ("wide", "joint") for row in _verdicts(f"cat{n}", f"{other}{n}", vals)
        ]
        notes = [
            stats.verdict_summary(
                [v["verdict"] for v in verdicts if v["measure"] != "ID probe"], "the paired 95% interval"
            )
            + " (ID rows excluded)",
            f"Ours: preset `{df.preset.iloc[0]}`, task {', '.join(dict.fromkeys(runs.slice_value))}, seeds {seeds}, "
            f"mean ± std over seeds; {wall_note(df)}",
            "Paper: CAT, ImageNet-pretrained ResNet50s; probe ID = ImageNet, transfer = CIFAR100 (reference §3.1,",
            "read off the figure); fine-tuning = CIFAR100 (§3.2). The paper's wide row is ResNet50w2 (CAT4's size).",
            "Ours: probe ID = a probe on the source classes, transfer = on the target classes; fine-tune = target",
            "accuracy after fine-tuning (cat rows: two-stage). Backbone parameters exclude the classifier.",
            "Verdicts compare the direction of (cat - other) with the paper's, paired by seed: reproduced when the",
            "95% t-interval of the per-seed differences excludes 0. `transfer gain - ID gain`: the paper's point is",
            "that concatenation buys little in-distribution but much on a new task (CAT4 vs ResNet50w2: +0.6",
            "ImageNet, +5.6 CIFAR100).",
            *provenance(df),
        ]
        paths = results.write_table(
            entries,
            out_dir,
            "Rich ensembles (CATn) vs equal-size networks: paper vs ours",
            notes,
            {"Direction of each effect": verdicts},
        )
        paths.append(_plot(runs, params, ns, out_dir / "fig_cat_vs_size.png"))
        return paths


def _verdicts(cat: str, other: str, vals: Any) -> list[dict[str, str]]:
    """Direction of (cat - other) on each measure, paired by seed, and whether the transfer gain
    exceeds the ID gain (per seed: (cat - other) on transfer minus (cat - other) in-distribution)."""
    out = []
    diffs: dict[str, pd.Series] = {}
    for split, metric, what in (
        ("target", "probe_acc", "transfer probe"),
        ("target", "ft_acc", "fine-tune ([2ft] cat)"),
        ("source", "probe_acc", "ID probe"),
    ):
        a, b = vals(cat, split, metric), vals(other, split, metric)
        if not len(a) or not len(b):
            continue
        diffs[what] = a - b
        if split == "source":
            p = stats.paired_diff(a, b)
            expected, diff = "cat ≈ other (CAT4 vs w2: +0.6)", stats.fmt_paired(p)
            word = "reproduced (within 2 pt)" if abs(p["mean"]) < 0.02 else f"differs ({100 * p['mean']:+.1f} pt)"
        else:
            expected = "cat > other"
            diff, word = stats.compare(a, b, 1)
        out.append(
            {
                "comparison": f"{cat} vs {other}",
                "measure": what,
                "paper": expected,
                "ours (cat - other), 95% CI": diff,
                "verdict": word,
            }
        )
    if "transfer probe" in diffs and "ID probe" in diffs:
        gain = (diffs["transfer probe"] - diffs["ID probe"]).dropna()
        diff, word = stats.compare(gain, pd.Series(0.0, index=gain.index), 1)
        out.append(
            {
                "comparison": f"{cat} vs {other}",
                "measure": "transfer gain - ID gain (probes)",
                "paper": "> 0 (CAT4 vs w2: +5.0)",
                "ours (cat - other), 95% CI": diff,
                "verdict": word,
            }
        )
    return out


def _plot(runs: pd.DataFrame, params: pd.Series, ns: list[int], path: Path) -> Path:
    """Accuracy against backbone parameters per family, as the paper plots it."""
    import matplotlib.pyplot as plt

    panels = [
        ("source", "probe_acc", "ID linear probe"),
        ("target", "probe_acc", "transfer linear probe"),
        ("target", "ft_acc", "transfer fine-tuning"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    styles = {"cat": ("tab:red", "o"), "wide": ("tab:blue", "s"), "joint": ("tab:green", "^")}
    for ax, (split, metric, title) in zip(axes, panels, strict=True):
        sub = runs[(runs.split == split) & (runs.metric == metric)].groupby("model").value.agg(["mean", "std"])
        for family, (color, marker) in styles.items():
            names = ["single"] + [f"{family}{n}" for n in ns if n > 1]
            pts = [
                (params[m], 100 * sub.loc[m, "mean"], 100 * np.nan_to_num(sub.loc[m, "std"]))
                for m in names
                if m in sub.index
            ]
            if pts:
                x, y, e = zip(*pts, strict=True)
                ax.errorbar(x, y, yerr=e, color=color, marker=marker, label=family, capsize=2)
        ax.set_xscale("log")
        ax.set_xlabel("backbone parameters")
        ax.set_title(title)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
