"""RULER's task table and prompt strings, as NVIDIA/RULER's `scripts/synthetic.yaml` and
`scripts/data/synthetic/constants.py` define them (reference evaluations.md §1.3-1.4)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from repro.errors import UserError

# ---- task table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    family: str  # niah | vt | cwe | fwe | qa
    gen_tokens: int  # RULER's tokens_to_generate
    metric: str  # all | part
    params: dict[str, Any] = field(default_factory=dict)


def _niah(haystack: str, key: str = "words", value: str = "numbers", k: int = 1, v: int = 1, q: int = 1):
    return TaskSpec("niah", 128, "all", {"haystack": haystack, "key": key, "value": value, "k": k, "v": v, "q": q})


TASKS: dict[str, TaskSpec] = {
    "niah_single_1": _niah("noise"),
    "niah_single_2": _niah("essay"),
    "niah_single_3": _niah("essay", value="uuids"),
    "niah_multikey_1": _niah("essay", k=4),
    "niah_multikey_2": _niah("needle"),
    "niah_multikey_3": _niah("needle", key="uuids", value="uuids"),
    "niah_multivalue": _niah("essay", v=4),
    "niah_multiquery": _niah("essay", q=4),
    "vt": TaskSpec("vt", 30, "all", {"chains": 1, "hops": 4}),
    "cwe": TaskSpec("cwe", 120, "all", {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10}),
    "fwe": TaskSpec("fwe", 50, "all", {"alpha": 2.0}),
    "qa_1": TaskSpec("qa", 32, "part", {"dataset": "squad"}),
    "qa_2": TaskSpec("qa", 32, "part", {"dataset": "hotpotqa"}),
}
GROUPS = {
    "all": list(TASKS),
    "niah": [t for t in TASKS if t.startswith("niah")],
    "qa": ["qa_1", "qa_2"],
    "synthetic": [t for t in TASKS if not t.startswith("qa")],
}

# ---- templates (RULER's strings; base-model prompts end with the answer prefix) -----------------

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
NIAH_TEMPLATE = (
    "Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_v} afterwards.\n{context}\n"
    "What are all the special magic {type_v} for {query} mentioned in the provided text?"
)
NIAH_PREFIX = " The special magic {type_v} for {query} mentioned in the provided text are"
VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
    "are assigned the value {query}, they are: "
)
CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\n"
    "Question: What are the 10 most common words in the above list?"
)
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most "
    "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please "
    "ignore the dots '....'. What are the three most frequently appeared words in the above coded text?"
)
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
QA_INSTRUCTION = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other words."
)
QA_TEMPLATE = (
    QA_INSTRUCTION
    + "\n\nThe following are given documents.\n\n{context}\n\n"
    + QA_INSTRUCTION
    + "\n\nQuestion: {query}"
)
QA_PREFIX = " Answer:"


def resolve_tasks(spec: str | Sequence[str]) -> list[str]:
    """`all`, `niah`, `qa`, `synthetic`, task names, or a comma list of them (order kept, no repeats)."""
    parts = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    out: list[str] = []
    for part in parts or ["all"]:
        names = GROUPS.get(part) or ([part] if part in TASKS else None)
        if names is None:
            close = difflib.get_close_matches(part, [*GROUPS, *TASKS], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"unknown RULER task '{part}'{hint}; choose from {', '.join([*GROUPS, *TASKS])}.")
        out += [n for n in names if n not in out]
    return out
