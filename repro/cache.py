"""A content-addressed cache of trained networks, shared by experiments (issue 17).

wd-transfer, rich-ensemble and very-large-dropout all start from supervised CIFAR backbones. A
backbone is fully determined by its resolved spec: architecture, training data (a digest of the very
images and labels), recipe (epochs, batch, augmentation, optimizer, precision) and seed. The cache
stores each trained backbone under the hash of that spec, so any experiment (or a second run of the
same one) that needs the same backbone loads it instead of training it again:

    <root>/backbones/<hash>/config.json      the spec (re-checked on load, not only its hash)
                           model.safetensors  the weights
                           curve.jsonl        the training curve: one {"step", "loss", "lr"} per step
                           meta.json          who trained it, when, how long, final loss, ID test accuracy

`<root>` is `$REPRO_CACHE_DIR` when set, else `<runs>/_cache` beside the run directories (the `--out`
of `repro run`). Entries are written to a temporary folder and renamed into place, so two runs that
train the same backbone at once leave one complete entry. `repro cache list|clear` shows and empties it.
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
        A folder whose config differs from `spec` (a hash collision, a hand edit) is a miss."""
        path = self.path(spec)
        if not (path / "model.safetensors").exists() or not (path / "config.json").exists():
            return None
        if json.loads((path / "config.json").read_text()).get("spec") != _canonical(spec):
            return None
        state = safetensors.torch.load_file(str(path / "model.safetensors"))
        model.load_state_dict(state)  # copies into the existing (possibly channels-last) parameters
        meta = json.loads((path / "meta.json").read_text()) if (path / "meta.json").exists() else {}
        return {**meta, "hash": path.name, "path": str(path)}

    def curve(self, spec: dict[str, Any]) -> list[dict[str, float]]:
        path = self.path(spec) / "curve.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def save(self, spec: dict[str, Any], model: nn.Module, curve: list[dict[str, float]], meta: dict[str, Any]) -> Path:
        """Write the entry atomically (temporary folder, then rename); an entry that appeared in the
        meantime (another run trained the same spec) is kept and this one dropped."""
        path = self.path(spec)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{path.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps({"hash": path.name, "spec": _canonical(spec)}, indent=1))
        (tmp / "curve.jsonl").write_text("".join(json.dumps(row) + "\n" for row in curve))
        (tmp / "meta.json").write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta}, indent=1))
        try:
            tmp.rename(path)
        except OSError:  # the same spec finished elsewhere first
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    def entries(self) -> list[dict[str, Any]]:
        """One dict per complete entry: hash, size, spec summary and meta."""
        out = []
        for path in sorted(self.dir.glob("*/config.json")) if self.dir.is_dir() else []:
            entry = path.parent
            cfg = json.loads(path.read_text())
            meta = json.loads((entry / "meta.json").read_text()) if (entry / "meta.json").exists() else {}
            size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
            out.append({"hash": entry.name, "bytes": size, "spec": cfg.get("spec", {}), "meta": meta})
        return out

    def clear(self, hashes: list[str] | None = None) -> int:
        """Remove the given entries (all when None), and any half-written temporary folders."""
        if not self.dir.is_dir():
            return 0
        removed = 0
        for entry in self.dir.iterdir():
            if not entry.is_dir():
                continue
            temporary = entry.name.startswith(".")
            if hashes is None or entry.name in hashes or temporary:
                shutil.rmtree(entry)
                removed += not temporary
        return removed


def describe(spec: dict[str, Any]) -> str:
    """One line naming what an entry is (for `repro cache list`)."""
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
    for col in ("hash", "backbone", "ID test acc", "trained (s)", "created", "MB"):
        table.add_column(col, overflow="fold")
    entries = ModelCache(root).entries()
    for e in entries:
        meta = e["meta"]
        acc = meta.get("test_acc")
        table.add_row(
            e["hash"],
            describe(e["spec"]),
            "-" if acc is None else f"{100 * acc:.2f}",
            f"{meta.get('train_s', float('nan')):.0f}",
            str(meta.get("created", "-")),
            f"{e['bytes'] / 1e6:.1f}",
        )
    console.print(table)
    console.print(f"{len(entries)} entries, {sum(e['bytes'] for e in entries) / 1e6:.1f} MB")


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
