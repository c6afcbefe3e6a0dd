"""The tinystories-ood figures, drawn from rows only: the paper's Fig. 7 (loss vs blocks), the loss
curves, per-position losses (mean over seeds with a ± std band) and the copy test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from repro import results
from repro.models import registry as models

LABELS = {family: models.label(family) for family in ("gpt2", "mosaic")}


def plural(depth: int) -> str:
    return f"{depth} block{'s' if depth > 1 else ''}"


def final_losses(df: pd.DataFrame, split: str, last: int = 1) -> pd.DataFrame:
    """Per (family, depth, seed): the last validation loss, or the mean of the last `last` train losses."""
    sub = df[(df.split == split) & (df.metric == "loss")].sort_values("step")
    out = sub.groupby(["family", "depth", "seed"]).value.apply(lambda v: v.iloc[-last:].mean())
    return out.reset_index()


def position_curves(df: pd.DataFrame, split: str, family: str, depth: int, metric: str) -> np.ndarray:
    """(seeds, positions) per-position losses of one model on one split, seeds in sorted order."""
    sub = df[(df.split == split) & (df.metric == metric) & (df.family == family) & (df.depth == depth)]
    if sub.empty:
        return np.empty((0, 0))
    wide = sub.assign(t=sub.slice_value.astype(int)).pivot_table(index="seed", columns="t", values="value")
    return wide.sort_index().to_numpy()


def _band(ax, x: np.ndarray, curves: np.ndarray, color: str, label: str) -> None:
    mean = curves.mean(0)
    std = curves.std(0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
    ax.plot(x, mean, color=color, lw=1, label=label)
    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.25, lw=0)


def plot_loss_vs_blocks(df: pd.DataFrame, path: Path) -> Path:
    """The paper's Fig. 7: final loss against the number of blocks, mean ± std over seeds."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for i, family in enumerate(LABELS):
        for split, style, last in (("validation", "o-", 1), ("train", "s--", 5)):
            table = final_losses(df, split, last)
            stats = table[table.family == family].groupby("depth").value.agg(["mean", "std"]).fillna(0.0)
            if len(stats):
                ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], fmt=style, color=f"C{i}", ms=4,
                            capsize=3, label=f"{LABELS[family]} {split}")  # fmt: skip
    ax.set_xlabel("blocks")
    ax.set_xticks(sorted(df.depth.unique()))
    ax.set_ylabel("final loss (nats/token)")
    ax.legend()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_loss_curves(df: pd.DataFrame, path: Path) -> Path:
    def curve(split: str, family: str, depth: int) -> pd.Series:
        sub = df[(df.split == split) & (df.metric == "loss") & (df.family == family) & (df.depth == depth)]
        return sub.groupby("step").value.mean().sort_index()

    panels = {
        plural(depth): [(LABELS[f], curve("train", f, depth), curve("validation", f, depth)) for f in LABELS]
        for depth in sorted(df.depth.unique())
    }
    return results.plot_loss_curves(panels, path, smooth=5)


def plot_positions(
    df: pd.DataFrame, panels: list[tuple[str, str, str]], path: Path, log_x: bool = False, mark: int | None = None
) -> Path:
    """Per-position loss, one row per (split, metric, title) and one column per depth: mean over seeds,
    band ± std. `log_x` plots against the number of tokens read (t + 1) on a log axis, where a constant
    slope is a straight line; `mark` draws where the slope fit starts."""
    import matplotlib.pyplot as plt

    depths = sorted(df.depth.unique())
    fig, axes = plt.subplots(len(panels), len(depths), figsize=(4.3 * len(depths), 3.0 * len(panels)), squeeze=False)
    for r, (split, metric, title) in enumerate(panels):
        for c, depth in enumerate(depths):
            ax = axes[r, c]
            for i, family in enumerate(LABELS):
                curves = position_curves(df, split, family, depth, metric)
                if curves.size:
                    x = np.arange(curves.shape[1]) + (1 if log_x else 0)
                    _band(ax, x, curves, f"C{i}", f"{LABELS[family]} ({len(curves)} seeds)")
            if log_x:
                ax.set_xscale("log")
                if mark is not None:
                    ax.axvline(mark + 1, color="0.6", lw=0.8, ls=":")
            ax.set_title(f"{title}, {plural(depth)}")
            ax.set_xlabel("tokens read (log)" if log_x else "position in document (tokens)")
        axes[r, 0].set_ylabel("mean loss at position")
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
