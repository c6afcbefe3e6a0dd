"""A content-addressed cache of trained networks, shared by experiments (issue 17).

wd-transfer, rich-ensemble and very-large-dropout all start from supervised CIFAR backbones. A
backbone is fully determined by its resolved spec: architecture, training data (a digest of the very
images and labels), recipe (epochs, batch, augmentation, optimizer, precision) and seed. The cache
stores each trained backbone under the hash of that spec, so any experiment (or a second run of the
same one) that needs the same backbone loads it instead of training it again:

    <root>/backbones/<hash>/config.json      the spec and the sha256 of each other file (all checked on load)
                           model.safetensors  the weights
                           curve.jsonl        the training curve: one {"step", "loss", "lr"} per step
                           meta.json          who trained it, when, how long, final loss, ID test accuracy

`<root>` is `$REPRO_CACHE_DIR` when set, else `<runs>/_cache` beside the run directories (the `--out`
of `repro run`). Entries are written to a temporary folder and renamed into place, so two runs that
train the same backbone at once leave one complete entry; the folders of writers killed mid-way are
removed by the next save. An entry that fails its check on load (a damaged file, an unreadable or
edited config.json) is said in one sentence, removed and trained again. `repro cache list|clear` shows
and empties it, damaged entries included.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch.nn as nn
import typer

from repro import files

CACHE_ENV = "REPRO_CACHE_DIR"
KINDS = ("backbones",)


def spec_hash(spec: dict[str, Any]) -> str:
    """16 hex digits of the sha256 of the spec's canonical JSON (sorted keys)."""
    text = json.dumps(spec, sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise TypeError(f"cache spec value {obj!r} is not JSON-serialisable")


def _canonical(spec: dict[str, Any]) -> Any:
    """The spec as it reads back from config.json (tuples become lists), for the load-time check."""
    return json.loads(json.dumps(spec, sort_keys=True, default=_jsonable))


def array_digest(*arrays: np.ndarray) -> str:
    """A digest of the exact training data (bytes, dtype and shape of each array)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


def cache_root(run_dir: Path | None = None) -> Path:
    """`$REPRO_CACHE_DIR`, else `<runs>/_cache` for a run directory `<runs>/<exp>/<preset>/<variant>/s<seed>`."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    if run_dir is None:
        return Path("runs") / "_cache"
    return Path(run_dir).parents[3] / "_cache"


class ModelCache:
    """One kind of cached model (`backbones`) under a cache root."""

    def __init__(self, root: Path, kind: str = "backbones"):
        self.root = Path(root)
        self.dir = self.root / kind

    def path(self, spec: dict[str, Any]) -> Path:
        return self.dir / spec_hash(spec)

    def load(self, spec: dict[str, Any], model: nn.Module) -> dict[str, Any] | None:
        """Load the weights of `spec` into `model` and return the entry's meta, or None on a miss.
        An entry that fails its check (`problem`) is said in one sentence, removed, and is a miss:
        the caller trains the network again and stores a good entry."""
        path = self.path(spec)
        if not path.is_dir():
            return None
        problem = self.problem(path, spec)
        if problem is None:
            try:
                state = safetensors.torch.load_file(str(path / "model.safetensors"))
                model.load_state_dict(state)  # copies into the existing (possibly channels-last) parameters
            except Exception as e:  # the right bytes that do not fit this model: a hand-made entry
                problem = f"its weights do not load ({type(e).__name__})"
        if problem is not None:
            from repro.track import console

            console.print(f"[yellow]warning[/]: cache entry {path} {problem}; it is removed and trained again.")
            shutil.rmtree(path, ignore_errors=True)
            return None
        meta = _read_json(path / "meta.json")
        return {**meta, "hash": path.name, "path": str(path)}

    def problem(self, path: Path, spec: dict[str, Any] | None = None) -> str | None:
        """Why the entry at `path` cannot be trusted (None: it can): an unreadable config.json, a spec
        other than `spec` (or than the one its name is the hash of), a file missing, or a file whose
        sha256 differs from the one recorded when the entry was written."""
        try:
            config = _read_json(path / "config.json")
        except (OSError, ValueError) as e:
            return f"has an unreadable config.json ({type(e).__name__})"
        stored = config.get("spec")
        if not isinstance(stored, dict) or spec_hash(stored) != path.name:
            return "has a config.json whose spec is not the one its name is the hash of"
        if spec is not None and stored != _canonical(spec):
            return "has a config.json whose spec differs from the one asked for"
        digests = config.get("sha256")
        if not isinstance(digests, dict) or set(digests) != set(FILES):
            return "was written before entries recorded their files' hashes, so it cannot be checked"
        for name, digest in digests.items():
            if not (path / name).is_file():
                return f"lacks {name}"
            if file_sha256(path / name) != digest:
                return f"has a {name} whose sha256 differs from the one recorded (the file is damaged)"
        return None

    def curve(self, spec: dict[str, Any]) -> list[dict[str, float]]:
        path = self.path(spec) / "curve.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def save(self, spec: dict[str, Any], model: nn.Module, curve: list[dict[str, float]], meta: dict[str, Any]) -> Path:
        """Write the entry atomically (temporary folder, then rename); an entry that appeared in the
        meantime (another run trained the same spec) is kept and this one dropped. config.json, written
        last, records the sha256 of every other file, checked on each load."""
        path = self.path(spec)
        self.dir.mkdir(parents=True, exist_ok=True)
        files.remove_stale_temps(self.dir)  # folders of writers killed mid-way
        tmp = files.temp_path(path)
        tmp.mkdir()
        try:
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            safetensors.torch.save_file(state, str(tmp / "model.safetensors"))
            (tmp / "curve.jsonl").write_text("".join(json.dumps(row) + "\n" for row in curve))
            (tmp / "meta.json").write_text(
                json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta}, indent=1)
            )
            digests = {name: file_sha256(tmp / name) for name in FILES}
            config = {"hash": path.name, "spec": _canonical(spec), "sha256": digests}
            (tmp / "config.json").write_text(json.dumps(config, indent=1))
            tmp.rename(path)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if not path.is_dir():  # a real failure (a full disk), not the same spec finished elsewhere first
                raise files.write_error(e, path) from None
        return path

    def entries(self) -> list[dict[str, Any]]:
        """One dict per entry: hash, size, spec, meta and `problem` (None for a sound entry). A
        damaged entry is listed too (with an empty spec when its config.json is unreadable), so it
        can be seen and cleared."""
        out = []
        for entry in sorted(self.dir.iterdir()) if self.dir.is_dir() else []:
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            problem = self.problem(entry)
            spec, meta = (
                _read_json_or_empty(entry / "config.json").get("spec"),
                _read_json_or_empty(entry / "meta.json"),
            )
            size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
            spec = spec if isinstance(spec, dict) else {}
            out.append({"hash": entry.name, "bytes": size, "spec": spec, "meta": meta, "problem": problem})
        return out

    def clear(self, hashes: list[str] | None = None) -> int:
        """Remove the given entries (all when None), and any half-written temporary folders."""
        if not self.dir.is_dir():
            return 0
        removed = 0
        for entry in self.dir.iterdir():
            temporary = entry.name.startswith(".")
            if hashes is None or entry.name in hashes or temporary:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed += not temporary
        return removed


FILES = ("model.safetensors", "curve.jsonl", "meta.json")  # what config.json records the sha256 of


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_json_or_empty(path: Path) -> dict[str, Any]:
    try:
        return _read_json(path)
    except (OSError, ValueError):
        return {}


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path` ({} when absent); ValueError when it is not one."""
    if not path.exists():
        return {}
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return value


def describe(spec: dict[str, Any]) -> str:
    """One line naming what an entry is (for `repro cache list`)."""
    if not spec:
        return "?"
    try:
        arch, data, recipe = spec.get("arch", {}), spec.get("data", {}), spec.get("recipe", {})
        towers = arch.get("towers", 1)
        model = f"{towers}x" if towers > 1 else ""
        classes = data.get("classes") or []
        span = f":{classes[0]}-{classes[-1]}" if classes else ""
        optim = recipe.get("optim", {})
        return (
            f"{model}resnet w{arch.get('width')} on {data.get('dataset')}{span} "
            f"({data.get('n_train')} imgs), {recipe.get('epochs')} ep, wd {optim.get('weight_decay')}, "
            f"seed {spec.get('seed')}"
        )
    except (AttributeError, TypeError, IndexError):  # a damaged spec: the status column says so
        return "?"


# ---- `repro cache list|clear` ---------------------------------------------------------------------

app = typer.Typer(help="The cache of pretrained backbones that experiments share.", no_args_is_help=True)
_ROOT = typer.Option(None, "--cache-dir", help="Cache root (default: $REPRO_CACHE_DIR, else runs/_cache).")


def _root(cache_dir: Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else cache_root()


@app.command("list")
def list_entries(cache_dir: Path | None = _ROOT) -> None:
    """Show every cached backbone: hash, what it is, ID test accuracy, training time, size."""
    from rich.table import Table

    from repro.track import console

    root = _root(cache_dir)
    table = Table(title=f"backbone cache {root / 'backbones'}")
    for col in ("hash", "backbone", "ID test acc", "trained (s)", "created", "MB", "status"):
        table.add_column(col, overflow="fold")
    entries = ModelCache(root).entries()
    for e in entries:
        meta = e["meta"]
        acc, train_s = meta.get("test_acc"), meta.get("train_s")
        table.add_row(
            e["hash"],
            describe(e["spec"]),
            f"{100 * acc:.2f}" if isinstance(acc, (int, float)) else "-",
            f"{train_s:.0f}" if isinstance(train_s, (int, float)) else "-",
            str(meta.get("created", "-")),
            f"{e['bytes'] / 1e6:.1f}",
            "ok" if e["problem"] is None else f"damaged: {e['problem']}",
        )
    console.print(table)
    damaged = sum(e["problem"] is not None for e in entries)
    note = f" ({damaged} damaged: they are retrained when needed, or `repro cache clear HASH`)" if damaged else ""
    console.print(f"{len(entries)} entries, {sum(e['bytes'] for e in entries) / 1e6:.1f} MB{note}")


@app.command("clear")
def clear_entries(
    hashes: list[str] | None = typer.Argument(None, help="Hashes to remove (default: all)."),  # noqa: B008
    cache_dir: Path | None = _ROOT,
    yes: bool = typer.Option(False, "--yes", "-y", help="Remove without asking."),
) -> None:
    """Remove cached backbones (all of them, or the given hashes); runs retrain what they miss."""
    from repro.track import console

    cache = ModelCache(_root(cache_dir))
    known = {e["hash"] for e in cache.entries()}
    unknown = sorted(set(hashes or ()) - known)
    if unknown:
        console.print(f"[red]error:[/] no cached backbone {', '.join(unknown)}; `repro cache list` shows them.")
        raise typer.Exit(2)
    if not hashes and known and not yes:
        typer.confirm(f"remove all {len(known)} cached backbones under {cache.dir}?", abort=True)
    console.print(f"removed {cache.clear(hashes or None)} entries from {cache.dir}")
