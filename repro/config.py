"""Typed experiment configs: nested dataclasses, `--set a.b=c` overrides checked against the field
types, and YAML dump/load for the run directory."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from repro.errors import UserError

_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict of a config dataclass (tuples become lists, for YAML/JSON)."""
    return _plain(dataclasses.asdict(cfg))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def dump_yaml(cfg: Any, path: Path) -> None:
    from repro.files import write_text

    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from `path`; one sentence when the file is damaged (not YAML, or not a mapping)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"{path} is not valid YAML{at}; repair or delete it (or rerun with --force).") from None
    if data is not None and not isinstance(data, dict):
        raise UserError(f"{path} does not hold a mapping of settings; repair or delete it (or rerun with --force).")
    return data or {}


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from `to_dict` output; unknown keys are an error."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise UserError(f"config for {cls.__name__} has unknown keys {sorted(unknown)}.")
    kwargs = {}
    for name, value in data.items():
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = from_dict(typ, value)
        elif get_origin(typ) is tuple and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def parse_override(text: str) -> tuple[str, str]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects key=value (for example model.n_head=3), got '{text}'.")
    return key.strip(), raw.strip()


def apply_overrides(cfg: Any, overrides: list[str] | None) -> Any:
    """Return a copy of `cfg` with each `a.b=value` applied, the value parsed as the field's type."""
    for text in overrides or []:
        key, raw = parse_override(text)
        cfg = _set(cfg, key.split("."), raw, key, lambda raw, typ, key=key: parse_value(raw, typ, key))
    return cfg


def set_option(cfg: Any, key: str, raw: Any, flag: str, parse: Callable[[str], Any] | None = None) -> Any:
    """A copy of `cfg` with the config key `key` (dotted) set from a command-line option: `raw` is the
    option's text, parsed by `parse` when the option has its own parser, else as the field's type
    (errors name the flag); a switch passes True."""

    def convert(raw: Any, typ: Any) -> Any:
        if not isinstance(raw, str):
            return raw
        if parse is not None:
            return parse(raw)
        return parse_value(raw, typ, key, label=f"{flag} {raw}")

    return _set(cfg, key.split("."), raw, key, convert)


def _set(node: Any, path: list[str], raw: Any, full_key: str, convert: Callable[[Any, Any], Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(node)}
    name = path[0]
    if name not in fields:
        prefix = full_key[: -len(".".join(path))].rstrip(".")
        where = f" under '{prefix}'" if prefix else ""
        known = ", ".join(sorted(fields))
        raise UserError(f"--set {full_key}: unknown key '{name}'{where}; known keys: {known}.")
    typ = get_type_hints(type(node))[name]
    if len(path) == 1:
        if dataclasses.is_dataclass(typ):
            raise UserError(f"--set {full_key}: '{name}' is a group; set one of its keys ({name}.KEY=VALUE).")
        return dataclasses.replace(node, **{name: convert(raw, typ)})
    child = getattr(node, name)
    if not dataclasses.is_dataclass(child):
        raise UserError(f"--set {full_key}: '{name}' is a value, not a group.")
    return dataclasses.replace(node, **{name: _set(child, path[1:], raw, full_key, convert)})


def type_name(typ: Any) -> str:
    origin = get_origin(typ)
    if typ in _TYPE_WORDS:
        return _TYPE_WORDS[typ]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(typ))
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(typ) if a is not type(None)]
        return " or ".join(type_name(a) for a in inner) + " or none"
    if origin in (tuple, list):
        return f"a comma-separated list of {type_name(get_args(typ)[0]).removeprefix('an ').removeprefix('a ')}s"
    return getattr(typ, "__name__", str(typ))


def parse_value(raw: str, typ: Any, key: str, label: str | None = None) -> Any:
    """Parse the text of a `--set` value (or of the option `label`) as `typ`, or raise one sentence
    naming key and type."""

    def fail() -> typing.NoReturn:
        raise UserError(f"{label or f'--set {key}={raw}'}: expected {type_name(typ)}.")

    origin = get_origin(typ)
    if origin in (Union, types.UnionType):
        if raw.lower() in ("none", "null", ""):
            return None
        inner = [a for a in get_args(typ) if a is not type(None)]
        for a in inner:
            try:
                return parse_value(raw, a, key, label)
            except UserError:
                continue
        fail()
    if origin is Literal:
        for a in get_args(typ):
            if str(a) == raw:
                return a
        fail()
    if origin in (tuple, list):
        item = get_args(typ)[0]
        parts = [p.strip() for p in raw.strip("[]()").split(",")] if raw.strip("[]() ") else []
        if "" in parts:  # `1,,3` or a trailing comma: say so rather than drop the gap
            raise UserError(f"--set {key}={raw}: an item of the list is empty; expected {type_name(typ)}.")
        try:
            values = [parse_value(p, item, key, label) for p in parts]
        except UserError:
            fail()
        return tuple(values) if origin is tuple else values
    if typ is bool:
        low = raw.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        fail()
    if typ is int:
        try:
            return int(raw)
        except ValueError:
            fail()
    if typ is float:
        try:
            return float(raw)
        except ValueError:
            fail()
    if typ is str:
        return raw
    fail()


# ---- range checks -------------------------------------------------------------------------------
# Every experiment config is checked by these rules before a run directory is made; an experiment's
# `check` adds its own constraints. The rules go by field name (the last part of the key; for a list,
# each element by the list's name), so a new config is covered without annotations:
#   numbers are finite and never negative; integers are positive unless the name says zero means
#   something (off, none, no warm-up), and no larger than any run can use (2^40; seeds 2^32 - 1;
#   layers 10 000); learning rates and epochs are positive; probabilities and fractions lie in [0, 1];
#   a device is auto, cpu, cuda[:N] or mps; a list whose default is non-empty must stay non-empty.
_ZERO_ALLOWED = re.compile(r"(_every|warmup_steps|warmup|seed|wa_start|_skip_min|_skip_max|num_fewshot)$")
_LOG_EVERY = "log_every"  # a logging period of 0 would divide by zero
_POSITIVE_FLOAT = re.compile(r"^(lr|lrs|(?!min_).+_lr|.*epochs|rope_theta|beta)$")
_UNIT_INTERVAL = re.compile(r"^(dropouts?|.*_fraction|label_noise|.*_flips|holdout|beta1|beta2|momentum|milestones)$")
SEED_LIMIT = 2**32  # numpy's seeds are 32-bit
INT_LIMIT = 2**40  # beyond any count a run can use (steps, samples, tokens): 10^12 steps would take years
_LAYERS = re.compile(r"^(n_layers?|.*_layers|depth)$")
LAYER_LIMIT = 10_000  # building more blocks (even on the meta device) takes hours and tens of GB
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_seed(seed: int) -> None:
    if not 0 <= seed < SEED_LIMIT:
        raise UserError(f"--seed {seed}: expected an integer from 0 to {SEED_LIMIT - 1}.")


def validate(cfg: Any, prefix: str = "") -> None:
    """Check every field of a (nested) config dataclass by the rules above; raise one UserError."""
    for f in dataclasses.fields(cfg):
        key, value = prefix + f.name, getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, key + ".")
        elif isinstance(value, (tuple, list)):
            default = _default(f)
            if not value and default:
                raise UserError(f"{key} is empty; give at least one value (the default is {show(default)}).")
            for item in value:
                _check_value(key, f.name, item)
        else:
            _check_value(key, f.name, value)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def show(value: Any) -> str:
    """A config value as `--set` would write it (lists comma-separated)."""
    return ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else str(value)


def _check_value(key: str, name: str, value: Any) -> None:
    if name == "device" and isinstance(value, str) and not _DEVICE.match(value):
        raise UserError(f"{key}={value}: expected auto, cpu, cuda, cuda:N or mps.")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{key}={value} is not a finite number; give a finite value.")
    if isinstance(value, int):
        positive = name == _LOG_EVERY or not _ZERO_ALLOWED.search(name)
        want = "a positive integer" if positive else "an integer of 0 or more"
    else:
        positive = bool(_POSITIVE_FLOAT.match(name))
        want = "a positive number" if positive else "a number of 0 or more"
    if value < 0:
        raise UserError(f"{key}={value} is negative; expected {want}.")
    if value == 0 and positive:
        raise UserError(f"{key}=0: expected {want}.")
    if isinstance(value, int):
        limit = SEED_LIMIT - 1 if name.endswith("seed") else LAYER_LIMIT if _LAYERS.match(name) else INT_LIMIT
        if value > limit:
            raise UserError(f"{key}={value} is beyond what any run can use; give at most {limit}.")
    if _UNIT_INTERVAL.match(name) and value > 1:
        raise UserError(f"{key}={value}: expected a number between 0 and 1.")


def fill_field(cfg: Any, name: str, value: Any) -> Any:
    """A copy of the (nested) config with every field called `name`, at any depth, set to `value`:
    how one command-line option (`--data-dir`) reaches each dataset config of an experiment."""
    changes = {}
    for f in dataclasses.fields(cfg):
        current = getattr(cfg, f.name)
        if f.name == name:
            changes[f.name] = value
        elif dataclasses.is_dataclass(current) and not isinstance(current, type):
            changes[f.name] = fill_field(current, name, value)
    return dataclasses.replace(cfg, **changes)
