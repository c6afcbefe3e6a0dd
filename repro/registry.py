"""One registry of runnables: experiments, evaluations and benchmarks.

A runnable is one class in one file, registered with `@register`:

    @register
    class ThreeMoons(Experiment):              # or Evaluation, Benchmark
        name = "three-moons"                   # kebab-case, unique over all kinds
        paper_ref = "Memory Mosaics, Fig. 2"
        claim = "..."                           # the paper's claim, one sentence
        targets = {...}                         # the paper's numbers the report compares with
        preset_costs = {"smoke": "...", "cpu": "...", "paper": "..."}
        options = (Option("--ctx", "lengths", "Context lengths ..."),)   # promoted config keys
        def presets(self): ...                  # {"smoke": cfg, "cpu": cfg, "paper": cfg}
        def run(self, cfg, ctx): ...            # -> tidy rows (repro.results.ROW_FIELDS)
        def report(self, df, out_dir): ...      # -> table.md|csv, figures

Discovery is automatic: every public module of `repro.experiments` (the top-level `experiments/`),
`repro.evaluations` and `repro.bench` is a place for runnables, so adding one is adding its file.
`repro list`, `--help` and the generated commands read the runnables' class attributes from the source
(`scan`, no import of torch or of the modules), which keeps the CLI's start-up fast; `get(name)`
imports the one module that defines `name`. A test holds the scanned metadata equal to the imported.

The run directory's variant name (`variant_name`) lives here too: a runnable owns how its runs are named.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import importlib
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from repro.errors import UserError

PRESETS = ("smoke", "cpu", "paper")
KINDS = ("experiment", "evaluation", "benchmark")
# Where each kind's runnables live (a package; each public module in it is scanned).
PACKAGES = {"experiment": "repro.experiments", "evaluation": "repro.evaluations", "benchmark": "repro.bench"}


@dataclass(frozen=True)
class Option:
    """A config key promoted to its own command-line flag (`--ctx 4k` sets `lengths`).

    `parse` turns the flag's text into the value (default: the config field's own type, as `--set`);
    `is_flag` makes it a switch that sets the key to true. flag, key, help and is_flag must be literals
    in the class body: the CLI reads them from the source without importing the module."""

    flag: str
    key: str
    help: str
    parse: Callable[[str], Any] | None = None
    is_flag: bool = False


def variant_name(overrides: list[str] | None) -> str:
    """`default`, or a readable slug of the overrides plus a short hash (stable for the same set)."""
    if not overrides:
        return "default"
    canon = sorted(overrides)
    slug = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", "+".join(canon))[:60]
    digest = hashlib.sha1("\n".join(canon).encode()).hexdigest()[:6]
    return f"{slug}-{digest}"


class Runnable:
    """What every experiment, evaluation and benchmark declares and implements (see the module docstring)."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    paper_ref: ClassVar[str] = ""  # figure/table in the thesis or paper
    claim: ClassVar[str] = ""  # the paper's claim, one sentence
    targets: ClassVar[dict[str, Any]] = {}  # the paper's numbers, as the report uses them
    preset_costs: ClassVar[dict[str, str]] = {}  # human-readable cost of each preset, measured
    options: ClassVar[tuple[Option, ...]] = ()  # promoted config keys (evaluations, benchmarks)

    def presets(self) -> dict[str, Any]:
        raise NotImplementedError

    def config(self, preset: str) -> Any:
        presets = self.presets()
        if preset not in presets:
            raise UserError(f"'{self.name}' has no preset '{preset}'; choose one of {', '.join(presets)}.")
        return presets[preset]

    def variant(self, cfg: Any, overrides: list[str] | None) -> str:
        """The run directory's variant: `overrides` are the `--set` texts plus `key=value` of each
        promoted option given (evaluations name their model instead)."""
        return variant_name(overrides)

    def resolve(self, cfg: Any, seed: int) -> Any:
        """The config as the run records it, once the seed is known (default: unchanged)."""
        return cfg

    def check(self, cfg: Any) -> None:
        """The runnable's own constraints (data paths, shapes that must divide), checked before
        anything is written, after the generic range checks of `repro.config.validate`. Raise UserError."""

    def memory_estimate(self, cfg: Any) -> int:
        """A lower bound on the bytes one training step needs (0: no estimate), compared with the
        machine's (or GPU's) memory before anything is allocated, so an absurd batch is refused at once
        instead of after minutes of swapping. Count only tensors that must exist whatever the kernels."""
        return 0

    def plan(self, cfg: Any) -> Any | None:
        """The models and stages `repro plan` costs (a `repro.plan.PlanSpec`), or None: not plannable."""
        return None

    def run(self, cfg: Any, ctx: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    def report(self, df: Any, out_dir: Path) -> list[Path]:
        raise NotImplementedError


class Experiment(Runnable):
    """A paper result we reproduce: `repro run NAME`."""

    kind = "experiment"


class Evaluation(Runnable):
    """An evaluation of any model: `repro eval NAME --model M` (its config has a `model` field)."""

    kind = "evaluation"


class Benchmark(Runnable):
    """A measurement of speed or cost, as ratios against a baseline in the same run: `repro bench NAME`.

    Most benchmarks measure one table: they implement `measure(cfg) -> table` (a list of dicts) and
    `write(table, cfg, machine, out_dir)`; the rows store the table with its config and the machine's
    state (`repro.results.table_rows`), and the report rebuilds both from the run directory."""

    kind = "benchmark"

    def measure(self, cfg: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    def write(self, table: list[dict[str, Any]], cfg: Any, machine: dict[str, Any], out_dir: Path) -> list[Path]:
        raise NotImplementedError

    def run(self, cfg: Any, ctx: Any) -> list[dict[str, Any]]:
        from repro import results

        return results.table_rows(ctx, self.measure(cfg), cfg)

    def report(self, df: Any, out_dir: Path) -> list[Path]:
        from repro import results
        from repro.config import from_dict

        table, machine, cfg = results.table_from_rows(df)
        return self.write(table, from_dict(type(self.config("cpu")), cfg), machine, out_dir)


def command_name(kind: str, name: str) -> str:
    """The word after `repro run|eval|bench`: the name, without `bench-` for a benchmark."""
    return name.removeprefix("bench-") if kind == "benchmark" else name


_REGISTRY: dict[str, Runnable] = {}


def register(cls: type[Runnable]) -> type[Runnable]:
    """Class decorator: register one instance under `cls.name`."""
    if not cls.name or cls.kind not in KINDS:
        raise ValueError(f"runnable {cls.__name__}: set name and subclass Experiment, Evaluation or Benchmark")
    if cls.name in _REGISTRY and type(_REGISTRY[cls.name]) is not cls:
        raise ValueError(f"runnable name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


# ---- what the CLI knows without importing: the runnables' metadata, read from their source ----------


@dataclass(frozen=True)
class Entry:
    """One runnable as its source declares it."""

    name: str
    kind: str
    module: str
    paper_ref: str = ""
    claim: str = ""
    preset_costs: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, str, str, bool], ...] = ()  # (flag, key, help, is_flag)

    @property
    def command(self) -> str:
        return command_name(self.kind, self.name)


_BASES = {"Experiment": "experiment", "Evaluation": "evaluation", "Benchmark": "benchmark"}


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError as e:
        raise ValueError(f"line {node.lineno}: runnable metadata must be a literal ({e})") from None


def _option(call: ast.AST) -> tuple[str, str, str, bool]:
    if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Option"):
        raise ValueError(f"line {call.lineno}: `options` must be a tuple of Option(...) calls")
    fields = ["flag", "key", "help"]
    values = {fields[i]: _literal(a) for i, a in enumerate(call.args[:3])}
    values |= {k.arg: _literal(k.value) for k in call.keywords if k.arg in (*fields, "is_flag")}
    return values["flag"], values["key"], values["help"], bool(values.get("is_flag", False))


def _entries_of(path: Path, module: str) -> list[Entry]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        if not any(getattr(d, "id", None) == "register" for d in node.decorator_list):
            continue
        kind = next((_BASES[b.id] for b in node.bases if getattr(b, "id", None) in _BASES), None)
        attrs: dict[str, Any] = {}
        for stmt in node.body:
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                target = stmt.targets[0] if isinstance(stmt, ast.Assign) else stmt.target
                key = getattr(target, "id", None)
                if key in ("name", "paper_ref", "claim", "preset_costs"):
                    attrs[key] = _literal(stmt.value)
                elif key == "options":
                    attrs[key] = tuple(_option(e) for e in getattr(stmt.value, "elts", []))
        if kind is None or "name" not in attrs:
            raise ValueError(f"{path}: class {node.name} is registered without a kind base class or a literal name")
        found.append(
            Entry(
                attrs["name"],
                kind,
                module,
                attrs.get("paper_ref", ""),
                attrs.get("claim", ""),
                tuple(attrs.get("preset_costs", {}).items()),
                attrs.get("options", ()),
            )
        )
    return found


@cache
def scan() -> dict[str, Entry]:
    """Every runnable, by name, from the source files of the runnable packages (nothing imported but
    the packages' own `__init__`)."""
    entries: dict[str, Entry] = {}
    for package in PACKAGES.values():
        spec = importlib.util.find_spec(package)
        for folder in spec.submodule_search_locations or []:
            for path in sorted(Path(folder).glob("*.py")):
                if path.stem.startswith("_"):
                    continue
                for entry in _entries_of(path, f"{package}.{path.stem}"):
                    if entry.name in entries:
                        raise ValueError(f"runnable name {entry.name!r} is declared twice ({entry.module})")
                    entries[entry.name] = entry
    return entries


def _entries() -> dict[str, Entry]:
    """The scanned runnables, and any registered in this process from elsewhere (a plugin, a test)."""
    extra = {
        name: Entry(
            name,
            r.kind,
            type(r).__module__,
            r.paper_ref,
            r.claim,
            tuple(r.preset_costs.items()),
            tuple((o.flag, o.key, o.help, o.is_flag) for o in r.options),
        )  # fmt: skip
        for name, r in _REGISTRY.items()
        if name not in scan()
    }
    return scan() | extra


def names(kind: str | None = None) -> list[str]:
    return sorted(n for n, e in _entries().items() if kind is None or e.kind == kind)


def entry(name: str, kind: str | None = None) -> Entry:
    """The entry of `name`, or one sentence: unknown (with the closest name), or another kind."""
    entries = _entries()
    if name not in entries:
        close = difflib.get_close_matches(name, list(entries), n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown name '{name}'.{hint} `repro list` shows them all.")
    found = entries[name]
    if kind is not None and found.kind != kind:
        verb = {"experiment": "run", "evaluation": "eval", "benchmark": "bench"}[found.kind]
        extra = " --model MODEL" if found.kind == "evaluation" else ""
        raise UserError(
            f"'{name}' is {'an' if found.kind[0] in 'ae' else 'a'} {found.kind}: `repro {verb} {found.command}{extra}`."
        )
    return found


def get(name: str, kind: str | None = None) -> Runnable:
    """The registered runnable `name` (importing the one module that declares it)."""
    found = entry(name, kind)
    if name not in _REGISTRY:
        importlib.import_module(found.module)
    return _REGISTRY[name]


def each(kind: str | None = None) -> list[Runnable]:
    return [get(n) for n in names(kind)]


def config_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every settable key of a (nested) config dataclass, dotted (for messages and `repro list NAME`)."""
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += config_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys
