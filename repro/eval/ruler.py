"""`repro eval ruler`: RULER at several context lengths for any model, scored as RULER scores it.

Claim checked (Memory Mosaics v2, Table 4; reference memory-mosaics.md §4.3): on RULER's two
multi-document QA tasks (qa_1 SQuAD, qa_2 HotpotQA; 32 generated tokens), MM v2 keeps more of its
score as the context grows than a Transformer of the same size. QA average, models fine-tuned at 32k:
MM v2 small 44.3 / 39.3 / 39.4 / 36.9 / 25.3 and transformer small 37.0 / 29.3 / 29.0 / 22.1 at
4k / 8k / 16k / 32k / 64k; large: 58.9 / 55.5 / 54.9 / 53.4 / 46.4 vs 51.2 / 48.8 / 44.7 / 41.1.

Scoring (NVIDIA/RULER): the prediction is stripped, control characters become newlines; `all`: the
fraction of gold strings found (case-insensitive substring), `part`: 1 if any is found (QA);
per-task mean x100, the mean over tasks per length, and the QA average (qa_1, qa_2) of Table 4.
Prompts end with the answer prefix (base-model prompting; RULER issue #107); greedy decoding, no stop
strings. Samples: `repro.data.ruler`. Run directory: `OUT/ruler/eval/<variant>/s<seed>/`.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import typer

from repro import config as cfglib
from repro import results
from repro.data.ruler import TASKS, Generator, Sample, Sources, resolve_tasks
from repro.errors import UserError
from repro.track import console, progress

EXPERIMENT, PRESET = "ruler", "eval"
# MM v2 Table 4: RULER QA average (qa_1, qa_2), models fine-tuned at 32k; None: not reported (×).
PAPER_TABLE4: dict[str, dict[int, float]] = {
    "MM v2 small": {4096: 44.3, 8192: 39.3, 16384: 39.4, 32768: 36.9, 65536: 25.3},
    "transformer small": {4096: 37.0, 8192: 29.3, 16384: 29.0, 32768: 22.1},
    "MM v2 large": {4096: 58.9, 8192: 55.5, 16384: 54.9, 32768: 53.4, 65536: 46.4},
    "transformer large": {4096: 51.2, 8192: 48.8, 16384: 44.7, 32768: 41.1},
}


def parse_ctx(text: str) -> list[int]:
    """`4k`, `32k`, `32768` or a comma list of them -> sorted token counts (k = 1024)."""
    lengths: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*([kK]?)\s*", part)
        if not m or int(m.group(1)) == 0:
            raise UserError(f"--ctx '{part.strip()}' is not a length; give e.g. 4k, 32k or 32768 (comma-separated).")
        lengths.add(int(m.group(1)) * (1024 if m.group(2) else 1))
    return sorted(lengths)


def length_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


# ---- scoring ------------------------------------------------------------------------------------


def postprocess(prediction: str) -> str:
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


def match(metric: str, prediction: str, refs: list[str]) -> float:
    """One sample's score in [0, 1]: `all` = fraction of refs found, `part` = any ref found."""
    pred = postprocess(prediction).lower()
    found = [r.lower() in pred for r in refs]
    if metric == "all":
        return sum(found) / len(found)
    if metric == "part":
        return float(any(found))
    raise ValueError(f"unknown RULER metric {metric}")


def score(metric: str, predictions: list[str], refs: list[list[str]]) -> float:
    """RULER's task score: the mean sample score x100, rounded to 2 decimals."""
    values = [match(metric, p, r) for p, r in zip(predictions, refs, strict=True)]
    return round(100 * float(np.mean(values)), 2) if values else float("nan")


# ---- running ------------------------------------------------------------------------------------


@dataclass
class RulerConfig:
    model: str
    label: str
    lengths: list[int]
    tasks: list[str]
    samples: int
    seed: int
    device: str = "cpu"


def model_label(spec: str, name: str) -> str:
    """A short name for tables: the GGUF file stem, the HF name, or `family:dir` of a checkpoint."""
    if spec.startswith("gguf:"):
        return Path(spec[5:]).name.removesuffix(".gguf")
    if spec.startswith("hf:"):
        return spec[3:].rstrip("/").split("/")[-1]
    return name


def run_dir_for(out: Path, cfg: RulerConfig) -> Path:
    from repro.runtime import variant_name

    variant = variant_name(
        [f"model={cfg.label}", f"ctx={'+'.join(map(length_label, cfg.lengths))}", f"tasks={','.join(cfg.tasks)}"]
        + [f"n={cfg.samples}"]
    )
    return out / EXPERIMENT / PRESET / variant / f"s{cfg.seed}"


def _record(s: Sample, prediction: str, metric: str, seconds: float) -> dict[str, Any]:
    prompt = s.input + s.answer_prefix
    return {
        "task": s.task,
        "length": s.length,
        "index": s.index,
        "n_tokens": s.n_tokens,
        "haystack_size": s.haystack_size,
        "outputs": s.outputs,
        "prediction": prediction,
        "score": match(metric, prediction, s.outputs),
        "seconds": round(seconds, 3),
        "prompt_head": prompt[:300],
        "prompt_tail": prompt[-400:],
    }


def evaluate(model: Any, generator: Generator, cfg: RulerConfig, run_dir: Path) -> list[dict[str, Any]]:
    """Generate, predict and score every (length, task); returns the rows. Predictions are appended
    to predictions.jsonl as they come, and a restarted run reuses them (same seed, same samples)."""
    variant = run_dir.parent.name
    preds_path = run_dir / "predictions.jsonl"
    done: dict[tuple, dict[str, Any]] = {}
    if preds_path.exists():
        for line in preds_path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[(r["task"], r["length"], r["index"])] = r

    def row(split: str, metric: str, value: float, length: int) -> dict[str, Any]:
        return results.make_row(
            experiment=EXPERIMENT, preset=PRESET, variant=variant, model=cfg.label, seed=cfg.seed,
            split=split, metric=metric, value=value, step=0, slice_key="length", slice_value=length,
        )  # fmt: skip

    rows: list[dict[str, Any]] = []
    total = len(cfg.lengths) * len(cfg.tasks) * cfg.samples
    with progress(total, f"ruler {cfg.label}") as bar, preds_path.open("a") as f:
        for length in cfg.lengths:
            per_task: dict[str, float] = {}
            for task in cfg.tasks:
                spec = TASKS[task]
                t0 = time.perf_counter()
                samples = generator.samples(task, length, cfg.samples)
                gen_s = time.perf_counter() - t0
                if not samples:
                    console.print(f"[yellow]skip[/] {task} at {length}: even the smallest haystack does not fit")
                    rows.append(row(task, "samples", 0, length))
                    bar.advance(cfg.samples)
                    continue
                recs, eval_s, fresh = [], 0.0, 0
                for s in samples:
                    rec = done.get((task, length, s.index))
                    if rec is None:
                        t1 = time.perf_counter()
                        prediction = model.generate(s.prompt_ids, s.gen_tokens)
                        rec = _record(s, prediction, spec.metric, time.perf_counter() - t1)
                        eval_s, fresh = eval_s + rec["seconds"], fresh + 1
                        f.write(json.dumps(rec) + "\n")
                        f.flush()
                    recs.append(rec)
                    bar.advance(1, task=task, ctx=length_label(length))
                bar.advance(cfg.samples - len(samples))
                value = score(spec.metric, [r["prediction"] for r in recs], [r["outputs"] for r in recs])
                per_task[task] = value
                rows += [
                    row(task, "score", value, length),
                    row(task, "nulls", sum(not postprocess(r["prediction"]) for r in recs), length),
                    row(task, "samples", len(recs), length),
                    row(task, "prompt_tokens", float(np.mean([r["n_tokens"] for r in recs])), length),
                    row(task, "gen_s_per_sample", gen_s / len(samples), length),
                ]
                if fresh:
                    rows.append(row(task, "eval_s_per_sample", eval_s / fresh, length))
            if per_task:
                rows.append(row("mean", "score", float(np.mean(list(per_task.values()))), length))
            if "qa_1" in per_task and "qa_2" in per_task:
                rows.append(row("qa_mean", "score", (per_task["qa_1"] + per_task["qa_2"]) / 2, length))
    return rows


def run(
    cfg: RulerConfig,
    out: Path,
    sources: Sources,
    force: bool = False,
    model: Any = None,
) -> Path:
    """Evaluate `cfg.model` (or an already loaded `model`) into its run directory; a finished run
    is a no-op unless `force`."""
    from repro.runtime import environment

    run_dir = run_dir_for(out, cfg)
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    if (run_dir / "rows.jsonl").exists():
        console.print(f"[green]already done[/]: {run_dir} (pass --force to run again)")
        return run_dir
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists() and cfglib.load_yaml(cfg_path) != cfglib.to_dict(cfg):
        raise UserError(f"{run_dir} holds an unfinished run with another config; pass --force to restart it.")
    if model is None:
        model = load(cfg.model, cfg.device)
    if model.max_context is not None and cfg.lengths[-1] > model.max_context:
        raise UserError(
            f"--ctx {length_label(cfg.lengths[-1])} exceeds {cfg.label}'s {model.max_context}-token context; "
            f"ask for {model.max_context} tokens or fewer."
        )
    generator = Generator(model.tokenizer, sources, seed=cfg.seed)
    for t in cfg.tasks:  # missing data fails here, before anything is written
        if TASKS[t].params.get("haystack") == "essay":
            sources.essay_words()
        if TASKS[t].family == "qa":
            sources.qa(TASKS[t].params["dataset"])
    run_dir.mkdir(parents=True, exist_ok=True)
    cfglib.dump_yaml(cfg, cfg_path)
    env = {**environment(), "model_name": getattr(model, "name", cfg.label), "max_context": model.max_context}
    (run_dir / "env.json").write_text(json.dumps(env, indent=2))
    started = time.time()
    console.print(f"[bold]running[/] RULER on {cfg.label} at {', '.join(map(length_label, cfg.lengths))} -> {run_dir}")
    rows = evaluate(model, generator, cfg, run_dir)
    results.write_rows(rows, run_dir / "rows.jsonl")
    console.print(f"[green]done[/] in {time.time() - started:.0f} s: {len(rows)} rows in {run_dir / 'rows.jsonl'}")
    return run_dir


def load(spec: str, device: str = "cpu") -> Any:
    from repro.eval.models import load_model

    if spec.startswith(("hf:", "gguf:")):
        try:  # 8k-token prompts are what we want; transformers' "longer than max length" notes are noise
            import transformers

            transformers.logging.set_verbosity_error()
        except ImportError:
            pass
    return load_model(spec, device)


# ---- report -------------------------------------------------------------------------------------


def _scores(df: pd.DataFrame) -> pd.DataFrame:
    """Score rows as (model, split, length) -> mean over runs/seeds."""
    sc = df[df.metric == "score"].copy()
    sc["length"] = sc.slice_value.astype(int)
    return sc.groupby(["model", "split", "length"], as_index=False)["value"].mean()


def _verdict(ours: dict[int, float]) -> str:
    """Ours vs Table 4's small models at the lengths both have."""
    common = [n for n in sorted(ours) if n in PAPER_TABLE4["MM v2 small"]]
    if not common:
        return "no Table 4 length evaluated (the paper starts at 4k)"
    parts = []
    for n in common:
        mm, tf = PAPER_TABLE4["MM v2 small"][n], PAPER_TABLE4["transformer small"].get(n)
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


def report(runs: Path, out_dir: Path) -> list[Path]:
    """reports/ruler/: table (tasks x lengths per model, beside Table 4's QA averages) and figure."""
    df = results.collect(runs, EXPERIMENT)
    if df.empty:
        raise UserError(f"no finished RULER runs under {runs}/; run `repro eval ruler --model ...` first.")
    sc = _scores(df)
    per_length = df[(df.metric == "samples") & (df.value > 0)].groupby(["model", "split"])["value"]
    counts = {k: fmt_range(v.min(), v.max()) for k, v in per_length}
    nulls = df[df.metric == "nulls"].groupby(["model", "split"])["value"].sum()
    totals = df[df.metric == "samples"].groupby(["model", "split"])["value"].sum()
    lengths = sorted(sc.length.unique())
    order = {name: i for i, name in enumerate([*TASKS, "mean", "qa_mean"])}
    unfit = df[(df.metric == "samples") & (df.value == 0)]
    unfit = {(r.model, r.split, int(r.slice_value)) for r in unfit.itertuples()}
    entries = []
    for model in sorted(sc.model.unique()):
        sub = sc[sc.model == model]
        splits = set(sub.split) | {s for m, s, _ in unfit if m == model}
        for split in sorted(splits, key=lambda s: order.get(s, 99)):
            cells = sub[sub.split == split].set_index("length")["value"]
            metric = TASKS[split].metric if split in TASKS else "mean"
            entry = {"model": model, "task": split, "metric": metric, "n/length": counts.get((model, split), "")}
            for n in lengths:
                fits = (model, split, n) not in unfit
                entry[length_label(n)] = round(float(cells[n]), 1) if n in cells else ("" if fits else "too long")
            if split in TASKS:  # RULER's "Nulls": empty predictions, over all lengths
                entry["empty answers"] = f"{fmt_n(nulls.get((model, split), 0))}/{fmt_n(totals.get((model, split)))}"
            else:
                entry["empty answers"] = ""
            entries.append(entry)
    t4_lengths = sorted({n for row in PAPER_TABLE4.values() for n in row} | set(lengths))
    paper_rows = [
        {"source": f"paper Table 4: {name}", **{length_label(n): row.get(n, "×") for n in t4_lengths}, "verdict": ""}
        for name, row in PAPER_TABLE4.items()
    ]
    qa = sc[sc.split == "qa_mean"]
    for model in sorted(qa.model.unique()):
        ours = qa[qa.model == model].set_index("length")["value"].to_dict()
        cells = {length_label(n): round(ours[n], 1) if n in ours else "" for n in t4_lengths}
        paper_rows.append({"source": f"ours: {model}", **cells, "verdict": _verdict(ours)})
    timing = df[df.metric.isin(["gen_s_per_sample", "eval_s_per_sample", "prompt_tokens"])].copy()
    timing["length"] = timing.slice_value.astype(int)
    tim = timing.pivot_table(index=["model", "length"], columns="metric", values="value", aggfunc="mean").reset_index()
    tim_rows = [
        {
            "model": r.model,
            "length": length_label(int(r.length)),
            "prompt tokens (mean)": fmt_n(r.get("prompt_tokens", float("nan"))),
            "generation s/sample": round(float(r.get("gen_s_per_sample", float("nan"))), 4),
            "model s/sample": round(float(r.get("eval_s_per_sample", float("nan"))), 2),
        }
        for _, r in tim.iterrows()
    ]
    notes = [
        "Scores are RULER's (x100): `all` = fraction of gold strings in the prediction, `part` = any gold string",
        "(QA). `mean`: over the tasks run at that length; `qa_mean`: (qa_1 + qa_2) / 2, the number of MM v2",
        "Table 4. `n/length`: samples per task and length (RULER uses 500). Lengths count tokens of each",
        "model's own tokenizer. Prompts end with RULER's answer prefix (base-model prompting), greedy decoding.",
        "Deviations: our word lists instead of wonderwords, a regex sentence splitter instead of NLTK punkt;",
        "the local SQuAD v2 dev copy holds 16 of 35 articles and the HotpotQA copy its first 100 questions",
        "(documents are drawn from those pools). A task score from n samples has a standard error of up to",
        "50/sqrt(n) points: with a handful of samples only large differences mean anything.",
    ]
    extra = {"RULER QA average vs MM v2 Table 4 (models fine-tuned at 32k)": paper_rows, "Timing": tim_rows}
    paths = results.write_table(entries, out_dir, "RULER: ours vs Memory Mosaics v2 Table 4", notes, extra)
    paths.append(plot(sc, out_dir / "fig_score_vs_length.png"))
    return paths


def fmt_n(x: Any) -> str:
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else str(int(round(x)))


def fmt_range(lo: float, hi: float) -> str:
    return fmt_n(lo) if lo == hi else f"{fmt_n(lo)}-{fmt_n(hi)}"


def plot(sc: pd.DataFrame, path: Path) -> Path:
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
            for name, row in PAPER_TABLE4.items():
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
        ax.legend(loc="best")
    axes[0].set_ylabel("RULER score")
    fig.savefig(path)
    plt.close(fig)
    return path


# ---- the command --------------------------------------------------------------------------------


def command(
    model: str = typer.Option(..., "--model", help="A repro checkpoint directory, hf:NAME_OR_DIR or gguf:FILE."),
    ctx: str = typer.Option("4k", "--ctx", help="Context lengths in tokens: 4k, 32k, 32768, or a comma list."),
    tasks: str = typer.Option("all", "--tasks", help="all | niah | qa | synthetic | task names, comma-separated."),
    samples: int = typer.Option(20, "--samples", help="Samples per task and length (RULER's paper: 500)."),
    seed: int = typer.Option(42, "--seed", help="Seed of the generated samples (RULER's: 42)."),
    out: Path = typer.Option(Path("runs"), "--out", help="Root of the run directories."),
    reports: Path = typer.Option(Path("reports"), "--reports", help="The table and figure go to REPORTS/ruler/."),
    data_dir: Optional[Path] = typer.Option(  # noqa: UP045  (typer needs Optional here)
        None, "--data-dir", help="Folder holding paul_graham_essays/, squad_v2/ and hotpotqa/."
    ),
    essays: Optional[Path] = typer.Option(None, "--essays", help="Essay .txt file or folder (haystack)."),  # noqa: UP045
    squad: Optional[Path] = typer.Option(None, "--squad", help="SQuAD v2 dev JSON (qa_1)."),  # noqa: UP045
    hotpotqa: Optional[Path] = typer.Option(None, "--hotpotqa", help="HotpotQA dev JSON (qa_2)."),  # noqa: UP045
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, or auto."),
    force: bool = typer.Option(False, "--force", help="Evaluate again even if a finished run exists."),
) -> None:
    """Evaluate a model on RULER (13 synthetic long-context tasks) at the given context lengths.

    Samples are generated offline and filled to each length with the model's own tokenizer; scores
    follow RULER (string match, `part` for QA). Writes OUT/ruler/eval/VARIANT/sSEED/ and
    REPORTS/ruler/table.md|csv and fig_score_vs_length.png (every RULER run under OUT, beside the
    Memory Mosaics v2 Table 4 QA numbers).
    """
    if samples < 1:
        raise UserError(f"--samples {samples}: give at least 1.")
    if data_dir is not None and not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir} is not a directory.")
    lengths, task_names = parse_ctx(ctx), resolve_tasks(tasks)
    if device == "auto":
        from repro.runtime import pick_device

        device = str(pick_device("auto"))
    loaded = load(model, device)
    cfg = RulerConfig(model, model_label(model, loaded.name), lengths, task_names, samples, seed, device)
    sources = Sources(data_dir, {"essays": essays, "squad": squad, "hotpotqa": hotpotqa})
    run_dir = run(cfg, out, sources, model=loaded)
    paths = report(out, reports / EXPERIMENT)
    console.print(f"[green]report[/] {run_dir.name}: " + ", ".join(str(p) for p in paths))
