"""Test environment: never the network, never W&B, Triton (if present) interpreted without a GPU."""

import os
import sys
from pathlib import Path

# `python -m pytest` puts the checkout on sys.path, where the top-level `kernels/` and `experiments/`
# folders would shadow PyPI packages of those names (transformers imports `kernels`); the code is
# installed as repro.kernels and repro.experiments, so the checkout itself is never needed there.
_ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():  # Triton runs interpreted on CPU tensors; must precede any triton import
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _small_threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def nan_poison(monkeypatch):
    """torch.empty / empty_like / new_empty return NaN-filled float tensors (fla's conftest trick)."""
    empty, empty_like, new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty

    def poison(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: poison(new_empty(self, *a, **k)))
