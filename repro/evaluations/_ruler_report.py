"""reports/ruler/: RULER scores per task and context length beside MM v2 Table 4 (`Ruler.targets`),
every cell with its sample count and 95% Wilson interval, and the score-vs-length figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from repro import results
from repro.data.ruler import TASKS
from repro.errors import UserError


def length_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _scores(df: pd.DataFrame) -> pd.DataFrame:
    """Score rows as (model, split, length) -> mean over runs/seeds."""
    sc = df[df.metric == "score"].copy()
    sc["length"] = sc.slice_value.astype(int)
    return sc.groupby(["model", "split", "length"], as_index=False)["value"].mean()


def _verdict(ours: dict[int, float], table4: dict[str, dict[int, float]]) -> str:
    """Ours vs Table 4's small models at the lengths both have."""
    common = [n for n in sorted(ours) if n in table4["MM v2 small"]]
    if not common:
        return "no Table 4 length evaluated (the paper starts at 4k)"
    parts = []
    for n in common:
        mm, tf = table4["MM v2 small"][n], table4["transformer small"].get(n)
        rel = "above" if ours[n] > mm else "below"
        tf_txt = f", transformer small {tf}" if tf is not None else ""
        parts.append(f"{length_label(n)}: {ours[n]:.1f}, {rel} MM v2 small {mm}{tf_txt}")
    drop = ours[common[0]] - ours[common[-1]]
    tail = (
        f"; loses {drop:.1f} points from {length_label(common[0])} to {length_label(common[-1])}"
        if len(common) > 1
        else ""
    )
    return "; ".join(parts) + tail


def _task_label(split: str, n_tasks: int) -> str:
    """The mean is RULER's average only when it covers all 13 tasks; otherwise it says what it covers."""
    if n_tasks == len(TASKS):
        return f"RULER average ({n_tasks}/13 tasks)"
    return f"mean of {n_tasks}/13 tasks (not RULER's average)"


def write_report(df: pd.DataFrame, out_dir: Path, targets: dict[str, Any]) -> list[Path]:
    """reports/ruler/: per model and template, tasks x lengths with n and 95% intervals, beside
    Table 4's QA averages; and the figure."""
    table4 = targets["table4"]
    if df.empty:
        raise UserError("no finished RULER runs; run `repro eval ruler --model ...` first.")
    df = df.copy()
    df["length"] = df.slice_value.astype(int)
    df["who"] = df.model
    sc = df[df.metric == "score"].groupby(["who", "split", "length"], as_index=False)["value"].mean()
    ci_lo = {(r.who, r.split, r.length): r.value for r in df[df.metric == "ci_low"].itertuples()}
    ci_hi = {(r.who, r.split, r.length): r.value for r in df[df.metric == "ci_high"].itertuples()}
    n_of = {(r.who, r.split, r.length): int(r.value) for r in df[df.metric == "samples"].itertuples()}
    asked = {(r.who, r.split, r.length): int(r.value) for r in df[df.metric == "requested"].itertuples()}
    n_tasks = {(r.who, r.length): int(r.value) for r in df[(df.split == "mean") & (df.metric == "tasks")].itertuples()}
    nulls = df[df.metric == "nulls"].groupby(["who", "split"])["value"].sum()
    totals = df[df.metric == "samples"].groupby(["who", "split"])["value"].sum()
    lengths = sorted(df.length.unique())
    order = {name: i for i, name in enumerate([*TASKS, "mean", "qa_mean"])}
    entries = []
    for who in sorted(df.who.unique()):
        sub = sc[sc.who == who]
        splits = set(sub.split) | {s for (w, s, _), n in n_of.items() if w == who and n == 0}
        for split in sorted(splits, key=lambda s: order.get(s, 99)):
            label = split
            if split == "mean":
                covered = {n_tasks.get((who, n), 0) for n in lengths} - {0}
                label = _task_label(split, covered.pop()) if len(covered) == 1 else "mean (tasks covered: see cells)"
            entry = {
                "model [template]": who,
                "task": label,
                "metric": TASKS[split].metric if split in TASKS else "mean",
            }
            for n in lengths:
                key = (who, split, n)
                value = sub[(sub.split == split) & (sub.length == n)].value
                if n_of.get(key) == 0:
                    entry[length_label(n)] = "too long"
                elif len(value) == 0:
                    entry[length_label(n)] = ""
                elif key in ci_lo:
                    cell = f"{value.iloc[0]:.1f} [{ci_lo[key]:.0f}, {ci_hi[key]:.0f}] n={n_of[key]}"
                    if split.startswith("qa") and asked.get(key, 0) > n_of[key]:  # the copy's every question
                        cell += f" (of {asked[key]} asked: all distinct questions)"
                    entry[length_label(n)] = cell
                elif split == "mean":
                    entry[length_label(n)] = f"{value.iloc[0]:.1f} ({n_tasks.get((who, n), 0)}/13 tasks)"
                else:
                    entry[length_label(n)] = f"{value.iloc[0]:.1f}"
            if split in TASKS:  # RULER's "Nulls": empty predictions, over all lengths
                entry["empty answers"] = f"{fmt_n(nulls.get((who, split), 0))}/{fmt_n(totals.get((who, split)))}"
            else:
                entry["empty answers"] = ""
            entries.append(entry)
    t4_lengths = sorted({n for row in table4.values() for n in row} | set(lengths))
    paper_rows = [
        {"source": f"paper Table 4: {name}", **{length_label(n): row.get(n, "×") for n in t4_lengths}, "verdict": ""}
        for name, row in table4.items()
    ]
    qa = sc[sc.split == "qa_mean"]
    for who in sorted(qa.who.unique()):
        ours = qa[qa.who == who].set_index("length")["value"].to_dict()
        cells = {length_label(n): round(ours[n], 1) if n in ours else "" for n in t4_lengths}
        paper_rows.append({"source": f"ours: {who}", **cells, "verdict": _verdict(ours, table4)})
    timing = df[df.metric.isin(["gen_s_per_sample", "eval_s_per_sample", "prompt_tokens"])]
    tim = timing.pivot_table(index=["who", "length"], columns="metric", values="value", aggfunc="mean").reset_index()
    tim_rows = [
        {
            "model [template]": r.who,
            "length": length_label(int(r.length)),
            "prompt tokens (mean)": fmt_n(r.get("prompt_tokens", float("nan"))),
            "generation s/sample": round(float(r.get("gen_s_per_sample", float("nan"))), 4),
            "model s/sample": round(float(r.get("eval_s_per_sample", float("nan"))), 2),
        }
        for _, r in tim.iterrows()
    ]
    notes = [
        "Scores are RULER's (x100): `all` = fraction of gold strings in the prediction, `part` = any gold string",
        "(QA). Each cell: score [95% interval] n=samples (Wilson interval of the mean per-sample score, exact",
        "for 0/1 scores; RULER uses 500 samples per cell). `RULER average` is the plain mean of all 13 tasks",
        "(the paper's headline); a mean over fewer tasks says how many it covers and is not RULER's average.",
        "`qa_mean`: (qa_1 + qa_2) / 2, the number of MM v2 Table 4. Lengths count tokens of each model's own",
        "tokenizer, the model template (`[chat]`: the model's chat template, the prompt as the user's turn)",
        "and the generation budget included. Prompts end with RULER's answer prefix; greedy decoding.",
        "Samples are NVIDIA/RULER's (`fill=upstream`, the default): its draws, binary search and step drop after",
        "an overflow (QA: 10 documents, so many 4k QA samples hold ~3,250 tokens), its fixed-seed shuffles (the",
        "QA gold document's slot depends only on the document count); token for token against upstream's",
        "scripts in tests. `fill=exact` (ours) fills every sample to its length; runs say which in the variant.",
        "Deviations: a regex sentence splitter instead of NLTK punkt; n counts distinct items: a QA cell never",
        "holds more samples than its local copy has questions (HotpotQA: the dev set's first 100).",
        "Timing: `model s/sample` on a shared 2-core machine (not idle); torch threads are in each env.json.",
    ]
    extra = {"RULER QA average vs MM v2 Table 4 (models fine-tuned at 32k)": paper_rows, "Timing": tim_rows}
    paths = results.write_table(entries, out_dir, "RULER: ours vs Memory Mosaics v2 Table 4", notes, extra)
    paths.append(plot(sc.rename(columns={"who": "model"}), out_dir / "fig_score_vs_length.png", table4))
    return paths


def fmt_n(x: Any) -> str:
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else str(int(round(x)))


def fmt_range(lo: float, hi: float) -> str:
    return fmt_n(lo) if lo == hi else f"{fmt_n(lo)}-{fmt_n(hi)}"


def plot(sc: pd.DataFrame, path: Path, table4: dict[str, dict[int, float]]) -> Path:
    """Score vs length per model: left the mean of the NIAH tasks run, right the QA average beside Table 4."""
    results.figure_style()
    import matplotlib.pyplot as plt

    niah = sc[sc.split.str.startswith("niah")].groupby(["model", "length"], as_index=False)["value"].mean()
    sc = pd.concat([sc, niah.assign(split="niah_mean")], ignore_index=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    panels = (
        (axes[0], "niah_mean", "needle tasks (mean of those run)"),
        (axes[1], "qa_mean", "QA average (qa_1, qa_2)"),
    )
    for ax, split, title in panels:
        for model in sorted(sc.model.unique()):
            sub = sc[(sc.model == model) & (sc.split == split)].sort_values("length")
            if len(sub):
                ax.plot(sub.length, sub.value, "o-", label=model)
        if split == "qa_mean":
            for name, row in table4.items():
                xs = sorted(row)
                style = "--" if "MM" in name else ":"
                color = "black" if "large" in name else "darkgrey"
                ax.plot(xs, [row[x] for x in xs], style, color=color, label=f"paper: {name}")
        ax.set_xscale("log", base=2)
        ticks = sorted(set(sc.length) | ({4096, 8192, 16384, 32768, 65536} if split == "qa_mean" else set()))
        ax.set_xticks(ticks, [length_label(t) for t in ticks])
        ax.set_xlabel("context length (tokens)")
        ax.set_title(title)
        ax.set_ylim(-3, 103)
        if ax.get_legend_handles_labels()[0]:  # a panel with no task run (QA only: no needles) has none
            ax.legend(loc="best")
    axes[0].set_ylabel("RULER score")
    fig.savefig(path)
    plt.close(fig)
    return path
