"""reports/harness/: MMv2 Table 1 (the paper's 19 benchmarks, the paper's numbers beside ours and the
offline model's published ones), Table 2 when a run removed long-term memory, and the other tasks run.

Cells are percent with a 95% Wilson interval over the n documents scored (lm-eval's group scores
are size-weighted means over their leaf tasks, i.e. a proportion over all the group's documents);
a benchmark that could not run says why ("no offline data", or what it needs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# SmolLM2-135M-Instruct's model card (lighteval prompts, zero-shot unless stated; ../shared/data/lmeval/
# README.md): published levels beside ours, to compare levels, not equality (other prompts and metrics).
PUBLISHED_SMOLLM2 = {
    "hellaswag": "40.9",
    "arc_easy": "37.3 (ARC avg)",
    "arc_challenge": "37.3 (ARC avg)",
    "piqa": "66.3",
    "mmlu": "29.3 (cloze)",
    "gsm8k": "1.4 (5-shot)",
    "bbh": "28.2 (3-shot)",
}
NOT_SCORES = ["n", "chance", "hub_reachable", "skipped", "docs_total"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _scores(df: Any) -> Any:
    """One score per (model, long-term memory removed?, task, metric): the run with most documents."""
    n = df[df.metric == "n"].set_index(["variant", "split"]).value
    df = df[~df.metric.isin(NOT_SCORES) & ~df.metric.str.endswith("_stderr") & ~df.metric.str.startswith("doc:")]
    df = df.copy()
    df["removed"] = df.variant.str.contains("__no-ltm")
    df["docs"] = [n.get((v, s), 0) for v, s in zip(df.variant, df.split, strict=True)]
    df = df.sort_values("docs", ascending=False, kind="stable")
    return df.drop_duplicates(["model", "removed", "split", "metric", "slice_value"])


def _skips(df: Any) -> dict[tuple[str, bool, str], str]:
    """(model, long-term memory removed?, task) -> why it was skipped."""
    sk = df[df.metric == "skipped"]
    removed = sk.variant.str.contains("__no-ltm")
    return {(m, r, t): why for m, r, t, why in zip(sk.model, removed, sk.split, sk.slice_value, strict=True)}


def _cell(sc: Any, model: str, removed: bool, task: str, metric: str, why: str | None) -> tuple[str, float | None]:
    name, _, filt = metric.partition(",")
    hit = sc[(sc.model == model) & (sc.removed == removed) & (sc.split == task) & (sc.metric == name)]
    hit = hit[hit.slice_value == filt] if filt else hit
    if hit.empty:
        return why or "not run", None
    return _with_ci(hit.value.iloc[0], int(hit.docs.iloc[0])), 100 * hit.value.iloc[0]


def _also_reported(sc: Any, models: list[str], b: Any, primary: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for the task's other metrics, as lm-eval's own table lists them (acc beside acc_norm): the
    paper reports one metric per benchmark, so these rows carry ours only and stay out of the average."""
    if sc.empty:
        return []
    name, _, filt = b.metric.partition(",")
    have = sc[(sc.split == b.task) & ~sc.removed & ~((sc.metric == name) & ((sc.slice_value == filt) | (not filt)))]
    rows = []
    for metric, flt in sorted({(r.metric, r.slice_value) for r in have.itertuples()}):
        key = f"{metric},{flt}" if flt and flt != "none" else metric
        entry = {k: "" for k in primary} | {"benchmark": b.name, "lm-eval task": b.task, "metric": key}
        entry |= {"chance": primary["chance"], "docs in split": primary["docs in split"]}
        for m in models:
            entry[f"ours: {m}"] = _cell(sc, m, False, b.task, f"{metric},{flt}", None)[0]
        rows.append(entry)
    return rows


def _with_ci(value: float, n: int) -> str:
    """`41.2 [31.0, 52.1] n=80`: percent with a 95% Wilson interval over the n documents."""
    from repro import stats

    if n <= 0 or not 0 <= value <= 1:
        return _pct(value)
    hits = round(value * n)
    lo, hi = stats.interval95([1.0] * hits + [0.0] * (n - hits))
    return stats.fmt_ci(value, lo, hi, n, scale=100, digits=1)


def _mean(values: list[float | None], n: int) -> str:
    """The mean over all n benchmarks, or over those run ("x over k/n")."""
    got = [v for v in values if v is not None]
    if len(got) == n:
        return f"{sum(got) / n:.1f}"
    return f"{sum(got) / len(got):.1f} over {len(got)}/{n}" if got else f"n/a (0/{n} run)"


def _first(df: Any, task: str, metric: str) -> float | None:
    v = df[(df.split == task) & (df.metric == metric)].value
    return float(v.max()) if len(v) else None


def _doc_scores(df: Any) -> dict[tuple[str, bool], dict[str, Any]]:
    """(model, long-term memory removed?) -> {task: per-document scores indexed by `<leaf>#<doc_id>`},
    from the run with most documents of each task."""
    import pandas as pd

    docs = df[df.metric.str.startswith("doc:")]
    out: dict[tuple[str, bool], dict[str, Any]] = {}
    for (model, variant, task), sub in docs.groupby(["model", "variant", "split"]):
        key = (model, "__no-ltm" in variant)
        have = out.setdefault(key, {})
        if task not in have or len(sub) > len(have[task]):
            have[task] = pd.Series(sub.value.to_numpy(), index=sub.slice_value.to_numpy())
    return out


def _paired_table(df: Any, paper19: list[Any]) -> list[dict[str, Any]]:
    """Per benchmark, (A - B) averaged over the documents both scored, with a 95% t-interval over those
    documents: every model with and without its long-term memory, and every two models. Group rows:
    the mean of the per-benchmark differences (Table 2's grouping), its interval from their standard errors."""
    from repro import stats

    scores = _doc_scores(df)
    if len(scores) < 2:
        return []
    keys = sorted(scores, key=lambda k: ("mosaic" not in k[0], k))  # MMv2 first: differences read MMv2 - other
    pairs = [((m, False), (m, True)) for m, r in keys if r and (m, False) in scores]
    kept = [k for k in keys if not k[1]]
    pairs += [(a, b) for i, a in enumerate(kept) for b in kept[i + 1 :]]

    def name(k: tuple[str, bool]) -> str:
        return f"{k[0]}{' without LTM' if k[1] else ''}"

    table = []
    groups: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for b in paper19:
        entry = {"benchmark": b.name, "Table 2 group": "13 tasks" if b.in_13 else "other 6"}
        for a, c in pairs:
            col = f"{name(a)} - {name(c)}"
            x, y = scores[a].get(b.task), scores[c].get(b.task)
            if x is None or y is None:
                entry[col] = "-"
                continue
            p = stats.paired_diff(x, y)
            entry[col] = f"{stats.fmt_paired(p)} n={p['n']}"
            if p["n"] > 1:
                groups.setdefault(col, {}).setdefault(entry["Table 2 group"], []).append((p["mean"], p["se"]))
        table.append(entry)
    for group in ("13 tasks", "other 6"):
        entry = {"benchmark": f"mean over the {group} run", "Table 2 group": group}
        for a, c in pairs:
            col = f"{name(a)} - {name(c)}"
            got = groups.get(col, {}).get(group, [])
            if not got:
                entry[col] = "-"
                continue
            mean, half = stats.mean_of(got)
            entry[col] = (
                f"{100 * mean:+.2f} [{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}] ({len(got)} tasks)"
            )
        table.append(entry)
    return table


def write_report(df: Any, out_dir: Path, targets: dict[str, Any]) -> list[Path]:
    """reports/harness/table.md|csv: Table 1 (paper19, paper beside ours), Table 2 when a run
    removed long-term memory, and every other task run, with its chance level and 95% interval."""
    paper19, table1_avg, table2 = targets["paper19"], targets["table1_avg"], targets["table2"]
    from repro import results

    sc = _scores(df) if not df.empty else df
    skips = _skips(df) if not df.empty else {}
    models = sorted(set(sc.model) | {m for m, _, _ in skips}) if not df.empty else []

    def why(m: str, removed: bool, task: str) -> str | None:
        # A requested task that could not run leaves a `skipped` row with its reason ("no offline data");
        # a task with neither scores nor a skip was simply not asked for in that model's runs.
        return skips.get((m, removed, task)) or "not requested"

    ours: dict[str, dict[str, float | None]] = {m: {} for m in models}
    table1 = []
    for b in paper19:
        chance = _first(df, b.task, "chance") if not df.empty else None
        total = _first(df, b.task, "docs_total") if not df.empty else None
        entry = {
            "benchmark": b.name, "lm-eval task": b.task, "metric": b.metric,
            "paper: transformer (large)": f"{b.transformer:.1f}", "paper: MMv2 (large)": f"{b.mmv2:.1f}",
            "published: SmolLM2-135M-Instruct": PUBLISHED_SMOLLM2.get(b.task, "-"),
            "chance": _pct(chance) if chance is not None else "-",
            "docs in split": f"{total:.0f}" if total is not None else "-",
        }  # fmt: skip
        for m in models:
            entry[f"ours: {m}"], ours[m][b.name] = _cell(sc, m, False, b.task, b.metric, why(m, False, b.task))
        if not models:
            entry["ours"] = "not run"
        table1.append(entry)
        table1 += _also_reported(sc, models, b, entry)
    avg = {"benchmark": "average (19)", "lm-eval task": "", "metric": ""}
    avg |= {
        "paper: transformer (large)": f"{table1_avg['transformer']:.1f}",
        "paper: MMv2 (large)": f"{table1_avg['mmv2']:.1f}",
        "published: SmolLM2-135M-Instruct": "", "chance": "", "docs in split": "",
    }  # fmt: skip
    avg |= {f"ours: {m}": _mean(list(ours[m].values()), 19) for m in models}
    table1.append(avg if models else avg | {"ours": "not run"})

    extra: dict[str, list[dict[str, Any]]] = {}
    removed_models = sorted(set(sc[sc.removed].model)) if not df.empty else []
    if removed_models:
        rows2 = []
        for group, (t, mm, mm_removed) in table2.items():
            benches = [b for b in paper19 if b.in_13 == (group == "13 tasks")]
            entry = {"tasks": group, "paper: transformer": f"{t:.1f}", "paper: MMv2": f"{mm:.1f}"}
            entry["paper: MMv2 without LTM"] = f"{mm_removed:.1f}"
            for m in removed_models:
                # the same benchmarks on both sides: those run with and without long-term memory
                cells = {r: [_cell(sc, m, r, b.task, b.metric, None)[1] for b in benches] for r in (False, True)}
                both = [k for k in range(len(benches)) if cells[False][k] is not None and cells[True][k] is not None]
                for removed, tag in ((False, "with LTM"), (True, "without LTM")):
                    vals = [cells[removed][k] if k in both else None for k in range(len(benches))]
                    entry[f"ours: {m} {tag}"] = _mean(vals, len(benches))
            rows2.append(entry)
        extra["Table 2: long-term memory removed after training"] = rows2

    paired = _paired_table(df, paper19) if not df.empty else []
    if paired:
        extra["Paired differences on the same documents (points, 95% interval)"] = paired

    paper_tasks = {b.task for b in paper19}
    local = []
    if not df.empty:
        for _, r in sc[~sc.split.isin(paper_tasks) & (sc.split != "_env")].iterrows():
            sub = df[(df.variant == r.variant) & (df.preset == r.preset) & (df.split == r.split)]
            chance = sub[sub.metric == "chance"].value
            n = sub[sub.metric == "n"].value
            local.append({
                "model": r.model, "long-term memory": "removed" if r.removed else "kept", "task": r.split,
                "metric": f"{r.metric} ({r.slice_value})", "ours [95% CI] n": _with_ci(r.value, int(r.docs)),
                "chance": _pct(chance.iloc[0]) if len(chance) else "-",
                "documents": int(n.iloc[0]) if len(n) else "-", "run": f"{r.preset}/{r.variant}",
            })  # fmt: skip
        for (m, removed, task), reason in sorted(skips.items()):
            if task not in paper_tasks:
                local.append({
                    "model": m, "long-term memory": "removed" if removed else "kept", "task": task,
                    "metric": "-", "ours [95% CI] n": f"not run: {reason}", "chance": "-", "documents": "-", "run": "-",
                })  # fmt: skip
    if local:
        extra["Other tasks run"] = local
    notes = [
        "- Scores in percent. Paper: Memory Mosaics v2 (Zhang & Bottou 2025), Tables 1, 2 and 9: large "
        "models (~8-10B parameters, 1T training tokens, 32k fine-tuned). Ours: the models evaluated here; at CPU "
        "scale the absolute numbers are not comparable, only the MMv2-vs-transformer and with/without-LTM "
        "differences are.",
        "- The thesis does not publish its lm-eval variants, shot counts or metrics; the `lm-eval task` and "
        "`metric` columns are our choice (acc_norm where lm-eval reports it for the paper's MC tasks; the "
        "task's other metrics follow in rows of their own, as in lm-eval's table, outside the average), with "
        "each task's own lm-eval few-shot setting (gsm8k 5-shot, bbh 3-shot chain of thought, others 0). "
        "`mmlu-alt` is run as `mmlu`; `race_middle` is lm-eval's race task on the dataset's middle subset.",
        "- Data: with `--data-dir DIR`, tasks with a `DIR/lmeval/<task>/` copy run from it through lm-eval's "
        "own task definitions (`repro/eval/lmeval_local.py`: LOCAL_DATA); 'no offline data' marks benchmarks "
        "asked for with no copy while the hub was unreachable, 'not requested' ones no run asked for. "
        "humaneval+ needs humaneval_plus's extra tests, which have no copy; `humaneval` (the original tests) "
        "is in the other-tasks table. Offline, humaneval and mbpp are scored by `repro/eval/code_eval.py` "
        "(evaluate's pass@k re-implemented: each program in its own Python process, 3 s limit).",
        "- `published`: SmolLM2-135M-Instruct's model card (lighteval prompts, zero-shot unless stated): a level "
        "to compare with, not the same measurement. `chance`: mean of 1/#choices over the scored documents.",
        "- Cells: percent [95% Wilson interval] n=documents scored (a seeded, evenly spread subset when fewer "
        "than `docs in split`: `--limit`, and `--limit-generate` for generation benchmarks).",
        "- Generated from runs/harness/ by `repro eval harness` and `repro report --all`.",
    ]
    return results.write_table(
        table1, out_dir, "lm-evaluation-harness: persistent knowledge (MMv2 Table 1)", notes, extra
    )
