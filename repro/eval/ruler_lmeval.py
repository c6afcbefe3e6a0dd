"""lm-eval's own RULER tasks on an hf:/gguf: model, offline: the second implementation beside ours.

`repro eval ruler --set implementation=lm-eval` runs lm-evaluation-harness's `ruler` tasks
(`lm_eval/tasks/ruler`, lm-eval 0.4.13) through our lm-eval model class on the same model, and writes the
same rows as ours (score, interval, n distinct samples) under the model label `... lm-eval`, so the
RULER report puts the two implementations side by side. Offline: the tokenizer that sizes lm-eval's
samples is the model's own, saved to a folder (`AutoTokenizer.save_pretrained`, from the GGUF for
gguf: models); SQuAD and HotpotQA come from the local copies (lm-eval downloads them from their sites).

How lm-eval's samples differ from upstream's (read from its code; what a score gap may come from):
  - answer prefix: lm-eval ends the prompt with `gen_prefix` "Answer:" after a space (`target_delimiter`),
    under `--template chat` inside the assistant's turn; upstream appends " Answer:" to the wrapped text
    (the same place for a base model);
  - lengths: lm-eval counts the task text alone (no model template, no answer prefix; QA adds the gold
    answers), so a chat-wrapped prompt runs past the target by the template's tokens;
  - QA fill: a linear search from 10 documents in steps of 10 on sample 0, then per sample a drop in
    steps of 10 down to the gold documents (upstream: binary search, same drop, spins at the floor);
    the documents are drawn from Python's global `random` as lm-eval seeds it (0), upstream's with 42;
    the fixed-seed shuffle (42) is the same, so the gold slot again depends only on the document count;
  - NIAH: haystack "repeat" (= upstream's noise), a linear search for its size; needle draws as lm-eval
    seeds them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repro.errors import UserError

TASKS = {"niah_single_1": "niah_single_1", "qa_1": "ruler_qa_squad", "qa_2": "ruler_qa_hotpot"}


def tokenizer_folder(spec: str, cache: Path) -> Path:
    """A folder lm-eval's AutoTokenizer can load: hf:DIR itself, or the GGUF's tokenizer saved once."""
    kind, _, target = spec.partition(":")
    if kind == "hf" and Path(target).is_dir():
        return Path(target)
    if kind != "gguf":
        raise UserError(f"lm-eval's RULER sizes samples with a Hugging Face tokenizer; {spec} has none here "
                        "(give an hf:DIR or gguf:FILE model).")  # fmt: skip
    folder = cache / f"tokenizer-{Path(target).stem}"
    if not (folder / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(Path(target).parent), gguf_file=Path(target).name).save_pretrained(folder)
    return folder


def _local_qa(sources: Any) -> None:
    """lm-eval reads SQuAD and HotpotQA from their sites: hand it the local copies instead."""
    from lm_eval.tasks.ruler import qa_utils

    def local(name: str) -> Path:
        path = sources.qa_path(name)
        if path is None:
            raise UserError(f"lm-eval's RULER runs offline here only from a local {name} copy; pass --data-dir.")
        return path

    def read(url: str) -> Any:
        if "squad" in url.lower():
            return json.loads(local("squad").read_text())
        rows = json.loads(local("hotpotqa").read_text())
        for d in rows:  # the Hugging Face layout back into the original one lm-eval reads
            if isinstance(d["context"], dict):
                d["context"] = [[t, s] for t, s in zip(d["context"]["title"], d["context"]["sentences"], strict=True)]
        return rows

    qa_utils.download_json = read
    qa_utils.read_squad.cache_clear()
    qa_utils.read_hotpotqa.cache_clear()
    # lm-eval's YAML loader re-executes a task's utils module unless it carries the file's mtime: mark
    # this (patched) one current so the task uses it.
    qa_utils.__mtime__ = Path(qa_utils.__file__).stat().st_mtime_ns


def evaluate(
    em: Any, spec: str, tasks: list[str], length: int, limit: int, template: str, sources: Any, cache: Path,
    row: Callable[..., dict[str, Any]],
) -> list[dict[str, Any]]:  # fmt: skip
    """Rows like ours (per task: score, ci_low, ci_high, nulls, samples, requested, eval_s_per_sample)
    from lm-eval's per-sample scores at one length."""
    import lm_eval

    from repro import stats
    from repro.eval.lm_eval_model import lm_class

    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"lm-eval's RULER is compared on {', '.join(TASKS)}; not on {', '.join(unknown)}.")
    _local_qa(sources)
    folder = tokenizer_folder(spec, cache)
    t0 = time.perf_counter()
    res = lm_eval.simple_evaluate(
        model=lm_class()(model=em),
        tasks=[TASKS[t] for t in tasks],
        limit=limit,
        metadata={"tokenizer": str(folder), "max_seq_lengths": [length]},
        apply_chat_template=template == "chat",
        log_samples=True,
        verbosity="ERROR",
    )
    seconds = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    total = sum(len(res["samples"][TASKS[t]]) for t in tasks)
    for task in tasks:
        samples = res["samples"][TASKS[task]]
        values = [float(s[str(length)]) for s in samples]
        lo, hi = stats.interval95(values)
        empty = sum(not str(s["filtered_resps"][0]).strip() for s in samples)
        rows += [
            row(task, "score", round(100 * sum(values) / len(values), 2), length),
            row(task, "ci_low", 100 * lo, length),
            row(task, "ci_high", 100 * hi, length),
            row(task, "nulls", empty, length),
            row(task, "samples", len({s["doc"]["index"] for s in samples}), length),
            row(task, "requested", limit, length),
            row(task, "prompt_tokens", sum(s["doc"]["length"] for s in samples) / len(samples), length),
            row(task, "eval_s_per_sample", seconds / total, length),
        ]
    return rows
