"""Resume state without pickle: nested Python values in one safetensors file.

What a run saves to resume after a kill (a stage's losses or accuracies, a model's and an optimizer's
state dicts, the RNG state) is written as one `.safetensors` file: its tensors and numpy arrays as the
file's tensors, everything else as JSON in the file's metadata, a tensor standing there as a reference
to its name. Reading it back parses JSON and the safetensors header and nothing else: no code from the
file runs, so a run directory copied from someone else cannot execute a command when it resumes.

Kept exactly: dict (keys of any kind below, in order), list, tuple, str, int, float (NaN and
infinities too), bool, None, torch tensors (dtype, shape; a view is saved as a copy of its values),
numpy arrays and numpy scalars. Anything else is a TypeError when saving (a programming error).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

KEY = "repro.state"  # the metadata entry holding the JSON tree
_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class _Encoder:
    """Turns a value into a JSON tree, collecting its tensors under names `t0`, `t1`, ..."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._names: dict[tuple, str] = {}  # one entry per distinct tensor view
        self._storages: set[int] = set()

    def tensor(self, t: torch.Tensor) -> str:
        t = t.detach().cpu()
        view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in self._names:  # the same tensor twice (tied weights): stored once
            return self._names[view]
        ptr = view[0]
        whole = t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        if ptr in self._storages or not whole:  # safetensors refuses views that share memory
            t = t.clone(memory_format=torch.contiguous_format)
        self._storages.add(t.untyped_storage().data_ptr())
        name = f"t{len(self.tensors)}"
        self.tensors[name] = t
        self._names[view] = name
        return name

    def __call__(self, obj: Any) -> Any:
        if obj is None or isinstance(obj, (bool, int, str)):
            return obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"$float": str(obj)}
        if isinstance(obj, list):
            return [self(v) for v in obj]
        if isinstance(obj, tuple):
            return {"$tuple": [self(v) for v in obj]}
        if isinstance(obj, dict):
            return {"$dict": [[self(k), self(v)] for k, v in obj.items()]}
        if isinstance(obj, torch.Tensor):
            return {"$tensor": self.tensor(obj)}
        if isinstance(obj, np.ndarray):
            return {"$ndarray": self.tensor(torch.from_numpy(np.ascontiguousarray(obj)))}
        if isinstance(obj, np.generic):
            return {"$numpy": obj.dtype.str, "value": self(obj.item())}
        raise TypeError(f"cannot save a {type(obj).__name__} in a state file (only plain data and tensors)")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict) or len(node) not in (1, 2):
        raise ValueError("not a state tree")
    tag, value = next(iter(node.items()))
    if tag == "$float":
        return _FLOATS[value]
    if tag == "$tuple":
        return tuple(_decode(v, tensors) for v in value)
    if tag == "$dict":
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value}
    if tag == "$tensor":
        return tensors[value]
    if tag == "$ndarray":
        return tensors[value].numpy()
    if tag == "$numpy":
        return np.dtype(value).type(_decode(node["value"], tensors))
    raise ValueError(f"unknown tag {tag!r}")


def save(obj: Any, path: str | os.PathLike) -> None:
    """Write `obj` to `path` (not atomically: wrap in `files.atomic_write`)."""
    import safetensors.torch

    encode = _Encoder()
    tree = json.dumps(encode(obj), allow_nan=False)
    safetensors.torch.save_file(encode.tensors, str(path), metadata={KEY: tree})


def size(obj: Any) -> int:
    """About the bytes `save` writes for `obj` (its tensors; the JSON is small beside them)."""
    encode = _Encoder()
    encode(obj)
    return sum(t.numel() * t.element_size() for t in encode.tensors.values())


def load(path: str | os.PathLike) -> Any:
    """Read what `save` wrote; ValueError (or safetensors' error) when the file is anything else."""
    from safetensors import safe_open

    with safe_open(str(Path(path)), framework="pt") as f:
        meta = f.metadata() or {}
        if KEY not in meta:
            raise ValueError("no repro state in the file")
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    return _decode(json.loads(meta[KEY]), tensors)
