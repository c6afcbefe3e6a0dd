"""Table and figure of the `long-context-adaptation` report (split from the experiment module for
length): accuracy at the long context against fine-tuning steps, mean and 95% t-interval over seeds."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from repro import results, stats
from repro.experiments._copy_report import COPY_NOTE, SPLITS, V2_CLAIM, pair_entries, plot_copy
from repro.models import registry as models

LABELS = {f: models.label(f) for f in ("llama", "mosaic_v2")}
COLORS = {"llama": "C3", "mosaic_v2": "C0"}

ADAPTED = 0.9  # "adapted": long-context accuracy at least this share of the model's own short-context accuracy


def accuracy_frame(df: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Accuracy rows as columns model, seed, step, context, value."""
    sub = df[(df.metric == "accuracy") & (df.split == split)].copy()
    sub["context"] = sub.slice_value.astype(int)
    sub["step"] = sub.step.astype(int)
    return sub[["model", "seed", "step", "context", "value"]]


def cell(values: Any, scale: float = 100.0) -> str:
    """'mean ± half-width' of a 95% t-interval, in percent by default."""
    mean, half = stats.t_interval(np.asarray(values, dtype=float) * scale)
    return f"{mean:.1f}" if math.isnan(half) else f"{mean:.1f} ± {half:.1f}"


def steps_to_adapt(acc: pd.DataFrame, short: int, long: int, floor: float = 0.0) -> pd.DataFrame:
    """Per (model, seed): the first evaluated step at which the long-context accuracy reaches
    ADAPTED x the short-context accuracy after pretraining; NaN when it never does, or when the
    short-context accuracy is not above `floor` (chance: there is no retrieval to carry over)."""
    out = []
    for (model, seed), g in acc.groupby(["model", "seed"]):
        pretrained = float(g[(g.step == 0) & (g.context == short)].value.iloc[0])
        if pretrained <= floor:
            out.append({"model": model, "seed": seed, "steps": math.nan})
            continue
        target = ADAPTED * pretrained
        curve = g[g.context == long].sort_values("step")
        hit = curve[curve.value >= target]
        out.append({"model": model, "seed": seed, "steps": float(hit.step.iloc[0]) if len(hit) else math.nan})
    return pd.DataFrame(out)


def _scalar(df: pd.DataFrame, metric: str) -> float:
    values = df[df.metric == metric].value
    return float(values.iloc[0]) if len(values) else math.nan


def _above_zero(values: pd.Series) -> bool:
    mean, half = stats.t_interval(values.to_numpy())
    return not math.isnan(half) and mean - half > 0


def _extrapolation_verdict(kept: dict[str, float]) -> str:
    """Paper: MM v2 extrapolates, the transformer fails. 'Keeps': at least ADAPTED of its short accuracy."""
    if set(kept) != set(LABELS):
        return ""
    mm, ll = kept["mosaic_v2"] >= ADAPTED, kept["llama"] >= ADAPTED
    shares = f"MM v2 keeps {kept['mosaic_v2']:.0%} of its short-context accuracy, Llama {kept['llama']:.0%}"
    return ("reproduced: " if mm and not ll else "differs: ") + shares


def claim_entries(acc: pd.DataFrame, df: pd.DataFrame, short: int, long: int) -> list[dict[str, Any]]:
    models = [m for m in LABELS if m in set(acc.model)]
    last = int(acc.step.max())

    def at(model: str, step: int, context: int) -> pd.Series:
        sub = acc[(acc.model == model) & (acc.step == step) & (acc.context == context)]
        return sub.set_index("seed").value

    def kept(model: str) -> float:
        """Long-context accuracy before fine-tuning as a share of the short-context one."""
        return float(at(model, 0, long).mean() / max(at(model, 0, short).mean(), 1e-9))

    uniform, copy = 100 * _scalar(df, "chance_uniform"), 100 * _scalar(df, "chance_copy")
    chance = f"chance {uniform:.1f}% (uniform), {copy:.0f}% (copying any stated value)"
    entries = [
        {
            "claim": f"precondition: both retrieve at the pretraining context ({short} tokens)",
            "paper": "RULER at 4k after 4k pretraining (Table 3): transformer small 39.4, MM v2 small 45.0",
            "ours": ", ".join(f"{LABELS[m]} {cell(at(m, 0, short))}%" for m in models) + f"; {chance}",
            "verdict": f"met (every 95% interval above {copy:.0f}%)"
            if all(_above_zero(at(m, 0, short) - copy / 100) for m in models)
            else "not met (an interval reaches chance)",
        },
        {
            "claim": f"before fine-tuning, at {long // short}x the context ({long} tokens)",
            "paper": "Table 3: MM v2 small 31.7 at 8x (32k), the transformer fails (x)",
            "ours": ", ".join(f"{LABELS[m]} {cell(at(m, 0, long))}%" for m in models),
            "verdict": _extrapolation_verdict({m: kept(m) for m in models}),
        },
    ]
    if "mosaic_v2" in models:
        gain = at("mosaic_v2", 1, long) - at("mosaic_v2", 0, long)
        entries.append(
            {
                "claim": "one fine-tuning step at the long context: MM v2's gain",
                "paper": "+22 points after 1 minibatch, optimum after 2 (Fig. 8)",
                "ours": f"{cell(gain)} points (to {cell(at('mosaic_v2', 1, long))}%)",
                "verdict": "not testable: MM v2 is at its pretraining level before any step"
                if kept("mosaic_v2") >= ADAPTED
                else ("holds (gain above 0 beyond the interval)" if _above_zero(gain) else "not shown"),
            }
        )
    if set(models) == set(LABELS):
        gap = at("mosaic_v2", 1, long) - at("llama", last, long)  # paired by seed
        mean, half = stats.t_interval(100 * gap.to_numpy())
        entries.append(
            {
                "claim": f"the transformer after {last} steps vs MM v2 after 1",
                "paper": "transformer after 800 minibatches still below MM v2 after 1 (Fig. 8)",
                "ours": f"Llama {cell(at('llama', last, long))}% vs MM v2 {cell(at('mosaic_v2', 1, long))}%; "
                f"paired gap {mean:.1f} ± {half:.1f} points",
                "verdict": "n/a (one seed, no interval)"
                if math.isnan(half)
                else "holds (gap above 0 beyond the interval)"
                if mean - half > 0
                else ("reversed" if mean + half < 0 else "not shown (interval includes 0)"),
            }
        )
        floor = _scalar(df, "chance_copy")
        adapt = steps_to_adapt(acc, short, long, floor).pivot(index="seed", columns="model", values="steps")
        fmt = lambda s: ", ".join("never" if math.isnan(v) else str(int(v)) for v in s)  # noqa: E731
        mm, ll = adapt["mosaic_v2"], adapt["llama"].fillna(math.inf)
        fewer = bool((mm.max() < ll.min()) and not mm.isna().any())
        entries.append(
            {
                "claim": f"MM v2 adapts in fewer steps (long accuracy >= {ADAPTED:.0%} of its short accuracy)",
                "paper": "1-2 minibatches vs > 800 (Fig. 8)",
                "ours": f"steps per seed: MM v2 {fmt(adapt['mosaic_v2'])}; Llama {fmt(adapt['llama'])} (of {last})",
                "verdict": "holds (every MM v2 seed before every Llama seed)" if fewer else "not shown",
            }
        )
    return entries


def curve_table(acc: pd.DataFrame, short: int, long: int) -> list[dict[str, Any]]:
    rows = []
    for step in sorted(acc.step.unique()):
        row: dict[str, Any] = {"steps": int(step)}
        for m in LABELS:
            for T in (long, short):
                sub = acc[(acc.model == m) & (acc.step == step) & (acc.context == T)]
                if len(sub):
                    row[f"{m} @{T}"] = cell(sub.value)
        rows.append(row)
    return rows


def plot_curves(acc: pd.DataFrame, short: int, long: int, path: Path, paper: str, chance: float = math.nan) -> Path:
    import matplotlib.pyplot as plt

    results.figure_style()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, context in zip(axes, (long, short), strict=True):
        for m in LABELS:
            sub = acc[(acc.model == m) & (acc.context == context)]
            if not len(sub):
                continue
            by_step = sub.groupby("step").value.apply(lambda v: stats.t_interval(100 * v.to_numpy())).apply(pd.Series)
            x = by_step.index.to_numpy() + 1  # steps + 1 on a log axis, so step 0 shows
            mean, half = by_step[0].to_numpy(), np.nan_to_num(by_step[1].to_numpy())
            ax.plot(x, mean, "o-", ms=4, color=COLORS[m], label=LABELS[m])
            ax.fill_between(x, mean - half, mean + half, color=COLORS[m], alpha=0.2)
            if context != short:  # where a fully adapted model would be: its accuracy at the pretraining context
                short_acc = acc[(acc.model == m) & (acc.context == short) & (acc.step == 0)].value
                ax.axhline(100 * short_acc.mean(), color=COLORS[m], ls=":", lw=1)
        if not math.isnan(chance):
            ax.axhline(100 * chance, color="0.5", ls="--", lw=0.8, label="chance: copying any stated value")
        ax.set_xscale("log")
        ticks = sorted(acc.step.unique())
        ax.set_xticks([t + 1 for t in ticks], [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("fine-tuning steps at the long context (log scale of steps + 1)")
        ax.set_ylim(-3, 103)
    axes[0].set_ylabel("retrieval accuracy (%)")
    axes[0].set_title(f"at the long context ({long} tokens)\ndotted: each model at {short} tokens after pretraining")
    axes[1].set_title(f"at the pretraining context ({short} tokens)\n(does fine-tuning long keep it?)")
    axes[1].legend(loc="upper right", bbox_to_anchor=(1.0, 0.9))  # the empty band between the curves
    note = textwrap.fill(f"Paper (MM v2 Fig. 8): {paper}. Bands: 95% t-interval over seeds.", 140)
    fig.text(0.01, -0.08, note, fontsize=8, va="top")
    fig.savefig(path)
    plt.close(fig)
    return path


def tuning_table(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Every pretraining grid point (`tune`): validation retrieval accuracy and text loss at the end of
    pretraining, mean ± 95% t-interval over seeds, and in how many seeds it was the one chosen."""
    sub = df[df.split == "tune"]
    if sub.empty or sub.slice_value.isna().all():
        return []
    chosen = {}
    for (model, seed), g in sub[sub.metric.str.startswith("chosen_")].groupby(["model", "seed"]):
        values = dict(zip(g.metric, g.value, strict=True))
        chosen[model, seed] = (values.get("chosen_lr"), values.get("chosen_steps"))
    rows = []
    points = sub[sub.slice_value.notna()]
    for (model, _run), g in points.groupby(["model", "slice_value"]):
        wide = g.pivot_table(index="seed", columns="metric", values="value")
        lr, steps = float(wide["lr"].iloc[0]), int(wide["steps"].iloc[0])
        picked = sum(chosen.get((model, seed)) == (lr, steps) for seed in wide.index)
        rows.append(
            {
                "model": LABELS.get(model, model),
                "lr": f"{lr:g}",
                "pretraining steps": steps,
                "validation accuracy (%)": cell(wide["val_acc"]),
                "validation text loss": stats.mean_std(wide["val_loss"].to_numpy()),
                "chosen in seeds": f"{picked}/{len(wide)}",
            }
        )
    return rows


def copy_report(df: pd.DataFrame, short: int, long: int, out_dir: Path) -> tuple[list[dict[str, Any]], list[Path]]:
    """The copy test after pretraining (spans of short / 2) and after fine-tuning (long / 2), MM v2 vs the
    Llama paired by seed, and its figure."""
    copies = df[df.metric == "copy_loss"]
    if copies.empty:
        return [], []
    first, last = int(copies.step.min()), int(copies.step.max())
    stages = [("mosaic_v2", "llama", first, f"after pretraining ({short // 2}-token spans)"),
              ("mosaic_v2", "llama", last, f"after {last} fine-tuning steps ({long // 2}-token spans)")]  # fmt: skip
    entries = pair_entries(df, stages, (LABELS["mosaic_v2"], LABELS["llama"]))
    panels = [(f"copy test, {where}", copies[copies.step.astype(int) == step]) for *_, step, where in stages]
    figure = plot_copy(panels, [(m, LABELS[m]) for m in LABELS], list(SPLITS), out_dir / "fig_copy.png")
    return entries, [figure]


def write_report(df: pd.DataFrame, out_dir: Path, targets: dict[str, Any]) -> list[Path]:
    acc = accuracy_frame(df)
    contexts = sorted(acc.context.unique())
    short, long = contexts[0], contexts[-1]
    seeds = sorted(int(s) for s in df.seed.unique())
    params = df[df.metric == "params"].groupby("model").value.first()
    wall = df[df.metric == "wall_s"].value
    notes = [
        f"Ours: preset `{df.preset.iloc[0]}`, seeds {seeds}; cells are mean ± 95% t-interval half-width over seeds,"
        " accuracy in % on each seed's fixed test documents (validation text, never used for choices).",
        "Parameters: "
        + ", ".join(f"{LABELS.get(m, m)} {int(v):,}" for m, v in params.items())
        + (f"; wall time per seed {wall.min() / 60:.1f}-{wall.max() / 60:.1f} min." if len(wall) else "."),
        f"Paper (Fig. 8, {targets['fig8']}): RULER QA on 1.5B/8B models; ours: synthetic key -> value retrieval in"
        " TinyStories text with 2-layer models (see the experiment docstring for the deviations).",
    ]
    mm_short = acc[(acc.model == "mosaic_v2") & (acc.step == 0) & (acc.context == short)].value.mean()
    mm_long = acc[(acc.model == "mosaic_v2") & (acc.step == 0) & (acc.context == long)].value.mean()
    if mm_long >= ADAPTED * mm_short:  # why the paper's first-step jump cannot show here
        notes.append(
            "MM v2 is at its pretraining-context accuracy before any fine-tuning step, so the paper's +22-point"
            " first step has nothing to add here: the paper's MM v2 extrapolates only partly (Table 3, small: 45.0"
            f" at 4k, 31.7 at 32k), ours fully on this easier task ({long // short}x, not 8x; few distinct keys)."
        )
    copies, copy_figure = copy_report(df, short, long, out_dir)
    extra = {
        f"Test accuracy (%) against fine-tuning steps, at {long} and {short} tokens": curve_table(acc, short, long),
        "Pretraining grid (`tune`): each family's best on validation is the one fine-tuned": tuning_table(df),
        f"In-context copy test, paired by seed: {V2_CLAIM}": copies,
    }
    notes += [
        "Pretraining grid: every lr x steps point starts from the same weights; the one with the best validation",
        "retrieval accuracy at the pretraining context (then lower validation text loss) is fine-tuned, per seed.",
        COPY_NOTE,
    ]
    title = "Long-context adaptation: fine-tuning steps needed after short pretraining"
    extra = {k: v for k, v in extra.items() if v}
    paths = results.write_table(claim_entries(acc, df, short, long), out_dir, title, notes, extra)
    chance = _scalar(df, "chance_copy")
    paths.append(plot_curves(acc, short, long, out_dir / "fig_adaptation.png", targets["fig8"], chance))
    return paths + copy_figure
