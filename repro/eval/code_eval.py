"""pass@k for humaneval and mbpp without the Hugging Face hub.

lm-eval's humaneval and mbpp tasks score generated programs with `evaluate.load("code_eval")`, a metric
script that `evaluate` fetches from the hub when their task module is imported. `CodeEval` is our
implementation of the same metric and the same call (`compute(references, predictions, k)` ->
`(pass@k per k, per-program results)`): each candidate program, followed by its test code, runs in
`sandbox.run` (its own namespaces where Linux allows: no network, nothing writable but a private
temporary directory, no view of other processes, every process it starts killed at the timeout;
resource limits everywhere); it passes when that process exits with status 0. pass@k is the unbiased
estimator of Chen et al. (2021), 1 - C(n - c, k) / C(n, k) for n candidates of which c pass, averaged
over problems.

Running model-generated code is unsafe: as with `evaluate`'s metric, nothing runs unless
HF_ALLOW_CODE_EVAL=1 (`repro eval harness --allow-code-execution` sets it); otherwise `compute`
raises `CodeExecutionRefused`.

`local_code_eval()` makes `evaluate.load("code_eval")` return a `CodeEval` while lm-eval builds a task
from local data (`lmeval_local.build_local`); any other metric loads as usual.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from repro.errors import EnvironmentFailed
from repro.eval import sandbox


class CodeExecutionRefused(RuntimeError):
    """Scoring humaneval/mbpp runs the model's code; it needs an explicit yes."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k candidates drawn without replacement from n, c of them
    correct, is correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def run_program(program: str, timeout: float) -> str:
    """'passed', 'timed out' or 'failed: <last line of stderr>' for one program in the sandbox."""
    outcome = sandbox.run(program, timeout)
    if outcome.status == "timed out":
        return "timed out"
    if outcome.passed:
        return "passed"
    if outcome.status == "sandbox error":
        raise EnvironmentFailed(
            f"the code sandbox could not start a program ({outcome.stderr.strip()}); "
            f"{sandbox.NAMESPACES_ENV}=0 runs programs without namespaces (process-group kill and limits only)."
        )
    if outcome.status == "too many processes":
        return "failed: too many processes"
    lines = outcome.stderr.strip().splitlines()
    status = f"exit status {outcome.code}" if outcome.code is not None else "killed by a signal"
    return "failed: " + (lines[-1] if lines else status)


class CodeEval:
    """`evaluate`'s code_eval interface: candidates per problem, one test program per problem."""

    def compute(
        self,
        predictions: list[list[str]],
        references: list[str],
        k: list[int] | int = (1, 10, 100),
        num_workers: int = 4,
        timeout: float = 3.0,
    ) -> tuple[dict[str, float], dict[int, list[tuple[int, dict[str, Any]]]]]:
        if os.environ.get("HF_ALLOW_CODE_EVAL") != "1":
            raise CodeExecutionRefused(
                "scoring humaneval/mbpp runs the model's generated code: allow it with "
                "--allow-code-execution (HF_ALLOW_CODE_EVAL=1)"
            )
        ks = [k] if isinstance(k, int) else list(k)
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} candidate lists for {len(references)} test programs")
        jobs = [
            (i, j, cand + "\n" + test)
            for i, (cands, test) in enumerate(zip(predictions, references, strict=True))
            for j, cand in enumerate(cands)
        ]
        with sandbox.closed_to_children(), ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
            outcomes = list(pool.map(lambda job: run_program(job[2], timeout), jobs))
        results: dict[int, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
        for (i, j, _), outcome in zip(jobs, outcomes, strict=True):
            results[i].append((j, {"task_id": i, "completion_id": j, "passed": outcome == "passed", "result": outcome}))
        n = [len(c) for c in predictions]
        c = [sum(r["passed"] for _, r in results[i]) for i in range(len(predictions))]
        scores = {
            f"pass@{kk}": sum(pass_at_k(ni, ci, kk) for ni, ci in zip(n, c, strict=True)) / len(n)
            for kk in ks
            if n and all(ni >= kk for ni in n)
        }
        return scores, dict(results)


@contextmanager
def local_code_eval() -> Iterator[None]:
    """While active, `evaluate.load("code_eval")` gives a `CodeEval` (no hub); other names load as usual."""
    try:
        import evaluate
    except ImportError:  # lm-eval without evaluate: its code tasks cannot be imported anyway
        yield
        return
    real = evaluate.load

    def load(path: str, *args: Any, **kwargs: Any) -> Any:
        return CodeEval() if path == "code_eval" else real(path, *args, **kwargs)

    evaluate.load = load
    try:
        yield
    finally:
        evaluate.load = real
