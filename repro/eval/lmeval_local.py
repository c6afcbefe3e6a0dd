"""lm-eval's own tasks on local copies of their data, and seeded, evenly spread subsets.

`LOCAL_DATA` is the one table: lm-eval task (or group) -> where its files sit under `DATA_DIR/lmeval/`
(the layout of `../shared/data/lmeval/`, whose README gives provenance and row counts). When a task's
folder exists, `local_spec` hands lm-eval the task's own YAML with only the dataset location changed
(`dataset_path: json`, `dataset_kwargs.data_files`); prompts, metrics, filters and few-shot settings
stay lm-eval's. A split the task names but the folder lacks (e.g. ARC's train split) is set to None,
so lm-eval cannot read it; few-shot examples then come from where lm-eval falls back to, which is why
`check_fewshot` refuses few-shot runs whose example split is missing.

A group (mmlu, bbh) runs as its leaf tasks under the group's name and aggregation (MMLU's four
sub-groups are flattened into one list: the size-weighted mean over leaves is the same number).
MMLU's copy keeps all subjects in one file per split; each leaf (one subject) reads its rows through
a per-subject file derived once into a cache folder.

`spread_subset` draws the subsample behind `--limit`: n documents of a split of N, one uniformly
drawn in each of n equal strata (so the subset covers the whole split, and a fixed seed fixes it).
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from repro.errors import UserError
from repro.files import write_text

# lm-eval task or group -> its files under DATA_DIR/lmeval/: {split} is the split name the task's YAML
# uses (test, validation, train, dev, ...), {name} the leaf's dataset_name (bbh subtask, MMLU subject);
# "?subject={name}" keeps the rows of one subject from a file holding all of them.
LOCAL_DATA: dict[str, str] = {
    "arc_easy": "arc_easy/{split}.jsonl",
    "arc_challenge": "arc_challenge/{split}.jsonl",
    "piqa": "piqa/{split}.jsonl",
    "openbookqa": "openbookqa/{split}.jsonl",
    "boolq": "boolq/{split}.jsonl",
    "copa": "copa/{split}.jsonl",
    "winogrande": "winogrande/{split}.jsonl",
    "social_iqa": "social_iqa/{split}.jsonl",
    "gsm8k": "gsm8k/{split}.jsonl",
    "humaneval": "humaneval/{split}.jsonl",
    "mbpp": "mbpp/{split}.jsonl",
    "nq_open": "nq_open/{split}.jsonl",
    "bbh": "bbh/jsonl/{name}/{split}.jsonl",
    "mmlu": "mmlu/hf_{split}.jsonl?subject={name}",
}
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


def local_root(data_dir: str | Path | None) -> Path | None:
    return Path(data_dir) / "lmeval" if data_dir else None


def has_local(name: str, data_dir: str | Path | None) -> bool:
    """Whether DATA_DIR holds the folder of lm-eval task `name` (a row of `LOCAL_DATA`)."""
    root = local_root(data_dir)
    return root is not None and name in LOCAL_DATA and (root / LOCAL_DATA[name].split("/")[0]).is_dir()


def _entry(tm: Any, name: str) -> Any:
    entry = tm.task_index.get(name)
    if entry is None:
        raise UserError(f"lm-eval has no task {name!r} to run on local files.")
    return entry


def leaf_tasks(tm: Any, name: str) -> list[str]:
    """The leaf tasks of a task, group or tag, in the group's order (one name for a plain task)."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = _entry(tm, name)
    if entry.kind is Kind.TAG:
        return sorted(entry.tags)
    if entry.kind is not Kind.GROUP:
        return [name]
    out: list[str] = []
    for child in load_yaml(entry.yaml_path, resolve_func=False)["task"]:
        child = child if isinstance(child, str) else child.get("task") or child.get("group")
        out += [t for t in leaf_tasks(tm, child) if t not in out]
    return out


def _subject_file(src: Path, column: str, value: str) -> Path:
    """The rows of `src` whose `column` is `value`, as a JSONL file derived once (keyed by the source's
    path, size and modification time) under the system's temporary folder."""
    stat = src.stat()
    key = hashlib.sha256(f"{src.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / "repro-lmeval" / key / column / value / src.name
    if not out.exists():
        with src.open() as f:
            rows = [line for line in f if json.loads(line).get(column) == value]
        if not rows:
            raise UserError(f"{src} has no rows with {column} = {value!r}.")
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text(out, "".join(rows))
    return out


def _split_file(root: Path, pattern: str, split: str, name: str | None) -> Path | None:
    rel, _, where = pattern.partition("?")
    path = root / rel.format(split=split, name=name or "")
    if not path.is_file():
        return None
    if where:
        column, _, value = where.partition("=")
        return _subject_file(path, column, value.format(name=name or ""))
    return path


def leaf_overrides(cfg: Mapping[str, Any], pattern: str, root: Path) -> dict[str, Any]:
    """What changes in one leaf task's config so it reads local files: the dataset location, and the
    splits the folder lacks set to None. The split lm-eval evaluates (test, else validation) must exist."""
    files: dict[str, str] = {}
    out: dict[str, Any] = {}
    for key in SPLIT_KEYS:
        split = cfg.get(key)
        if split is None or split in files:
            continue
        path = _split_file(root, pattern, split, cfg.get("dataset_name"))
        if path is None:
            out[key] = None
        else:
            files[split] = str(path)
    eval_key = "test_split" if cfg.get("test_split") else "validation_split"
    if cfg.get(eval_key) not in files:
        want = root / pattern.partition("?")[0].format(split=cfg.get(eval_key), name=cfg.get("dataset_name") or "")
        raise UserError(f"lm-eval task {cfg['task']} evaluates on {want}, which does not exist.")
    return {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": files}, **out}


def local_spec(tm: Any, name: str, data_dir: str | Path) -> dict[str, Any]:
    """The lm-eval task spec that runs task or group `name` on DATA_DIR's files, lm-eval's own task
    definition otherwise unchanged."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    root, pattern, entry = local_root(data_dir), LOCAL_DATA[name], _entry(tm, name)
    assert root is not None

    def overrides(task: str) -> tuple[dict[str, Any], dict[str, Any]]:
        cfg = load_yaml(_entry(tm, task).yaml_path, resolve_func=True)
        return cfg, {"task": task, **leaf_overrides(cfg, pattern, root)}

    if entry.kind is not Kind.GROUP:
        cfg, changed = overrides(name)
        return {**cfg, **changed}
    group = load_yaml(entry.yaml_path, resolve_func=True)
    # a reference with overrides: lm-eval merges them into the leaf's own YAML
    children = [overrides(task)[1] for task in leaf_tasks(tm, name)]
    return {**{k: v for k, v in group.items() if k != "task"}, "group": name, "task": children}


def build_local(tm: Any, name: str, data_dir: str | Path) -> Any:
    """The lm-eval Task (or Group of leaf Tasks) of `local_spec`, its data loaded from DATA_DIR (and
    humaneval/mbpp's code_eval metric from `repro.eval.code_eval`, not the hub)."""
    from lm_eval.tasks._factory import TaskFactory
    from lm_eval.tasks._index import TaskIndex

    from repro.eval.code_eval import local_code_eval

    with local_code_eval():
        spec = local_spec(tm, name, data_dir)
        return TaskFactory().build(TaskIndex.entry_from_config(spec), overrides=None, registry=tm.task_index)


def check_fewshot(task: Any, num_fewshot: int | None) -> None:
    """Refuse a few-shot run whose examples would come from the evaluation split itself (lm-eval's
    fallback when the task's example split is not in the local folder)."""
    cfg = task.config
    shots = cfg.num_fewshot if num_fewshot is None else num_fewshot
    if not shots:
        return
    fewshot = getattr(task, "fewshot_cfg", None)
    if cfg.fewshot_split or getattr(fewshot, "samples", None) or cfg.training_split or cfg.validation_split:
        return
    raise UserError(
        f"{cfg.task}: {shots}-shot prompts need example documents, and its local folder has no train or "
        "validation split (lm-eval would draw them from the test documents); use --num-fewshot 0."
    )


def spread_subset(n_total: int, n: int, seed: int, key: str) -> list[int]:
    """n of range(n_total), one drawn uniformly in each of n equal strata, fixed by (seed, key)."""
    if n >= n_total:
        return list(range(n_total))
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    edges = np.floor(np.arange(n + 1) * n_total / n).astype(int)
    return sorted(int(rng.integers(lo, hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True))


def allocate(sizes: Mapping[str, int], limit: int) -> dict[str, int]:
    """`limit` documents over a benchmark's leaf tasks in proportion to their sizes (at least one each,
    largest remainders first), never more than a leaf has."""
    total = sum(sizes.values())
    if total <= limit:
        return dict(sizes)
    share = {k: limit * v / total for k, v in sizes.items()}
    out = {k: max(1, min(sizes[k], math.floor(s))) for k, s in share.items()}
    for k in sorted(share, key=lambda k: share[k] - math.floor(share[k]), reverse=True):
        if sum(out.values()) >= limit:
            break
        if out[k] < sizes[k]:
            out[k] += 1
    return out


def plan_samples(
    benchmarks: Mapping[str, Mapping[str, int]], limit: int | None | Mapping[str, int | None], seed: int
) -> dict[str, list[int]]:
    """{leaf task: document indices} for lm-eval's `samples`: every benchmark (task or group, given as
    {leaf: number of documents}) cut to `limit` documents (one number, or one per benchmark), spread
    evenly; leaves kept whole are left out."""
    out: dict[str, list[int]] = {}
    for name, sizes in benchmarks.items():
        cap = limit.get(name) if isinstance(limit, Mapping) else limit
        if cap is None:
            continue
        for leaf, n in allocate(sizes, cap).items():
            if n < sizes[leaf]:
                out[leaf] = spread_subset(sizes[leaf], n, seed, leaf)
    return out
