"""reports/icl/: the mean of the 4 prompts per shot count beside the paper's claim (`ICL.targets`), every
prompt with n, 95% intervals, length-normalised accuracy and the predicted-label distribution; figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from repro import results, stats
from repro.data import icl as data
from repro.errors import UserError


def _family(model: str) -> str | None:
    """Model family from a run's model name (checkpoint folder names such as `mosaic_v2-finetune`)."""
    low = model.lower()
    for prefix, family in (("mosaic_v2", "mmv2"), ("mmv2", "mmv2"), ("mm-v2", "mmv2"), ("mosaic", "mmv1")):
        if low.startswith(prefix):
            return family
    if low.startswith("llama"):
        return "llama"
    return "gpt2" if low.startswith(("gpt", "transformer")) else None


PAIRS = (("mmv2", "llama", "MMv2 vs Llama"), ("mmv1", "gpt2", "MMv1-vs-GPT-2 proxy"))


def _verdict(mean: pd.DataFrame, chance: float) -> str:
    """Compare Memory Mosaics with transformers where both ran (paired by seed: each seed's mosaic minus
    the same seed's transformer, per shot count, with its 95% t-interval); else say what the runs show."""
    fam = mean.assign(family=mean.model.map(_family)).dropna(subset=["family"])
    for mosaic, transformer, label in PAIRS:
        if {mosaic, transformer} <= set(fam.family):
            by = fam.groupby(["step", "family", "seed"]).value.mean()
            parts, verdicts = [], []
            for shots in sorted(fam.step.unique()):
                if (shots, mosaic) not in by.index.droplevel(2) or (shots, transformer) not in by.index.droplevel(2):
                    continue
                p = stats.paired_diff(by[shots][mosaic], by[shots][transformer])
                parts.append(f"{int(shots)}-shot {stats.fmt_paired(p)}")
                verdicts.append(stats.paired_verdict(p, +1).split(" (")[0])
            if parts:
                seeds = sorted(fam.seed.unique())
                return (
                    f"{label} (tiny models, this repo's cpu presets; mosaic minus transformer, pt, paired over seeds "
                    f"{[int(x) for x in seeds]}): {', '.join(parts)}; {'; '.join(dict.fromkeys(verdicts))}"
                )
    parts = []
    for model, sub in mean.groupby("model"):
        top = sub.groupby("step").value.mean()
        parts.append(f"{model} at most {top.max():.3f} ({int(top.idxmax())} shots; chance {chance:.3f})")
    return "not tested (no MMv2/transformer pair): " + "; ".join(parts)


def _cells(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, labels, model, shots, prompt) with every metric as a column."""
    keys = ["dataset", "labels", "model", "seed", "step", "slice_value"]
    wide = df.pivot_table(index=keys, columns="metric", values="value", aggfunc="first").reset_index()
    return wide.rename(columns={"step": "shots", "slice_value": "prompt"})


def _ci(r: Any, metric: str) -> str:
    if pd.isna(r.get(metric)):
        return "n/a"
    return stats.fmt_ci(r[metric], r[f"{metric}_lo"], r[f"{metric}_hi"], int(r["n"]))


def _headline(g: pd.DataFrame) -> str:
    """One model's mean-of-prompts accuracy per shot count: with its interval over queries for one seed;
    over several seeds, the mean and std over seeds (each seed scores n distinct queries)."""
    out = []
    for shots, by_seed in g.groupby("shots"):
        if len(by_seed) == 1:
            out.append(f"{int(shots)}-shot {_ci(by_seed.iloc[0], 'accuracy')}")
        else:
            n = int(by_seed["n"].min())
            out.append(f"{int(shots)}-shot {stats.mean_std(by_seed.accuracy, 2)} ({len(by_seed)} seeds, n={n} each)")
    return ", ".join(out)


def write_report(df: pd.DataFrame, out_dir: Path, targets: dict[str, Any]) -> list[Path]:
    """reports/icl/: the mean of the 4 prompts per shot count beside the paper's claim, every prompt
    with n, 95% intervals, length-normalised accuracy and the predicted-label distribution; figures."""
    paper, bands, claim, collapsed = targets["paper"], targets["paper_bands"], targets["claim"], targets["collapsed"]
    if df.empty:
        raise UserError("no finished icl runs; run `repro eval icl` first.")
    df = df.copy()
    df[["dataset", "labels"]] = df.split.str.split("/", expand=True)
    chance = df[df.metric == "chance"].groupby(["dataset", "labels"]).value.first()
    top_names = df[df.metric.str.startswith("top_label=")].copy()
    top_names["top_label"] = top_names.metric.str.removeprefix("top_label=")
    top_of = {(r.dataset, r.labels, r.model, r.step, r.slice_value): r.top_label for r in top_names.itertuples()}
    wide = _cells(df[~df.metric.str.startswith("top_label=")])
    mean = wide[wide.prompt == "mean"]
    entries = []
    for (dataset, kind), sub in mean.groupby(["dataset", "labels"], sort=False):
        ours = "; ".join(f"{m}: {_headline(g)}" for m, g in sub.groupby("model"))
        verdict_df = sub.rename(columns={"shots": "step", "accuracy": "value"})
        entries.append(
            dict(
                dataset=dataset,
                labels=kind,
                paper=paper.get((dataset, kind), "no paper number"),
                claim=claim,
                ours_mean_of_prompts=ours,
                chance=round(chance[(dataset, kind)], 3),
                verdict=_verdict(verdict_df, chance[(dataset, kind)]),
            )
        )
    detail = []
    for _, r in wide.sort_values(["dataset", "labels", "model", "seed", "shots", "prompt"]).iterrows():
        skipped = df[(df.metric == "skipped") & (df.dataset == r.dataset) & (df.labels == r["labels"])
                     & (df.model == r.model) & (df.seed == r.seed) & (df.step == r.shots)]  # fmt: skip
        if r.prompt == "mean" or not pd.isna(r.get("accuracy")):
            share = r.get("top_label_share")
            top = top_of.get((r.dataset, r["labels"], r.model, r.shots, r.prompt), "")
            detail.append({
                "dataset": r.dataset, "labels": r["labels"], "model": r.model, "seed": int(r.seed),
                "shots": int(r.shots),
                "prompt": r.prompt if r.prompt != "mean" else f"mean of {int(r.get('prompts', 0))} prompts",
                "tokens": fmt_int(r.get("prompt_tokens")),
                "accuracy [95% CI] n": _ci(r, "accuracy"),
                "length-normalised": _ci(r, "accuracy_norm"),
                "distinct predicted": fmt_int(r.get("distinct_predictions")),
                "most predicted (share)": f"{top} ({share:.2f})" if top and not pd.isna(share) else "",
                "collapsed": ("yes" if share >= collapsed else "no") if not pd.isna(share) else "",
                "seconds": round(float(r["seconds"]), 1) if not pd.isna(r.get("seconds")) else "",
            })  # fmt: skip
        elif r.prompt != "-" and len(skipped):
            reason = next((s.split(":", 1)[1].strip() for s in skipped.slice_value if s.startswith(r.prompt)), "")
            detail.append({"dataset": r.dataset, "labels": r["labels"], "model": r.model, "seed": int(r.seed),
                           "shots": int(r.shots),
                           "prompt": r.prompt, "tokens": fmt_int(r.get("prompt_tokens")),
                           "accuracy [95% CI] n": f"skipped: {reason}"})  # fmt: skip
    seeds = sorted(int(s) for s in df.seed.unique())
    notes = [
        f"Ours: seeds {seeds}. Each cell: accuracy [95% Wilson interval] n=distinct test queries. The headline is",
        "the mean over the 4 prompts (newline/space x shuffled/class-ordered) that ran: each query's accuracy is",
        "averaged over the prompts, the interval is over queries (n = distinct queries, the prompt count in its",
        "own column), so prompt variants do not count as extra samples; no prompt is picked on test data.",
        "`length-normalised`: labels ranked by mean log-probability per label token instead of the sum.",
        f"`most predicted (share)`: the label answered most often; `collapsed`: one label for >= {collapsed:.0%} of",
        "the queries. A prompt over the model's context is skipped, never truncated. `[chat]`: the model's chat",
        "template (instruction, demonstrations and query as the user's turn, the label as the answer).",
        "Paper: ranges read off MMv2's ICL figures (large models, reference memory-mosaics.md §4.3).",
        "Timing (`seconds`, per prompt) on a shared 2-core machine (not idle).",
    ]
    paths = results.write_table(
        entries,
        out_dir,
        "In-context classification: paper vs ours",
        notes,
        {"Every prompt, shot count and model": detail},
    )
    for dataset in mean.dataset.unique():
        paths.append(_plot(mean[mean.dataset == dataset], chance, dataset, out_dir / f"fig_{dataset}.png", bands))
    return paths


def fmt_int(x: Any) -> str:
    return "" if x is None or pd.isna(x) else str(int(x))


def _plot(mean: pd.DataFrame, chance: pd.Series, dataset: str, path: Path, bands: dict[str, Any]) -> Path:
    results.figure_style()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    for ax, kind in zip(axes, data.LABEL_KINDS, strict=True):
        sub = mean[mean["labels"] == kind]
        for model, g in sub.sort_values("shots").groupby("model"):
            pts = []  # one seed: its interval over queries; several: the 95% t-interval over seeds
            for shots, by_seed in g.groupby("shots"):
                acc = float(by_seed.accuracy.mean())
                if len(by_seed) == 1:
                    lo, hi = float(by_seed.accuracy_lo.iloc[0]), float(by_seed.accuracy_hi.iloc[0])
                else:
                    m, half = stats.t_interval(by_seed.accuracy)
                    lo, hi = m - half, m + half
                pts.append((shots, acc, acc - lo, hi - acc))
            x, y, down, up = zip(*pts, strict=True)
            ax.errorbar(x, y, yerr=[down, up], marker="o", capsize=3, label=model)
        if (dataset, kind) in chance:
            ax.axhline(chance[(dataset, kind)], ls=":", c="grey", label="chance")
        band = bands.get(dataset, {}).get(kind)
        if band:
            ax.axhspan(*band, color="C7", alpha=0.15, label="paper's range (large)")
        ax.set_xscale("log", base=2)
        ticks = sorted(mean.shots.unique())
        ax.set_xticks(ticks, [str(int(t)) for t in ticks])
        ax.set_ylim(0, 1)
        ax.set_title(f"{dataset}, {kind} labels")
        ax.set_xlabel("shots (examples per class)")
    axes[0].set_ylabel("accuracy (mean of 4 prompts, 95% CI;\nover seeds where several)")
    axes[1].legend(loc="best")
    fig.savefig(path)
    plt.close(fig)
    return path
