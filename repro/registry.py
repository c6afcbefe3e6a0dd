"""One registry of named experiments. Each module in `experiments/` registers its experiment(s)."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from repro.errors import UserError

PRESETS = ("smoke", "cpu", "paper")


class Experiment:
    """A paper result we reproduce.

    Subclasses set the class attributes and implement `presets`, `run` and `report`:
      - `presets()` returns {"smoke": cfg, "cpu": cfg, "paper": cfg} (config dataclass instances);
      - `run(cfg, ctx)` trains/evaluates and returns tidy rows (see `repro.results.ROW_FIELDS`);
      - `report(df, out_dir)` turns the collected rows into `table.md|csv` and figures.
    """

    name: ClassVar[str] = ""
    paper_ref: ClassVar[str] = ""  # figure/table in the thesis or paper
    claim: ClassVar[str] = ""  # the paper's claim, one sentence
    preset_costs: ClassVar[dict[str, str]] = {}  # human-readable cost of each preset

    def presets(self) -> dict[str, Any]:
        raise NotImplementedError

    def config(self, preset: str) -> Any:
        presets = self.presets()
        if preset not in presets:
            raise UserError(f"experiment '{self.name}' has no preset '{preset}'; choose one of {list(presets)}.")
        return presets[preset]

    def variant(self, cfg: Any, overrides: list[str] | None) -> str:
        """The run directory's variant name: the overrides' slug (evaluations name their model)."""
        from repro.runtime import variant_name

        return variant_name(overrides)

    def check(self, cfg: Any) -> None:
        """The experiment's own constraints (data paths, shapes that must divide), checked before
        anything is written, after the generic range checks of `repro.config.validate`. Raise UserError."""

    def memory_estimate(self, cfg: Any) -> int:
        """A lower bound on the bytes one training step needs (0: no estimate), compared with the
        machine's (or GPU's) memory before anything is allocated, so an absurd batch is refused at once
        instead of after minutes of swapping. Count only tensors that must exist whatever the kernels."""
        return 0

    def run(self, cfg: Any, ctx: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    def report(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        raise NotImplementedError


_REGISTRY: dict[str, Experiment] = {}
_DISCOVERED = False


def register(cls: type[Experiment]) -> type[Experiment]:
    """Class decorator: register one instance under `cls.name`."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"experiment name {cls.name!r} is empty or registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    import repro.experiments as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{mod.name}")
    for evaluation in ("ruler", "icl", "harness"):  # evaluations are registered runnables too
        importlib.import_module(f"repro.eval.{evaluation}")
    _DISCOVERED = True


def names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get(name: str) -> Experiment:
    _discover()
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UserError(f"unknown experiment '{name}'.{hint} `repro list` shows them all.")


def each() -> list[Experiment]:
    return [get(n) for n in names()]
