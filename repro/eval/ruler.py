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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
import typer

from repro import results
from repro.data.ruler import FILLS, TASKS, Generator, Sample, Sources, resolve_tasks
from repro.errors import UserError
from repro.eval.models import model_label
from repro.registry import Experiment, register
from repro.track import console, progress

EXPERIMENT = "ruler"
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
    model: str = ""  # a repro checkpoint directory, hf:NAME_OR_DIR or gguf:FILE
    template: str = "base"  # base | chat: the model template around each prompt (upstream's model_template_type)
    lengths: list[int] = field(default_factory=lambda: [4096])
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    samples: int = 8  # per task and length (RULER's paper: 500); sized for ~30 min at 4k on 2 cores
    fill: str = "upstream"  # upstream: samples as NVIDIA/RULER builds them; exact: ours, each filled to its length
    device: str = "cpu"
    data_dir: str | None = None  # holding paul_graham_essays/, squad_v2/, hotpotqa/
    essays: str | None = None
    squad: str | None = None
    hotpotqa: str | None = None

    def sources(self) -> Sources:
        data_dir = Path(self.data_dir) if self.data_dir else None
        paths = {
            k: Path(v) for k, v in (("essays", self.essays), ("squad", self.squad), ("hotpotqa", self.hotpotqa)) if v
        }
        return Sources(data_dir, paths)


def _record(s: Sample, prediction: str, metric: str, seconds: float) -> dict[str, Any]:
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
        "prompt_head": s.prompt[:300],
        "prompt_tail": s.prompt[-400:],
    }


def evaluate(model: Any, generator: Generator, cfg: RulerConfig, ctx: Any) -> list[dict[str, Any]]:
    """Generate, predict and score every (length, task); returns the rows. Predictions are appended
    to predictions.jsonl as they come, and a restarted run reuses them (same seed, same samples)."""
    label = f"{model_label(cfg.model)} [{cfg.template}]"
    preds_path = ctx.run_dir / "predictions.jsonl"
    done: dict[tuple, dict[str, Any]] = {}
    if preds_path.exists():
        for line in preds_path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[(r["task"], r["length"], r["index"])] = r

    def row(split: str, metric: str, value: float, length: int) -> dict[str, Any]:
        return ctx.row(model=label, split=split, metric=metric, value=value, step=0, slice_key="length",
                       slice_value=length)  # fmt: skip

    rows: list[dict[str, Any]] = []
    total = len(cfg.lengths) * len(cfg.tasks) * cfg.samples
    with progress(total, f"ruler {label}") as bar, preds_path.open("a") as f:
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
                values = [match(spec.metric, r["prediction"], r["outputs"]) for r in recs]
                per_task[task] = score(spec.metric, [r["prediction"] for r in recs], [r["outputs"] for r in recs])
                lo, hi = results.interval95(values)
                rows += [
                    row(task, "score", per_task[task], length),
                    row(task, "ci_low", 100 * lo, length),
                    row(task, "ci_high", 100 * hi, length),
                    row(task, "nulls", sum(not postprocess(r["prediction"]) for r in recs), length),
                    row(task, "samples", len(recs), length),  # distinct items (QA: distinct questions)
                    row(task, "requested", cfg.samples, length),
                    row(task, "prompt_tokens", float(np.mean([r["n_tokens"] for r in recs])), length),
                    row(task, "gen_s_per_sample", gen_s / len(samples), length),
                ]
                if fresh:
                    rows.append(row(task, "eval_s_per_sample", eval_s / fresh, length))
            if per_task:  # the mean says how many of RULER's 13 tasks it covers
                rows.append(row("mean", "score", float(np.mean(list(per_task.values()))), length))
                rows.append(row("mean", "tasks", len(per_task), length))
            if "qa_1" in per_task and "qa_2" in per_task:
                rows.append(row("qa_mean", "score", (per_task["qa_1"] + per_task["qa_2"]) / 2, length))
    return rows


def load(spec: str, device: str = "cpu") -> Any:
    from repro.eval.models import get_model

    if spec.startswith(("hf:", "gguf:")):
        try:  # 8k-token prompts are what we want; transformers' "longer than max length" notes are noise
            import transformers

            transformers.logging.set_verbosity_error()
        except ImportError:
            pass
    return get_model(spec, device)


def _loaded_specs() -> set[tuple[str, str]]:
    from repro.eval.models import LOADED

    return set(LOADED)


@register
class Ruler(Experiment):
    """RULER as a registered evaluation: `repro eval ruler` (or `repro run ruler --set model=...`)."""

    name = "ruler"
    paper_ref = "MM v2 Table 4 (RULER QA); RULER (Hsieh et al. 2024)"
    claim = "MM v2 keeps more of its RULER QA score than a same-size transformer as the context grows"
    preset_costs = {
        "smoke": "seconds (1 sample of niah_single_1 at 1k)",
        "cpu": "~30 min on 2 idle cores for a 135M model: 13 tasks x 8 samples at 4k (estimated from loaded runs)",
        "paper": "RULER's 500 samples per task, 4k-128k (GPU)",
    }

    def presets(self) -> dict[str, RulerConfig]:
        return {
            "smoke": RulerConfig(lengths=[1024], tasks=["niah_single_1"], samples=1),
            "cpu": RulerConfig(),
            "paper": RulerConfig(lengths=[4096, 8192, 16384, 32768, 65536, 131072], samples=500, device="auto"),
        }

    def variant(self, cfg: RulerConfig, overrides: list[str] | None = None) -> str:
        from repro.eval.models import run_variant

        tasks = "all" if cfg.tasks == list(TASKS) else "+".join(cfg.tasks)
        parts = [cfg.template, "+".join(map(length_label, cfg.lengths)), tasks, f"n={cfg.samples}"]
        # The fill is named even at its default, so runs from before upstream's fill are never resumed into.
        return run_variant(cfg.model, [*parts, f"fill={cfg.fill}"])

    def check(self, cfg: RulerConfig) -> None:
        """Everything that can fail without the model's weights fails here, before any writing."""
        from repro.eval.models import check_template, peek_max_context

        if not cfg.model:
            raise UserError("RULER needs a model: --model CHECKPOINT_DIR, hf:NAME or gguf:FILE.")
        if (cfg.model, cfg.device) not in _loaded_specs():
            check_template(cfg.model, cfg.template)
        if cfg.samples < 1:
            raise UserError(f"--samples {cfg.samples}: give at least 1.")
        if cfg.fill not in FILLS:
            raise UserError(f"fill={cfg.fill!r}: choose one of {', '.join(FILLS)}.")
        if not cfg.lengths or min(cfg.lengths) < 1:
            raise UserError("--ctx needs positive lengths such as 4k,8k.")
        resolve_tasks(cfg.tasks)
        if cfg.data_dir is not None and not Path(cfg.data_dir).is_dir():
            raise UserError(f"--data-dir {cfg.data_dir} is not a directory.")
        limit = peek_max_context(cfg.model)  # read from the config: no minutes-long weight load first
        if limit is not None and max(cfg.lengths) > limit:
            raise UserError(
                f"--ctx {length_label(max(cfg.lengths))} exceeds {model_label(cfg.model)}'s {limit}-token context; "
                f"ask for {limit} tokens or fewer."
            )
        sources = cfg.sources()
        for t in cfg.tasks:  # missing data fails here, before anything is written
            if TASKS[t].params.get("haystack") == "essay":
                sources.essay_words()
            if TASKS[t].family == "qa":
                sources.qa(TASKS[t].params["dataset"])

    def run(self, cfg: RulerConfig, ctx: Any) -> list[dict[str, Any]]:
        model = load(cfg.model, str(ctx.device))
        if model.max_context is not None and max(cfg.lengths) > model.max_context:
            raise UserError(
                f"--ctx {length_label(max(cfg.lengths))} exceeds {model_label(cfg.model)}'s "
                f"{model.max_context}-token context; ask for {model.max_context} tokens or fewer."
            )
        generator = Generator(
            model.tokenizer, cfg.sources(), seed=ctx.seed, wrap=model.wrap(cfg.template), fill=cfg.fill
        )
        env_path = ctx.run_dir / "env.json"
        env = json.loads(env_path.read_text()) if env_path.exists() else {}
        env |= {"model_name": model.name, "max_context": model.max_context, "torch_threads": torch.get_num_threads()}
        env_path.write_text(json.dumps(env, indent=2))
        return evaluate(model, generator, cfg, ctx)

    def report(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        return report(df, out_dir)


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


def _task_label(split: str, n_tasks: int) -> str:
    """The mean is RULER's average only when it covers all 13 tasks; otherwise it says what it covers."""
    if n_tasks == len(TASKS):
        return f"RULER average ({n_tasks}/13 tasks)"
    return f"mean of {n_tasks}/13 tasks (not RULER's average)"


def report(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """reports/ruler/: per model and template, tasks x lengths with n and 95% intervals, beside
    Table 4's QA averages; and the figure."""
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
                    if asked.get(key, 0) > n_of[key]:  # QA: the local copy holds fewer distinct questions
                        cell += f" (of {asked[key]} asked: every distinct question)" if split.startswith("qa") else ""
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
    t4_lengths = sorted({n for row in PAPER_TABLE4.values() for n in row} | set(lengths))
    paper_rows = [
        {"source": f"paper Table 4: {name}", **{length_label(n): row.get(n, "×") for n in t4_lengths}, "verdict": ""}
        for name, row in PAPER_TABLE4.items()
    ]
    qa = sc[sc.split == "qa_mean"]
    for who in sorted(qa.who.unique()):
        ours = qa[qa.who == who].set_index("length")["value"].to_dict()
        cells = {length_label(n): round(ours[n], 1) if n in ours else "" for n in t4_lengths}
        paper_rows.append({"source": f"ours: {who}", **cells, "verdict": _verdict(ours)})
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
    paths.append(plot(sc.rename(columns={"who": "model"}), out_dir / "fig_score_vs_length.png"))
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
    template: str = typer.Option("base", "--template", help="base | chat (the model's own chat template)."),
    ctx: Optional[str] = typer.Option(  # noqa: UP045
        None, "--ctx", help="Context lengths in tokens: 4k, 32k, 32768, or a comma list (default: the preset's, 4k)."
    ),
    tasks: Optional[str] = typer.Option(  # noqa: UP045
        None, "--tasks", help="all | niah | qa | synthetic | task names, comma-separated (default: the preset's)."
    ),
    samples: Optional[int] = typer.Option(  # noqa: UP045
        None, "--samples", help="Samples per task and length (default: the preset's; RULER's paper: 500)."
    ),
    preset: str = typer.Option("cpu", "--preset", help="smoke | cpu (~30 min on 2 cores) | paper."),
    seed: int = typer.Option(42, "--seed", help="Seed of the generated samples (RULER's: 42)."),
    out: Path = typer.Option(Path("runs"), "--out", help="Root of the run directories."),
    reports: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--reports", help="The table and figure go to REPORTS/ruler/ (default: reports/, or OUT/reports/)."
    ),
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

    Samples are generated offline and filled to each length with the model's own tokenizer (template
    included); scores follow RULER (string match, `part` for QA). Writes OUT/ruler/PRESET/VARIANT/sSEED/
    and REPORTS/ruler/table.md|csv and fig_score_vs_length.png (every RULER run of that preset under OUT).
    """
    from repro import registry, runtime

    overrides = [f"model={model}", f"template={template}", f"device={device}"]
    if ctx is not None:
        overrides.append(f"lengths={','.join(map(str, parse_ctx(ctx)))}")
    if tasks is not None:
        overrides.append(f"tasks={','.join(resolve_tasks(tasks))}")
    if samples is not None:
        overrides.append(f"samples={samples}")
    for key, value in (("data_dir", data_dir), ("essays", essays), ("squad", squad), ("hotpotqa", hotpotqa)):
        if value is not None:
            overrides.append(f"{key}={value.resolve()}")
    exp = registry.get(EXPERIMENT)
    run_dir = runtime.launch(exp, preset=preset, overrides=overrides, seed=seed, out=out, force=force)
    paths = results.eval_report(exp, out, reports, preset)
    console.print(f"[green]report[/] {run_dir.name}: " + ", ".join(str(p) for p in paths))
