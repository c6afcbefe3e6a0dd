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
strings. Samples: `repro.data.ruler`; the report: `repro.evaluations._ruler_report`. Run directory:
`OUT/ruler/<preset>/<variant>/s<seed>/`. `--seed S` draws upstream's samples of seed 42 + S (RULER's
own scripts use 42), so the default seed 0 reproduces upstream's draws.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from repro import stats
from repro.data.ruler import FILLS, TASKS, Generator, Sample, Sources, resolve_tasks
from repro.errors import UserError
from repro.eval.models import model_label
from repro.evaluations._ruler_report import length_label
from repro.files import resolved_path
from repro.registry import Evaluation, Option, register
from repro.track import console, progress

UPSTREAM_SEED = 42  # NVIDIA/RULER's scripts draw with seed 42: our --seed S draws with 42 + S


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


@dataclass
class RulerConfig:
    model: str = ""  # a repro checkpoint directory, hf:NAME_OR_DIR or gguf:FILE
    template: str = "base"  # base | chat: the model template around each prompt (upstream's model_template_type)
    lengths: list[int] = field(default_factory=lambda: [4096])
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    samples: int = 20  # per task and length (RULER's paper: 500): 20 distinct items, the least a cell can be read at
    fill: str = "upstream"  # upstream: samples as NVIDIA/RULER builds them; exact: ours, each filled to its length
    implementation: str = "repro"  # repro: our generator; lm-eval: lm-eval's own ruler tasks (the comparison)
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


def _same_sample(rec: dict[str, Any], s: Sample) -> bool:
    """A stored prediction is reused only for the very prompt it answered."""
    return (
        rec.get("n_tokens") == s.n_tokens
        and rec.get("outputs") == s.outputs
        and rec.get("prompt_head") == s.prompt[:300]
        and rec.get("prompt_tail") == s.prompt[-400:]
    )


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
                    if rec is not None and not _same_sample(rec, s):
                        rec = None  # a prediction for another prompt (other code or data): generated again
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
                lo, hi = stats.interval95(values)
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


def _lmeval_rows(model: Any, cfg: RulerConfig, ctx: Any) -> list[dict[str, Any]]:
    """lm-eval's own ruler tasks on the same model (repro.eval.ruler_lmeval), as rows like ours."""
    from repro.eval.ruler_lmeval import evaluate as lmeval_evaluate

    label = f"{model_label(cfg.model)} [{cfg.template}] lm-eval"

    def row(split: str, metric: str, value: float, length: int, who: str = label) -> dict[str, Any]:
        return ctx.row(model=who, split=split, metric=metric, value=value, step=0, slice_key="length",
                       slice_value=length)  # fmt: skip

    cache = Path(".cache") / "ruler-lmeval"
    rows, records = [], []
    for length in cfg.lengths:
        r, recs = lmeval_evaluate(model, cfg.model, cfg.tasks, length, cfg.samples, cfg.template, cfg.sources(),
                                  cache, row)  # fmt: skip
        rows, records = rows + r, records + recs
    with (ctx.run_dir / "predictions.jsonl").open("w") as f:
        f.writelines(json.dumps(rec) + "\n" for rec in records)
    return rows + _rescored_rows(records, f"{label}, RULER's metric", row)


def _rescored_rows(records: list[dict[str, Any]], who: str, row: Any) -> list[dict[str, Any]]:
    """lm-eval's answers scored by RULER's own metric: lm-eval's QA metric credits the fraction of the gold
    answers found (`string_match_part`, lm-eval 0.4.x), RULER's credits any one (scripts/eval/synthetic/
    constants.py). The same answers scored both ways separate the metric from the samples."""
    rows = []
    for (task, length), group in pd.DataFrame(records).groupby(["task", "length"]):
        values = [match(TASKS[task].metric, p, o) for p, o in zip(group.prediction, group.outputs, strict=True)]
        lo, hi = stats.interval95(values)
        rows += [
            row(task, "score", round(100 * float(np.mean(values)), 2), int(length), who),
            row(task, "ci_low", 100 * lo, int(length), who),
            row(task, "ci_high", 100 * hi, int(length), who),
            row(task, "samples", group["index"].nunique(), int(length), who),
        ]
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
class Ruler(Evaluation):
    """RULER as a registered evaluation: `repro eval ruler --model M`."""

    name = "ruler"
    paper_ref = "MM v2 Table 4 (RULER QA); RULER (Hsieh et al. 2024)"
    claim = "MM v2 keeps more of its RULER QA score than a same-size transformer as the context grows"
    preset_costs = {
        "smoke": "seconds (1 sample of niah_single_1 at 1k)",
        "cpu": "13 tasks x 20 samples at 4k = 260 generations; SmolLM2-135M: ~20 s a sample on one thread "
        "(`repro bench eval`, 4 tasks' samples, load 2) = ~1.5 h; 2 threads shorten it",
        "paper": "RULER's 500 samples per task, 4k-128k (GPU)",
    }
    targets = {"table4": PAPER_TABLE4}
    options = (
        Option("--ctx", "lengths", "Context lengths in tokens: 4k, 32k, 32768, or a comma list (default: the "
               "preset's, 4k).", parse=parse_ctx),
        Option("--tasks", "tasks", "all | niah | qa | synthetic | task names, comma-separated (default: the "
               "preset's).", parse=resolve_tasks),
        Option("--samples", "samples", "Samples per task and length (default: the preset's; RULER's paper: 500)."),
        Option("--template", "template", "base | chat (the model's own chat template)."),
        Option("--essays", "essays", "Essay .txt file or folder (haystack).", parse=resolved_path),
        Option("--squad", "squad", "SQuAD v2 dev JSON (qa_1).", parse=resolved_path),
        Option("--hotpotqa", "hotpotqa", "HotpotQA dev JSON (qa_2).", parse=resolved_path),
    )  # fmt: skip

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
        impl = [] if cfg.implementation == "repro" else [f"impl={cfg.implementation}"]
        return run_variant(cfg.model, [*parts, f"fill={cfg.fill}", *impl])

    def check(self, cfg: RulerConfig) -> None:
        """Everything that can fail without the model's weights fails here, before any writing."""
        from repro.eval.models import check_template, context_memory, peek_max_context
        from repro.runtime import check_memory, pick_device

        if not cfg.model:
            raise UserError("RULER needs a model: --model CHECKPOINT_DIR, hf:NAME or gguf:FILE.")
        if (cfg.model, cfg.device) not in _loaded_specs():
            check_template(cfg.model, cfg.template)
        if cfg.samples < 1:
            raise UserError(f"--samples {cfg.samples}: give at least 1.")
        if cfg.fill not in FILLS:
            raise UserError(f"fill={cfg.fill!r}: choose one of {', '.join(FILLS)}.")
        if cfg.implementation not in ("repro", "lm-eval"):
            raise UserError(f"implementation={cfg.implementation!r}: choose repro or lm-eval.")
        if cfg.implementation == "lm-eval":
            from repro.eval.ruler_lmeval import TASKS as LMEVAL_TASKS

            if set(cfg.tasks) - set(LMEVAL_TASKS) or not cfg.model.startswith(("hf:", "gguf:")):
                raise UserError(f"implementation=lm-eval runs {', '.join(LMEVAL_TASKS)} (--tasks) on hf:/gguf: models.")
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
        longest = length_label(max(cfg.lengths))  # a model without a context limit: memory decides
        need = context_memory(cfg.model, max(cfg.lengths))
        check_memory(need, pick_device(cfg.device), f"reading a {longest}-token context", "ask for a shorter --ctx")
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
        if cfg.implementation == "lm-eval":
            return _lmeval_rows(model, cfg, ctx)
        seed = UPSTREAM_SEED + ctx.seed  # the default seed 0 draws upstream's samples
        generator = Generator(model.tokenizer, cfg.sources(), seed=seed, wrap=model.wrap(cfg.template), fill=cfg.fill)
        env_path = ctx.run_dir / "env.json"
        env = json.loads(env_path.read_text()) if env_path.exists() else {}
        env |= {"model_name": model.name, "max_context": model.max_context, "torch_threads": torch.get_num_threads()}
        env_path.write_text(json.dumps(env, indent=2))
        return evaluate(model, generator, cfg, ctx)

    def report(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        from repro.evaluations._ruler_report import write_report

        return write_report(df, out_dir, self.targets)
