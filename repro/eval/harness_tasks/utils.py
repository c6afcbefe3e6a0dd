"""Datasets of the tasks shipped with repro, read from the JSONL files beside this module.

lm-eval resolves a YAML's relative `data_files` against the current directory, so the tasks load
their data through `custom_dataset` instead: the path is found from this file, wherever repro is
installed, and nothing is fetched or cached.
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _split(name: str) -> dict:
    import datasets

    rows = [json.loads(line) for line in (HERE / name).read_text().splitlines() if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}


def facts_mc(**_: object) -> dict:
    return _split("facts_mc.jsonl")


def facts_gen(**_: object) -> dict:
    return _split("facts_gen.jsonl")
