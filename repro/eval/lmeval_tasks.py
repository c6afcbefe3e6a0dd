"""lm-eval's tasks for `repro eval harness`: names, the offline rule, and loading each task once.

A task with a folder in DATA_DIR/lmeval/ runs from it (`repro.eval.lmeval_local`); the shipped JSONL
tasks (`harness_tasks/`) and `--include-path` folders load without the network; other built-in tasks
need the Hugging Face hub, which is probed first so an offline run fails fast, in one sentence.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from repro.errors import UserError
from repro.eval.code_eval import CodeExecutionRefused
from repro.eval.lmeval_local import build_local, has_local

SHIPPED_TASKS = Path(__file__).resolve().parent / "harness_tasks"


def _local_names(dirs: list[Path]) -> set[str]:
    """Task, group and tag names defined by the YAML files under `dirs` (read as text: the files
    may hold !function tags)."""
    names = set()
    for d in dirs:
        for path in d.rglob("*.yaml"):
            for m in re.finditer(r"^(task|group|tag):\s*['\"]?([\w.+-]+)", path.read_text(), re.M):
                names.add(m.group(2))
    return names


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers (False at once when HF_HUB_OFFLINE/HF_DATASETS_OFFLINE
    is set)."""
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _first_line(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line if len(line) <= 120 else line[:119] + "…"


def _race_middle() -> dict[str, Any]:
    """lm-eval's `race` task (high school) on the dataset's middle-school subset."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(Path(lm_eval.tasks.__file__).parent / "race" / "race.yaml", resolve_func=True)
    return {**cfg, "task": "race_middle", "dataset_name": "middle"}


_TASK_MANAGERS: dict[tuple, Any] = {}


def load_task_manager(names: list[str], include_path: Path | None, data_dir: str | None = None) -> Any:
    """lm-eval's TaskManager over the shipped and --include-path tasks (and the built-in ones when a
    name needs them, or runs from DATA_DIR's copy); an unknown name is one sentence."""
    dirs = [SHIPPED_TASKS, *([include_path] if include_path else [])]
    builtin = [n for n in names if n not in _local_names(dirs)]
    if [n for n in builtin if not has_local(n, data_dir)] and not hub_reachable():
        # datasets and huggingface_hub read these when first imported: then the cache is used
        # and a missing dataset fails at once instead of after a minute of retries
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
            os.environ[var] = "1"
    from lm_eval.tasks import TaskManager

    key = (tuple(str(d) for d in dirs), bool(builtin))
    if key not in _TASK_MANAGERS:  # indexing lm-eval's ~15k task YAMLs takes seconds: once per process
        _TASK_MANAGERS[key] = TaskManager(include_path=list(key[0]), include_defaults=key[1])
    tm = _TASK_MANAGERS[key]
    unknown = [n for n in names if n != "race_middle" and n not in tm.all_tasks]
    if unknown:
        raise UserError(
            f"unknown lm-eval task(s) {', '.join(unknown)}; see `lm-eval ls tasks`, or pass --include-path "
            "with your task YAMLs."
        )
    return tm


@dataclass
class LoadedTasks:
    """What `load_tasks` found: lm-eval's TaskManager, one spec per runnable benchmark (a name, or
    the Task/Group built on local files), the size of each benchmark's leaf tasks, the benchmarks
    that generate text (generate_until), and the benchmarks skipped with the reason (only with a data
    directory: without one, any of them is an error)."""

    tm: Any
    specs: list[Any]
    sizes: dict[str, dict[str, int]]
    skipped: dict[str, str]
    generative: set[str] = field(default_factory=set)


def load_tasks(names: list[str], include_path: Path | None, data_dir: str | None = None) -> LoadedTasks:
    """Each task loaded once here (the data too), so what cannot run is named before any scoring.
    A task with a folder in DATA_DIR/lmeval/ runs from it (lm-eval's own definition, the dataset
    location changed); local tasks (shipped, --include-path) load without the network; other built-in
    ones need the hub, which is probed first so an offline run fails fast, in one sentence, unless
    their data is in the local cache. With a data directory, benchmarks that cannot load are skipped
    (and reported) instead."""
    tm = load_task_manager(names, include_path, data_dir)
    out = LoadedTasks(tm, [], {}, {})
    missing, broken = [], []
    for name in names:
        try:
            if has_local(name, data_dir):
                spec = build_local(tm, name, data_dir)
                loaded = tm.load([spec])
            else:
                spec = _race_middle() if name == "race_middle" else name
                loaded = tm.load([spec])  # fetches (or finds cached) data and metric code now, to name what fails
        except OSError as e:  # ConnectionError, or FileNotFoundError of a hub dataset or `evaluate` metric
            if has_local(name, data_dir):
                broken.append((name, f"needs the hub: {_first_line(e)}"))
            elif not hub_reachable():  # e.g. humaneval_plus: no local copy (its code metric would fail too)
                missing.append(name)
            elif "code_eval" in str(e):  # humaneval/mbpp import evaluate's code_eval metric from the hub
                broken.append((name, "its metric (evaluate's code_eval) comes from the Hugging Face hub"))
            else:
                broken.append((name, _first_line(e)))
            continue
        except CodeExecutionRefused:  # humaneval/mbpp's metric runs the generated programs
            broken.append((name, "scoring runs the model's generated code: add --allow-code-execution"))
            continue
        except ImportError as e:  # e.g. minerva_math needs lm-eval's [math] extra
            broken.append((name, f"missing packages: {e.name or _first_line(e)}"))
            continue
        out.specs.append(spec)
        out.sizes[name] = {t: len(task.eval_docs) for t, task in loaded["tasks"].items()}
        if any(task.OUTPUT_TYPE == "generate_until" for task in loaded["tasks"].values()):
            out.generative.add(name)
    if data_dir is not None and out.specs:
        out.skipped = {n: "no offline data" for n in missing} | dict(broken)
        return out
    if missing:
        raise UserError(
            f"the Hugging Face hub is unreachable and {', '.join(missing)} need data or metric code from it that "
            "is not in the local cache; run once with network access to cache it, evaluate local tasks "
            "(--tasks repro_local, or --include-path DIR with JSONL task YAMLs), or give --data-dir DIR with "
            "DIR/lmeval/<task>/ copies"
            + (f"; and cannot load {'; '.join(f'{n} ({r})' for n, r in broken)}." if broken else ".")
        )
    if broken:
        raise UserError(f"cannot load task(s): {'; '.join(f'{n} ({r})' for n, r in broken)}.")
    return out
