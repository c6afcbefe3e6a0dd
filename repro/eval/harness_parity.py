"""Our lm-eval adapter against lm-eval's own Hugging Face backend, request by request.

`request_parity` builds one task's requests (lm-eval's own prompts, the first
`docs` documents) and scores them twice on the same transformers model: through `ReproLM` (our
prefix-cached scorer over `EvalModel`) and through lm-eval's `HFLM` (its batched, padded forward).
Both must give the same log-likelihood and the same "is greedy" flag for every request: a mismatch
would mean our adapter changes the scores lm-eval would publish for this model. For a generation
task (nq_open, gsm8k, bbh) the two greedy texts of every request are compared instead (HFLM with
one request per batch, so no padding enters its decoding).

    python -m repro.eval.harness_parity --model gguf:FILE --task arc_easy --docs 20 --data-dir DIR
    python -m repro.eval.harness_parity --model gguf:FILE --task gsm8k --docs 10 --data-dir DIR
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from repro.errors import UserError


def request_parity(
    model_spec: str, task: str, docs: int, data_dir: str | None = None, include_path: Path | None = None
) -> dict[str, Any]:
    """Per-request log-likelihoods (or, for a generation task, greedy texts) of `docs` documents of
    `task` from ReproLM and from lm-eval's HFLM."""
    from lm_eval.models.huggingface import HFLM

    from repro.eval.lm_eval_model import lm_class
    from repro.eval.lmeval_tasks import load_tasks
    from repro.eval.models import get_model

    em = get_model(model_spec, "cpu")
    if em.hf_module is None:
        raise UserError(f"{model_spec}: the parity check needs a transformers model (hf:NAME or gguf:FILE).")
    loaded = load_tasks([task], include_path, data_dir)
    tasks = loaded.tm.load(loaded.specs)["tasks"]
    requests, kinds = [], set()
    for name, t in tasks.items():
        if t.OUTPUT_TYPE not in ("multiple_choice", "loglikelihood", "generate_until"):
            raise UserError(f"{name} is a {t.OUTPUT_TYPE} task; the parity check handles scoring and generation.")
        kinds.add("generate_until" if t.OUTPUT_TYPE == "generate_until" else "loglikelihood")
        t.build_all_requests(limit=docs)
        requests += [inst for inst in t.instances]
    if len(kinds) != 1:
        raise UserError(f"{task} mixes generation and log-likelihood subtasks; check one subtask at a time.")
    generate = kinds == {"generate_until"}
    ours_lm = lm_class()(model=em, batch_size=1 if generate else 8)
    theirs_lm = HFLM(pretrained=em.hf_module, tokenizer=em.tokenizer.tok, batch_size=1 if generate else 8, device="cpu")
    method = "generate_until" if generate else "loglikelihood"
    t0 = time.time()
    ours = getattr(ours_lm, method)(requests)
    t1 = time.time()
    theirs = getattr(theirs_lm, method)(requests)
    t2 = time.time()
    common = {
        "model": em.name,
        "task": task,
        "documents": docs,
        "requests": len(requests),
        "seconds_ours": round(t1 - t0, 2),
        "seconds_hflm": round(t2 - t1, 2),
    }
    if generate:
        same = [a == b for a, b in zip(ours, theirs, strict=True)]
        return common | {"texts_equal": sum(same) / len(same), "ours": ours, "hflm": theirs}
    diffs = [abs(a[0] - b[0]) for a, b in zip(ours, theirs, strict=True)]
    return common | {
        "max_abs_diff": max(diffs),
        "mean_abs_diff": sum(diffs) / len(diffs),
        "greedy_agree": sum(a[1] == b[1] for a, b in zip(ours, theirs, strict=True)) / len(requests),
        "ours": [a[0] for a in ours],
        "hflm": [b[0] for b in theirs],
    }


def main(
    model: str = typer.Option(..., "--model", help="hf:NAME or gguf:FILE."),
    task: str = typer.Option("arc_easy", "--task", help="An lm-eval task (log-likelihood or generation)."),
    docs: int = typer.Option(20, "--docs", help="Documents (the task's first ones)."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Folder with lmeval/<task>/ copies."),
    out: Path = typer.Option(None, "--out", help="Write the result as JSON here."),
) -> None:
    res = request_parity(model, task, docs, str(data_dir) if data_dir else None)
    summary = {k: v for k, v in res.items() if k not in ("ours", "hflm")}
    print(json.dumps(summary, indent=2))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    typer.run(main)
