"""The in-context copy test in reports (rows from `repro.eval.lm.copy_test`: metric `copy_loss`, slice
`copy` = 1 | 2 for the first and the second copy), shared by tinystories-ood, mmv2-pretrain and
long-context-adaptation: per-seed losses, a paired comparison of two models' gains, and the bar figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from repro import stats

COPY_NOTE = (
    "Copy test: each span (half the context) is fed twice in a row; mean loss over tokens 1..L-1 of the first "
    "copy and of the second (each copy's first token cannot be predicted); gain = first - second, paired by seed "
    "(same spans for both models). Random spans are uniform over the text ids (uniform loss: ln of their number)."
)


def copy_losses(df: pd.DataFrame, split: str, model: str, step: int | None = None) -> dict[int, tuple[float, float]]:
    """Per seed: (first-copy loss, second-copy loss) of one model on one copy test (at one step, if given)."""
    sub = df[(df.metric == "copy_loss") & (df.split == split) & (df.model == model)]
    if step is not None:
        sub = sub[sub.step.astype(int) == step]
    wide = sub.assign(which=sub.slice_value.astype(int)).pivot_table(index="seed", columns="which", values="value")
    if not {1, 2} <= set(wide.columns):
        return {}
    return {int(seed): (float(r[1]), float(r[2])) for seed, r in wide.iterrows()}


def copy_cell(losses: dict[int, tuple[float, float]]) -> str:
    """`first -> second (gain g)`, each mean ± std over seeds."""
    first, second = (np.array([v[i] for v in losses.values()]) for i in (0, 1))
    gain = stats.mean_std(first - second, 2)
    return f"{stats.mean_std(first, 2)} -> {stats.mean_std(second, 2)} (gain {gain})"


def gains(losses: dict[int, tuple[float, float]]) -> dict[int, float]:
    return {seed: first - second for seed, (first, second) in losses.items()}


def copy_comparison(
    df: pd.DataFrame, split: str, a: str, b: str, step: int | None = None, beyond_paper: bool = False
) -> dict[str, Any] | None:
    """Model a vs model b on one copy test: both cells and the verdict on gain(a) - gain(b) > 0, paired by
    seed (95% t interval, in nats). None when either model has no rows."""
    la, lb = copy_losses(df, split, a, step), copy_losses(df, split, b, step)
    if not la or not lb:
        return None
    p = stats.paired_diff(gains(la), gains(lb))
    ci = f"{a} - {b} gain {p['mean']:+.3f} ± {p['half']:.3f} nats, 95%, {p['n']} paired seeds" if p["n"] > 1 else ""
    verdict = stats.verdict(p["mean"], p["half"], p["n"], +1, ci=ci, beyond_paper=beyond_paper)
    return {"a": copy_cell(la), "b": copy_cell(lb), "verdict": verdict}


def plot_copy(
    panels: list[tuple[str, pd.DataFrame]],
    models: list[tuple[str, str]],
    splits: list[tuple[str, str]],
    path: Path,
) -> Path:
    """Bars of the mean loss on the first (light) and second (dark) copy per model and copy test, one panel
    per (title, rows); whiskers ± std over seeds. `models`: (row model name, label); `splits`: (split, label)."""
    import matplotlib.pyplot as plt

    width = 0.8 / (2 * len(models))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.5, 1.6 * len(splits)) * len(panels), 3.4), squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels, strict=True):
        for i, (model, label) in enumerate(models):
            for k in (0, 1):
                cells = [copy_losses(rows, split, model) for split, _ in splits]
                values = [np.array([v[k] for v in c.values()]) for c in cells]
                means = [v.mean() if len(v) else np.nan for v in values]
                stds = [v.std(ddof=1) if len(v) > 1 else 0.0 for v in values]
                x = np.arange(len(splits)) + (2 * i + k + 0.5) * width - 0.4
                ax.bar(x, means, width, yerr=stds, color=f"C{i}", alpha=1.0 if k else 0.45, capsize=2,
                       label=f"{label}, {'second' if k else 'first'} copy")  # fmt: skip
        ax.set_xticks(np.arange(len(splits)), [label for _, label in splits], rotation=15)
        ax.set_title(title)
        ax.set_ylabel("mean loss on the copy (nats)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


SPLITS = (("random", "random tokens"), ("validation", "validation text"))
V2_CLAIM = "MM v2's advantage is in-context learning (v2 paper, §4.3): it should use a repeat more"


def pair_entries(
    df: pd.DataFrame, stages: list[tuple[str, str, int | None, str]], labels: tuple[str, str]
) -> list[dict[str, Any]]:
    """Copy-test rows comparing model a with model b at each (a, b, step, stage description), on random
    tokens and validation text; `labels` name a and b in the columns. Verdicts: gain(a) > gain(b)."""
    entries = []
    for a, b, step, where in stages:
        for split, label in SPLITS:
            c = copy_comparison(df, split, a, b, step)
            if c is not None:
                entries.append(
                    {
                        "copy test": f"{label}, {where}",
                        f"{labels[1]}: first -> second": c["b"],
                        f"{labels[0]}: first -> second": c["a"],
                        "verdict (gain higher)": c["verdict"],
                    }
                )
    return entries
