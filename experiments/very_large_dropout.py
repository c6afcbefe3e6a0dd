"""Fine-tuning with very large dropout on the penultimate features improves out-of-distribution
accuracy (VLD paper, ID-vs-OOD scatter figures; thesis part 1).

Claim: when fine-tuning a rich pretrained network on a small multi-domain task, masking 90% of the
penultimate representation (Bernoulli p = 0.9, rescaled) forces the head to spread over many
features; out-of-distribution (held-out domain) accuracy beats plain fine-tuning by more than
weight averaging or ensembles do, while ID accuracy lags the ensembles.

Paper (ImageNet ResNet50 #2, DomainBed, OOD %, ≈ centres of the scatter; reference §3.6): baseline
vs p = 0.9: VLCS 78.7 -> 80.0, OfficeHome 70.8 -> 73.4, PACS 86.5 -> 88.4, TerraInc 51.3 -> 53.6
(+1.3 to +2.6); weight averaging along the run +0.6 to +1.9; checkpoint ensembles +0.1 to +1.3.

Ours: a CIFAR ResNet18 pretrained on CIFAR-10 classes 0-4 is fine-tuned on classes 5-9 shown in four
synthetic domains (disjoint images per domain): `photo`, `gray` (luminance), `rot90` (rotated a
quarter turn) and `lowcontrast` (40% contrast, warm tint). Leave one domain out: train on the other
three (20% held out as ID validation), test on the held-out domain's styled test images. As in VLD:
SGD momentum 0.9, lr x0.1 halfway, BatchNorm frozen, dropout on the pooled features only, a fresh
linear head, checkpoint chosen by ID validation accuracy; weight averaging (uniform average of the
checkpoints from `wa_start` on) and the logit ensemble of the same checkpoints come from each run.
Every arm of a seed fine-tunes the same backbone with the same head init and batches; verdicts are
on per-seed differences (95% t-interval).

`cpu` preset (issue 17): the backbone is the shared, converged-recipe one (width 8, all 25 000 images
of classes 0-4, 10 epochs; the same cache entry as wd-transfer's and rich-ensemble's), fine-tuned
2 000 steps (32 images per training domain per step, ~13 passes over the 15 000 training images) at
VLD's lr 1e-3 (x0.1 at step 1 000) and wd 1e-4, dropout 0 vs 0.9, held-out domain `gray` (colour
cues learnt on the three coloured domains vanish there; `lowcontrast` held out sat at chance in the
first cpu trials, `rot90` needs a rotation invariance no pretrained feature has). The report states
how much plain fine-tuning loses from ID to OOD. Sizing (reports/LOG.md, 2026-12-01): ~8 CPU-min per
seed, 3 seeds ~12 min warm / ~19 min cold on 2 idle cores.
`paper` preset: VLD's data and protocol on PACS (through the hub, `flwrlabs/pacs`, or DomainBed's
folder; VLCS / OfficeHome / TerraIncognita with `--set target=...` and their folder or a hub copy),
224 px, every domain held out in turn, 4 rates, 6 (lr, wd), 10 000 steps. Deviations: synthetic
domains in the cpu preset; a small CIFAR network pretrained on 5 CIFAR classes instead of ImageNet's
ResNet50 #2 in both presets (no ImageNet weights offline).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from repro import results, stats
from repro.data.domainbed import DOMAINBED, load_domainbed
from repro.data.vision import DOMAINS, GENERATED, apply_domain, augment, class_subset, load_images, to_tensor
from repro.errors import UserError
from repro.experiments._transfer import (
    PretrainConfig,
    TransferData,
    cpu_backbone,
    load_side,
    member_seed,
    parse_side,
    pretrain_rows,
    pretrained,
    provenance,
    wall_note,
)
from repro.models.registry import build_model
from repro.models.resnet import ResNet
from repro.registry import Experiment, register
from repro.runtime import RunContext
from repro.train.loop import LoopConfig, train
from repro.train.optim import OptimConfig
from repro.train.probe import accuracy, epoch_indices, predict

# OOD accuracy (%), centres of the paper's clouds: baseline, p=0.9, weight averaging, ensemble.
PAPER_OOD = {
    "VLCS": (78.7, 80.0, 79.3, 79.5),
    "OfficeHome": (70.8, 73.4, 71.6, 71.6),
    "PACS": (86.5, 88.4, 86.6, 86.6),
    "TerraInc": (51.3, 53.6, 53.2, 52.6),
}


@dataclass
class FinetuneGrid:
    steps: int = 10_000
    batch_per_domain: int = 32
    lrs: tuple[float, ...] = (1e-3, 5e-4)
    weight_decays: tuple[float, ...] = (1e-4, 5e-5, 1e-5)
    eval_every: int = 300
    wa_start: int = 300  # checkpoints from this step on enter the weight average and the ensemble
    holdout: float = 0.2  # of each training domain, for ID validation
    augment: bool = True


@dataclass
class VeryLargeDropoutConfig:
    source: str = "cifar10:0-4"
    target: str = "cifar10:5-9"
    domains: tuple[str, ...] = ()  # empty: all of the target's domains (the four styles for a CIFAR target)
    test_domains: tuple[str, ...] = ()  # empty: every domain held out in turn
    image_size: int = 224  # DomainBed targets only: images resized to this (VLD's 224)
    domainbed_path: str | None = None  # DomainBed targets: DomainBed's folder; else data.data_dir, else the hub
    domainbed_hub_id: str | None = None  # a hub copy with image/label/domain columns (PACS: flwrlabs/pacs)
    dropouts: tuple[float, ...] = (0.0, 0.5, 0.9, 0.95)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneGrid = field(default_factory=FinetuneGrid)
    data: TransferData = field(default_factory=TransferData)
    device: str = "auto"


@register
class VeryLargeDropout(Experiment):
    name = "very-large-dropout"
    paper_ref = "Fine-tuning with very large dropout (2024), ID/OOD scatter plots; thesis part 1"
    claim = "90% dropout on the penultimate features while fine-tuning beats plain fine-tuning, WA and ensembles OOD"
    preset_costs = {
        "smoke": "~15 s (generated images)",
        "cpu": "3 seeds ~12 min warm / ~19 min cold on 2 idle cores (held-out gray, p 0 vs 0.9, 2 000 steps)",
        "paper": "~1-2 GPU-days (PACS at 224 px, 4 held-out domains, 4 rates, 6 (lr, wd), 10k steps)",
    }

    def presets(self) -> dict[str, VeryLargeDropoutConfig]:
        return {
            "smoke": VeryLargeDropoutConfig(
                source="cifar10:0-1",
                target="cifar10:2-3",
                test_domains=("gray",),
                dropouts=(0.0, 0.9),
                pretrain=PretrainConfig(width=4, epochs=1, batch_size=16),
                finetune=FinetuneGrid(
                    steps=6, batch_per_domain=4, lrs=(0.01,), weight_decays=(1e-4,), eval_every=2, wa_start=2
                ),
                data=TransferData(path=GENERATED, train_per_class=16, target_per_class=24, test_per_class=8),
                device="cpu",
            ),
            "cpu": VeryLargeDropoutConfig(
                test_domains=("gray",),
                dropouts=(0.0, 0.9),
                pretrain=cpu_backbone(),  # the shared member-0 backbone (cache)
                # VLD's recipe at one point of its grid: SGD 0.9, lr 1e-3 x0.1 at half, wd 1e-4, 32 per domain
                finetune=FinetuneGrid(steps=2000, lrs=(1e-3,), weight_decays=(1e-4,), eval_every=200, wa_start=200),
                data=TransferData(),  # all 25 000 target images, 6 250 per domain
                device="cpu",
            ),
            "paper": VeryLargeDropoutConfig(
                # VLD's data and fine-tuning protocol (PACS through the hub; the other DomainBed datasets via
                # --set target=VLCS|OfficeHome|TerraIncognita plus DomainBed's folder or a hub copy); the
                # backbone is ours (CIFAR ResNet18 w64 pretrained on CIFAR-10 0-4), not ImageNet's ResNet50
                target="PACS",  # all four domains, each held out in turn
            ),
        }

    def check(self, cfg: VeryLargeDropoutConfig) -> None:
        parse_side(cfg.source)
        if cfg.target not in DOMAINBED:
            parse_side(cfg.target)
        cfg, valid = _with_domains(cfg), DOMAINBED[cfg.target].domains if cfg.target in DOMAINBED else DOMAINS
        unknown = set(cfg.domains) - set(valid)
        if unknown:
            raise UserError(f"domains: unknown {sorted(unknown)}; choose among {', '.join(valid)}.")
        if not set(cfg.test_domains) <= set(cfg.domains) or len(cfg.domains) < 2:
            raise UserError("test_domains must be among domains, and at least two domains are needed.")
        if any(not 0 <= p < 1 for p in cfg.dropouts):
            raise UserError("dropouts: each rate must lie in [0, 1).")

    def run(self, cfg: VeryLargeDropoutConfig, ctx: RunContext) -> list[dict[str, Any]]:
        cfg = _with_domains(cfg)
        side = parse_side(cfg.source)
        src = load_side(side, "train", cfg.data.train_per_class, cfg.data)
        src_test = load_side(side, "test", cfg.data.test_per_class, cfg.data)
        seed = member_seed(ctx.seed)  # wd-transfer's and rich-ensemble's member-0 backbone: one cache entry
        torch.manual_seed(seed)
        base = build_model("resnet", width=cfg.pretrain.width, n_class=src.n_class)
        info = pretrained(base, src, cfg.pretrain, cfg.pretrain.optim, ctx, "pretrain", seed, src_test)
        rows: list[dict[str, Any]] = pretrain_rows(ctx, "backbone", info, slice_key="test_domain", slice_value="-")
        rows.append(
            ctx.row(
                model="backbone",
                split="source_test",
                metric="acc",
                value=info["test_acc"],
                step=0,
                slice_key="test_domain",
                slice_value="-",
            )
        )
        domains = self._domains(cfg)
        grid = list(itertools.product(cfg.finetune.lrs, cfg.finetune.weight_decays))
        for d, p, (lr, wd) in itertools.product(cfg.test_domains, cfg.dropouts, grid):
            key = f"{d}|lr={lr:g}|wd={wd:g}"
            name = f"ft.{d}.p{p:g}.lr{lr:g}.wd{wd:g}"
            out = ctx.load_state(name)
            if out is None:
                out = self._finetune(cfg, base, domains, d, p, lr, wd, ctx, name)
                ctx.save_state(name, out)
            for method, (id_acc, ood_acc) in out.items():
                model = f"dropout={p:g}" + ("" if method == "select" else f"+{method}")
                for split, value in (("id_val", id_acc), ("ood_test", ood_acc)):
                    rows.append(
                        ctx.row(
                            model=model,
                            split=split,
                            metric="acc",
                            value=value,
                            step=cfg.finetune.steps,
                            slice_key="test_domain",
                            slice_value=key,
                        )
                    )
            n_id = sum(len(v["val"][1]) for k, v in domains.items() if k != d)
            rows.append(
                ctx.row(
                    model="data",
                    split="id_val",
                    metric="n",
                    value=n_id,
                    step=0,
                    slice_key="test_domain",
                    slice_value=key,
                )
            )
            rows.append(
                ctx.row(
                    model="data",
                    split="ood_test",
                    metric="n",
                    value=len(domains[d]["test"][1]),
                    step=0,
                    slice_key="test_domain",
                    slice_value=key,
                )
            )
        rows.append(ctx.row(model="run", split="all", metric="wall_s", value=time.time() - ctx.started, step=0))
        return rows

    @staticmethod
    def _domains(cfg: VeryLargeDropoutConfig) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Per domain: disjoint styled training images split into train / val, and the styled test images;
        for a DomainBed target, each real domain split into train / val, and the whole domain as test."""
        data = cfg.data
        if cfg.target in DOMAINBED:
            real = load_domainbed(
                cfg.target, cfg.domainbed_path, data.cache_dir, cfg.image_size, cfg.domainbed_hub_id, data.data_dir
            )
            out = {}
            for dom in cfg.domains:
                images, labels = real[dom]
                order = np.random.default_rng(data.subset_seed).permutation(len(labels))
                n_val = int(len(order) * cfg.finetune.holdout)
                x, y = to_tensor(images[order]), torch.from_numpy(labels[order])
                out[dom] = {"train": (x[n_val:], y[n_val:]), "val": (x[:n_val], y[:n_val]), "test": (x, y)}
            return out
        side = parse_side(cfg.target)
        tr_img, tr_y = class_subset(
            *load_images(side.dataset, "train", data.path, data.cache_dir, data.data_dir),
            side.classes,
            data.target_per_class,
            data.subset_seed,
        )
        te_img, te_y = class_subset(
            *load_images(side.dataset, "test", data.path, data.cache_dir, data.data_dir),
            side.classes,
            data.test_per_class,
            data.subset_seed,
        )
        order = np.random.default_rng(data.subset_seed).permutation(len(tr_y))
        out = {}
        for dom, part in zip(cfg.domains, np.array_split(order, len(cfg.domains)), strict=True):
            n_val = int(len(part) * cfg.finetune.holdout)
            x = to_tensor(apply_domain(tr_img[part], dom))
            y = torch.from_numpy(tr_y[part])
            out[dom] = {
                "train": (x[n_val:], y[n_val:]),
                "val": (x[:n_val], y[:n_val]),
                "test": (to_tensor(apply_domain(te_img, dom)), torch.from_numpy(te_y)),
            }
        return out

    @staticmethod
    def _finetune(
        cfg: VeryLargeDropoutConfig,
        base: ResNet,
        domains: dict,
        test_domain: str,
        p: float,
        lr: float,
        wd: float,
        ctx: RunContext,
        name: str,
    ) -> dict[str, tuple[float, float]]:
        """One fine-tuning run; returns (ID val, OOD test) accuracy for the ID-selected checkpoint,
        the weight average and the checkpoint ensemble."""
        ft = cfg.finetune
        train_doms = [d for d in cfg.domains if d != test_domain]
        n_class = int(domains[train_doms[0]]["train"][1].max()) + 1
        seed = ctx.seed * 1000 + 17
        torch.manual_seed(seed)  # the head init and dropout masks must not depend on which runs came first
        model = copy.deepcopy(base)
        model.head = nn.Linear(model.n_features, n_class)  # DomainBed's fresh classifier (default init)
        model.dropout.p, model.freeze_bn = p, True
        val_x = torch.cat([domains[d]["val"][0] for d in train_doms])
        val_y = torch.cat([domains[d]["val"][1] for d in train_doms])
        test_x, test_y = domains[test_domain]["test"]

        def batch_fn(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            xs, ys = [], []
            for k, d in enumerate(train_doms):  # batch_per_domain from each training domain
                x, y = domains[d]["train"]
                idx = epoch_indices(i, len(y), ft.batch_per_domain, seed + k)
                xs.append(x[idx])
                ys.append(y[idx])
            x = torch.cat(xs)
            return (augment(x, torch.Generator().manual_seed(seed * 31 + i)) if ft.augment else x), torch.cat(ys)

        def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            return F.cross_entropy(m(batch[0]), batch[1])

        history: list[dict[str, Any]] = []
        wa_sum: dict[str, torch.Tensor] = {}
        ens: list[torch.Tensor] = []

        def eval_fn(m: nn.Module) -> dict[str, float]:
            step = min(
                ft.eval_every * (len(history) + 1), ft.steps
            )  # the loop evaluates every eval_every and at the end
            logits_val, logits_test = predict(m, val_x, ctx.device), predict(m, test_x, ctx.device)
            acc = {"id": accuracy(logits_val, val_y), "ood": accuracy(logits_test, test_y)}
            history.append(acc)
            if step >= ft.wa_start:  # weight average and ensemble from wa_start on
                for k, v in m.state_dict().items():
                    wa_sum[k] = wa_sum.get(k, 0) + v.detach().float().cpu()
                ens.append(torch.cat([logits_val, logits_test]))  # (N_val + N_test, C)
            return acc

        optim = OptimConfig(
            optimizer="sgd", lr=lr, momentum=0.9, schedule="multistep", milestones=(0.5,), weight_decay=wd
        )
        loop = LoopConfig(eval_every=ft.eval_every, checkpoint_every=0, log_every=max(1, ft.eval_every))
        train(model, batch_fn, loss_fn, optim, ft.steps, ctx, name, loop=loop, eval_fn=eval_fn)
        best = max(history, key=lambda h: h["id"])  # ID-validation model selection (first best)
        out = {"select": (best["id"], best["ood"])}
        if ens:
            avg = torch.stack(ens).mean(0)
            out["ens"] = (accuracy(avg[: len(val_y)], val_y), accuracy(avg[len(val_y) :], test_y))
            wa = copy.deepcopy(model)
            state = wa.state_dict()
            wa.load_state_dict({k: (wa_sum[k] / len(ens)).to(state[k].dtype) for k in state})
            out["wa"] = (
                accuracy(predict(wa, val_x, ctx.device), val_y),
                accuracy(predict(wa, test_x, ctx.device), test_y),
            )
        return out

    def report(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        results.figure_style()
        runs = df[~df.model.isin(["run", "data", "backbone"])].copy()
        runs["domain"] = runs.slice_value.str.split("|").str[0]
        seeds = sorted(int(s) for s in df.seed.unique())
        chosen = _select(runs)  # (seed, model, domain) -> ID-selected (lr, wd) run's accuracies
        per = chosen.groupby(["model", "seed"])[["id_val", "ood_test"]].mean()  # average over test domains
        models = sorted(per.index.get_level_values(0).unique(), key=_order)
        paper_gain = {k: np.round(np.array(v[1:]) - v[0], 1) for k, v in PAPER_OOD.items()}
        base = per.loc["dropout=0"] if "dropout=0" in per.index.get_level_values(0) else None
        entries = []
        for m in models:
            sub = per.loc[m]
            gain = "-" if base is None else stats.compare(sub.ood_test, base.ood_test, 1)[0]
            entries.append(
                {
                    "method": m,
                    "ours ID val": stats.mean_std(sub.id_val.to_numpy(), 2, 100),
                    "ours OOD test": stats.mean_std(sub.ood_test.to_numpy(), 2, 100),
                    "ours OOD gain vs dropout=0 (95% CI)": gain,
                    "paper OOD gain (VLCS, OfficeHome, PACS, TerraInc)": _paper_gain(m, paper_gain),
                }
            )
        verdicts = []
        if base is not None:
            for m, expect in (
                ("dropout=0.9", "p=0.9 beats plain fine-tuning OOD (+1.3 to +2.6)"),
                ("dropout=0+wa", "weight averaging helps OOD, less than p=0.9"),
                ("dropout=0+ens", "ensembles help OOD, less than p=0.9"),
            ):
                if m in per.index.get_level_values(0):
                    diff, word = stats.compare(per.loc[m].ood_test, base.ood_test, 1)
                    verdicts.append(
                        {
                            "comparison": f"{m} vs dropout=0 (OOD)",
                            "paper": expect,
                            "ours (95% CI)": diff,
                            "verdict": word,
                        }
                    )
            if {"dropout=0.9", "dropout=0+wa", "dropout=0+ens"} <= set(per.index.get_level_values(0)):
                best_other = np.maximum(per.loc["dropout=0+wa"].ood_test, per.loc["dropout=0+ens"].ood_test)
                diff, word = stats.compare(per.loc["dropout=0.9"].ood_test, best_other, 1)
                verdicts.append(
                    {
                        "comparison": "dropout=0.9 vs best of WA / ensemble (OOD, per seed)",
                        "paper": "dropout larger gain (all 4 datasets)",
                        "ours (95% CI)": diff,
                        "verdict": word,
                    }
                )
            gap = stats.compare(base.id_val, base.ood_test, 1)[0]
            shift = f"Plain fine-tuning (dropout=0) loses {gap} pt from ID validation to the held-out domain(s)."
        else:
            shift = ""
        id_cost = _id_cost(per)
        backbone = df[(df.model == "backbone") & (df.split == "source_test")].value
        backbone_acc = stats.mean_std(backbone.to_numpy(), 2, 100)
        notes = [
            stats.verdict_summary([v["verdict"] for v in verdicts], "the paired 95% interval"),
            *([shift] if shift else []),
            *([id_cost] if id_cost else []),
            f"Ours: preset `{df.preset.iloc[0]}`, held-out domains {sorted(runs.domain.unique())}, seeds {seeds};",
            "for each held-out domain the (lr, wd) with the best ID validation accuracy is kept (DomainBed's",
            "training-domain selection), then accuracies are averaged over held-out domains; mean ± std over",
            f"seeds; {wall_note(df)}",
            *(
                [f"Pretrained backbone: source-task test accuracy {backbone_acc} (over seeds)."]
                if len(backbone)
                else []
            ),
            "`+wa`: uniform average of the checkpoints' weights from `wa_start`; `+ens`: their logit ensemble.",
            "Paper: VLD (reference §3.6), OOD gains over plain fine-tuning read off the scatter plots (±0.3).",
            "Differences are paired by seed (every arm of a seed fine-tunes the same backbone with the same head",
            "init and batches): reproduced when the 95% t-interval of the per-seed differences excludes 0.",
            *provenance(df),
        ]
        paths = results.write_table(
            entries, out_dir, "Very large dropout: paper vs ours", notes, {"Direction of each effect": verdicts}
        )
        paths.append(_plot(chosen, per, models, out_dir / "fig_id_vs_ood.png"))
        return paths


def _with_domains(cfg: VeryLargeDropoutConfig) -> VeryLargeDropoutConfig:
    """Empty `domains` means all of the target's; empty `test_domains`, each of them in turn."""
    domains = cfg.domains or (DOMAINBED[cfg.target].domains if cfg.target in DOMAINBED else DOMAINS)
    return dataclasses.replace(cfg, domains=domains, test_domains=cfg.test_domains or domains)


def _id_cost(per: pd.DataFrame) -> str:
    """How much ID accuracy the largest dropout rate costs against plain fine-tuning."""
    plain = [m for m in per.index.get_level_values(0).unique() if "+" not in m]
    if "dropout=0" not in plain or len(plain) < 2:
        return ""
    top = max(plain, key=lambda m: _order(m)[1])
    change = 100 * (per.loc[top].id_val.mean() - per.loc["dropout=0"].id_val.mean())
    return f"{top} changes ID validation accuracy by {change:+.1f} pt against dropout=0 (paper, p = 0.9: -3.4 to +1.0)."


def _order(model: str) -> tuple[int, float]:
    p = float(model.split("=")[1].split("+")[0])
    return (1 if "+" in model else 0, p)


def _paper_gain(model: str, gains: dict[str, np.ndarray]) -> str:
    col = {"dropout=0.9": 0, "dropout=0+wa": 1, "dropout=0+ens": 2}.get(model)
    if model == "dropout=0":
        return "0 (baseline)"
    return "-" if col is None else ", ".join(f"{g[col]:+.1f}" for g in gains.values())


def _select(runs: pd.DataFrame) -> pd.DataFrame:
    wide = runs.pivot_table(
        index=["seed", "model", "domain", "slice_value"], columns="split", values="value"
    ).reset_index()
    idx = wide.groupby(["seed", "model", "domain"]).id_val.idxmax()
    return wide.loc[idx]


def _plot(chosen: pd.DataFrame, per: pd.DataFrame, models: list[str], path: Path) -> Path:
    """One panel per held-out domain plus their mean, as the paper's ID-vs-OOD scatter: colour =
    dropout rate, marker = plain / weight average / ensemble."""
    import matplotlib.pyplot as plt

    rates = sorted({_order(m)[1] for m in models})
    colors = dict(zip(rates, plt.get_cmap("plasma")(np.linspace(0.05, 0.8, max(2, len(rates)))), strict=False))
    panels = [*sorted(chosen.domain.unique()), "mean"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for m in models:
            sub = per.loc[m] if panel == "mean" else chosen[(chosen.model == m) & (chosen.domain == panel)]
            marker = "s" if "+wa" in m else "^" if "+ens" in m else "o"
            ax.scatter(
                100 * sub.id_val.mean(),
                100 * sub.ood_test.mean(),
                marker=marker,
                s=70,
                edgecolor="k",
                color=colors[_order(m)[1]],
                label=m,
            )
        ax.set_xlabel("ID validation accuracy (%)")
        ax.set_title(f"held out: {panel}" if panel != "mean" else "mean over held-out domains")
    axes[0, 0].set_ylabel("OOD test accuracy (%)")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
