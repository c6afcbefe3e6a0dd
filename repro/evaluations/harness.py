"""Persistent-knowledge evaluation through lm-evaluation-harness (MMv2 Table 1 and Table 2).

Memory Mosaics v2 compares models on 19 common benchmarks (Table 1: large transformer 52.2, MMv2
52.2 on average) and shows that removing long-term memory after training barely changes 13 of them
(Table 2: 56.8 -> 56.6, transformer 57.1) while the other 6 drop (42.1 -> 34.9, transformer 41.4).

`repro eval harness --model M` runs lm-eval's own tasks on any model through `ReproLM`
(`repro.eval.lm_eval_model`), tasks loaded by `repro.eval.lmeval_tasks` (offline from `--data-dir`
copies where they exist): results go to a run directory and `reports/harness/` puts them beside the
paper's numbers (`targets`). lm-eval is an optional extra (`eval`); nothing here imports it at import time.
Known deviations: the thesis does not say which lm-eval variant, shot count or metric it used per
task (acc vs acc_norm, which squad/math/bbh); `PAPER19` pins our choice. lm-eval has no
race-middle task; ours is lm-eval's `race` config read from the dataset's "middle" subset.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from repro.errors import UserError
from repro.eval.lm_eval_model import drop_long_term_memory, lm_class, require_lm_eval
from repro.eval.lmeval_local import check_fewshot, plan_samples
from repro.eval.lmeval_tasks import LoadedTasks, hub_reachable, load_tasks
from repro.eval.models import check_spec, get_model, model_label
from repro.files import resolved_path
from repro.registry import Evaluation, Option, register
from repro.runtime import pick_device


@dataclass(frozen=True)
class Benchmark:
    """One of the paper's 19 tasks: the lm-eval task we run, the metric[,filter] we read, the paper's
    large-model scores (transformer, MMv2; Tables 2/9) and whether it is in Table 2's group of 13."""

    name: str
    task: str
    metric: str
    transformer: float
    mmv2: float
    in_13: bool


PAPER19 = [
    Benchmark("obqa", "openbookqa", "acc_norm", 45.8, 45.4, True),
    Benchmark("arc-easy", "arc_easy", "acc_norm", 77.3, 78.0, True),
    Benchmark("winogrande", "winogrande", "acc", 72.3, 71.2, True),
    Benchmark("arc-challenge", "arc_challenge", "acc_norm", 52.6, 51.8, True),
    Benchmark("piqa", "piqa", "acc_norm", 80.8, 80.4, True),
    Benchmark("boolq", "boolq", "acc", 72.6, 73.1, True),
    Benchmark("hellaswag", "hellaswag", "acc_norm", 79.2, 78.6, True),
    Benchmark("nq", "nq_open", "exact_match,remove_whitespace", 31.9, 30.9, True),
    Benchmark("siqa", "social_iqa", "acc", 49.3, 48.6, True),
    Benchmark("tqa", "triviaqa", "exact_match,remove_whitespace", 61.5, 62.0, True),
    Benchmark("gsm8k", "gsm8k", "exact_match,strict-match", 32.4, 27.4, True),
    Benchmark("mmlu-alt", "mmlu", "acc", 49.0, 48.2, True),
    Benchmark("humaneval+", "humaneval_plus", "pass@1,create_test", 38.3, 43.0, True),
    Benchmark("squad", "squadv2", "f1", 76.3, 78.2, False),
    Benchmark("bbh", "bbh", "exact_match,get-answer", 45.6, 47.8, False),
    Benchmark("math", "minerva_math", "exact_match", 8.7, 8.8, False),
    Benchmark("mbpp", "mbpp", "pass_at_1", 9.8, 9.6, False),
    Benchmark("race-middle", "race_middle", "acc", 62.6, 61.6, False),
    Benchmark("race-high", "race", "acc", 45.6, 46.5, False),
]

TABLE1_AVG = {"transformer": 52.2, "mmv2": 52.2}  # large models, 19 tasks (small: 37.8 vs 38.0)

TABLE2 = {  # averages: transformer, MMv2, MMv2 with long-term memory removed after training
    "13 tasks": (57.1, 56.8, 56.6),
    "other 6": (41.4, 42.1, 34.9),
}


def expand_tasks(spec: str) -> list[str]:
    """`paper19` and/or comma-separated lm-eval task names, in order, without repeats."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        for name in [b.task for b in PAPER19] if part == "paper19" else [part] if part else []:
            if name not in names:
                names.append(name)
    if not names:
        raise UserError("--tasks is empty; give paper19 or lm-eval task names separated by commas.")
    return names


@dataclass
class HarnessConfig:
    model: str = ""  # a repro checkpoint directory, hf:NAME or gguf:FILE
    tasks: list[str] = field(default_factory=lambda: ["repro_local"])
    limit: int | None = None  # documents per benchmark, a seeded evenly spread subset (None: all)
    # documents per generation benchmark (nq_open, gsm8k, bbh: ~1-20 s a document on a CPU, against
    # ~0.1-1 s to score a multiple-choice one); None: as `limit`. --limit caps both.
    limit_generate: int | None = None
    sample_seed: int = 0  # fixes the --limit subset
    num_fewshot: int | None = None
    no_long_term: bool = False
    template: str = "base"  # base | chat (lm-eval's apply_chat_template with the model's own template)
    batch_size: int = 8
    device: str = "auto"
    include_path: str | None = None
    data_dir: str | None = None  # DIR/lmeval/<task>/ copies of lm-eval's data (LOCAL_DATA), else the hub
    allow_code_execution: bool = False  # humaneval/mbpp run generated code (lm-eval's confirm_run_unsafe_code)


def result_rows(
    res: dict[str, Any],
    ctx: Any,
    label: str,
    hub: bool,
    docs: dict[str, int] | None = None,
    skipped: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Tidy rows from lm-eval's result dict: every "metric,filter" score and its stderr, the number of
    documents scored (a group: summed over its leaf tasks) and in the full split (`docs_total`), for
    multiple-choice tasks the chance level (mean of 1 / #choices over the scored documents), and one
    `skipped` row (the reason in slice_value) per benchmark that could not run."""

    def row(split: str, metric: str, value: float, **extra: Any) -> dict[str, Any]:
        return ctx.row(model=label, split=split, metric=metric, value=value, step=0, **extra)

    def leaves(name: str) -> list[str]:
        kids = res.get("group_subtasks", {}).get(name)
        return [leaf for k in kids for leaf in leaves(k)] if kids else [name]

    rows = [row("_env", "hub_reachable", float(hub))]
    rows += [row(n, "skipped", 1.0, slice_key="reason", slice_value=why) for n, why in (skipped or {}).items()]
    rows += [row(n, "docs_total", float(k)) for n, k in (docs or {}).items()]
    inner = {t for kids in res.get("group_subtasks", {}).values() for t in kids}  # reported by their group
    scores = {k: v for k, v in {**res.get("groups", {}), **res["results"]}.items() if k not in inner}
    for task, metrics in scores.items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if not filt or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            rows.append(row(task, metric, value, slice_key="filter", slice_value=filt))
        counts = [res.get("n-samples", {}).get(t, {}).get("effective") for t in leaves(task)]
        if counts and None not in counts:
            rows.append(row(task, "n", sum(counts)))
        samples = [s for t in leaves(task) for s in res.get("samples", {}).get(t, [])]
        rows += doc_rows(task, leaves, res, row)
        mc = all(res["configs"].get(t, {}).get("output_type") == "multiple_choice" for t in leaves(task))
        if samples and mc:
            rows.append(row(task, "chance", sum(1 / len(s["arguments"]) for s in samples) / len(samples)))
    return rows


def doc_rows(task: str, leaves: Any, res: dict[str, Any], row: Any) -> list[dict[str, Any]]:
    """Per-document scores of a paper benchmark's table metric (`doc:<metric>` rows, slice_value
    `<leaf>#<doc_id>`), so two models scored on the same documents can be compared pairwise."""
    bench = next((b for b in PAPER19 if b.task == task), None)
    if bench is None:
        return []
    metric, _, filt = bench.metric.partition(",")
    out = []
    for leaf in leaves(task):
        for s in res.get("samples", {}).get(leaf, []):
            value = s.get(metric)
            if (filt and s.get("filter") != filt) or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            out.append(row(task, f"doc:{metric}", value, slice_key="doc", slice_value=f"{leaf}#{s['doc_id']}"))
    return out


@register
class Harness(Evaluation):
    """lm-evaluation-harness as a registered evaluation (`repro eval harness`)."""

    name = "harness"
    paper_ref = "MM v2 Tables 1, 2 and 9 (19 persistent-knowledge benchmarks)"
    claim = "MMv2 matches a transformer on persistent knowledge; removing long-term memory costs 6 of the 19"
    preset_costs = {
        "smoke": "seconds (the shipped offline tasks, 4 documents each)",
        "cpu": "minutes (the shipped offline tasks); --tasks paper19 --data-dir DIR: <=400 documents per "
        "multiple-choice benchmark, <=100 per generation one: SmolLM2-135M ~25 CPU-min for the 9 multiple-choice "
        "tasks, ~110 for nq_open/gsm8k/bbh (bbh most of it), ~15 for humaneval/mbpp (~75 min on 2 cores)",
        "paper": "paper19 on full splits (GPU; hub access or --data-dir)",
    }
    targets = {"paper19": PAPER19, "table1_avg": TABLE1_AVG, "table2": TABLE2}
    options = (
        Option("--tasks", "tasks", "paper19 (the paper's 19 benchmarks) and/or lm-eval task names, comma-separated "
               "(default: the preset's; repro_local runs the shipped offline tasks).", parse=expand_tasks),
        Option("--limit", "limit", "At most N documents per benchmark: a seeded subset spread evenly over the split."),
        Option("--limit-generate", "limit_generate", "At most N documents per generation benchmark (nq_open, gsm8k, "
               "bbh...; cpu preset 100), never more than --limit."),
        Option("--num-fewshot", "num_fewshot", "Few-shot examples per prompt (default: each task's own)."),
        Option("--no-long-term", "no_long_term", "Remove long-term memory after training (MMv2 models), as in "
               "Table 2.", is_flag=True),
        Option("--template", "template", "base | chat (the model's own chat template)."),
        Option("--include-path", "include_path", "Folder of extra lm-eval task YAMLs (local JSONL tasks run "
               "offline).", parse=resolved_path),
        Option("--allow-code-execution", "allow_code_execution", "Let humaneval/mbpp run the generated code "
               "(sandboxed; see the README).", is_flag=True),
        Option("--batch-size", "batch_size", "Sequences per generation batch."),
    )  # fmt: skip

    def presets(self) -> dict[str, HarnessConfig]:
        return {
            "smoke": HarnessConfig(limit=4),
            "cpu": HarnessConfig(limit=400, limit_generate=100),
            "paper": HarnessConfig(tasks=expand_tasks("paper19")),
        }

    def variant(self, cfg: HarnessConfig, overrides: list[str] | None = None) -> str:
        from repro.eval.models import run_variant

        # no-ltm first: the report tells the two apart by it, and a long task list is cut short
        parts = ["no-ltm"] if cfg.no_long_term else []
        parts += ["+".join(cfg.tasks) if cfg.tasks != expand_tasks("paper19") else "paper19", cfg.template]
        parts += [f"limit={cfg.limit}"] if cfg.limit is not None else []
        gen = self.generate_limit(cfg)
        parts += [f"gen={gen}"] if gen != cfg.limit else []
        parts += ["local-data"] if cfg.data_dir else []
        parts += [f"k={cfg.num_fewshot}"] if cfg.num_fewshot is not None else []
        return run_variant(cfg.model, parts)

    def resolve(self, cfg: HarnessConfig, seed: int) -> HarnessConfig:
        """The device as the run records it (auto resolved), and the seed of the --limit subsets."""
        return dataclasses.replace(cfg, device=str(pick_device(cfg.device)), sample_seed=seed)

    @staticmethod
    def generate_limit(cfg: HarnessConfig) -> int | None:
        """Documents per generation benchmark: limit_generate, never more than --limit."""
        caps = [v for v in (cfg.limit, cfg.limit_generate) if v is not None]
        return min(caps) if caps else None

    def check(self, cfg: HarnessConfig) -> None:
        from repro.eval.models import LOADED, check_template

        require_lm_eval()
        if not cfg.model:
            raise UserError("harness needs a model: --model CHECKPOINT_DIR, hf:NAME or gguf:FILE.")
        if cfg.num_fewshot is not None and cfg.num_fewshot < 0:
            raise UserError(f"--num-fewshot {cfg.num_fewshot}: give a number of examples, 0 or more.")
        for key, value in (("--limit", cfg.limit), ("--limit-generate", cfg.limit_generate)):
            if value is not None and value < 1:
                raise UserError(f"{key} must be a positive number of documents.")
        if cfg.include_path is not None and not Path(cfg.include_path).is_dir():
            raise UserError(f"--include-path {cfg.include_path} is not a directory.")
        if (cfg.model, cfg.device) not in LOADED:
            check_spec(cfg.model)
            check_template(cfg.model, cfg.template)
        if cfg.data_dir is not None and not Path(cfg.data_dir).is_dir():
            raise UserError(f"--data-dir {cfg.data_dir} is not a directory.")
        expand_tasks(",".join(cfg.tasks))
        self._tasks = self._load(cfg)  # fail fast

    @staticmethod
    def _load(cfg: HarnessConfig) -> LoadedTasks:
        if cfg.allow_code_execution:  # code_eval (evaluate's or ours) runs programs only with it
            os.environ["HF_ALLOW_CODE_EVAL"] = "1"
        loaded = load_tasks(cfg.tasks, Path(cfg.include_path) if cfg.include_path else None, cfg.data_dir)
        for spec in loaded.specs:
            if not isinstance(spec, (str, dict)):  # built on local files
                for task in loaded.tm.load([spec])["tasks"].values():
                    check_fewshot(task, cfg.num_fewshot)
        return loaded

    def run(self, cfg: HarnessConfig, ctx: Any) -> list[dict[str, Any]]:
        import lm_eval
        from lm_eval.utils import handle_non_serializable

        from repro.track import console

        loaded = getattr(self, "_tasks", None) or self._load(cfg)
        self._tasks = None  # built Task objects hold their requests: never reuse them for another run
        gen = self.generate_limit(cfg)
        limits = {n: gen if n in loaded.generative else cfg.limit for n in loaded.sizes}
        samples = plan_samples(loaded.sizes, limits, cfg.sample_seed)
        hub = hub_reachable()
        logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task notices would flood the console
        em = get_model(cfg.model, str(ctx.device))
        if cfg.no_long_term:
            drop_long_term_memory(em)
        if cfg.template == "chat":
            em.wrap("chat")  # refuses a model without a chat template, in one sentence
        for name, reason in loaded.skipped.items():
            console.print(f"[yellow]skipped[/] {name}: {reason}")
        docs = {n: sum(s.values()) for n, s in loaded.sizes.items()}
        picked = {n: sum(len(samples.get(t, range(k))) for t, k in s.items()) for n, s in loaded.sizes.items()}
        console.print(f"[bold]evaluating[/] {em.name} on " + ", ".join(f"{n} ({picked[n]}/{docs[n]})" for n in docs))
        try:
            res = lm_eval.simple_evaluate(
                model=lm_class()(model=em, batch_size=cfg.batch_size),
                tasks=loaded.specs,
                num_fewshot=cfg.num_fewshot,
                samples=samples or None,
                task_manager=loaded.tm,
                confirm_run_unsafe_code=cfg.allow_code_execution,
                bootstrap_iters=1000,
                verbosity="ERROR",
                apply_chat_template=cfg.template == "chat",
            )
        finally:
            if cfg.no_long_term:  # the loaded model is shared within the process
                em.net.drop_long_term_memory(False)
        env_path = ctx.run_dir / "env.json"
        env = json.loads(env_path.read_text()) if env_path.exists() else {}
        env |= {"hf_hub_reachable": hub, "lm_eval": _version("lm-eval"), "torch_threads": torch.get_num_threads()}
        env_path.write_text(json.dumps(env, indent=2))
        kept = {k: v for k, v in res.items() if k != "samples"}
        (ctx.run_dir / "results.json").write_text(json.dumps(kept, indent=2, default=handle_non_serializable))
        label = f"{model_label(cfg.model)} [{cfg.template}]"
        return result_rows(res, ctx, label, hub, docs, loaded.skipped)

    def report(self, df: Any, out_dir: Path) -> list[Path]:
        from repro.evaluations._harness_report import write_report

        return write_report(df, out_dir, self.targets)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
