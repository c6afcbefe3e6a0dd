"""The model registry: the one place that turns a family name and a size into a language model.

Each model file registers its family at import time (importing `repro.models`, or any module under
it, imports them all):

    register_model("gpt2", GPTConfig, GPT, variants={"debug": {}, "paper": {...}}, label="GPT-2")

A variant is a named set of config fields on top of the config dataclass's defaults, which are the
small `debug` size; the paper sizes are variants by name (as torchtitan's flavours), so nothing
builds an 8B model by accident. Experiments, benchmarks and evaluations build models only here:

    build_model("mosaic", n_layer=4, n_embd=128, vocab_size=4096)    # debug variant + overrides
    model_config("mosaic_v2", "large")                               # the config alone

`overrides` are config field names (nanoGPT style). A family may also declare aliases, one name
that sets several fields (`dropout` for Memory Mosaics v1 sets its attention and residual dropouts),
so the same shape overrides build every family. Unknown families, variants or fields raise UserError.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn as nn

from repro.config import from_dict
from repro.errors import UserError
from repro.models.lm import CONFIG_FILE, WEIGHTS_FILE, LanguageModel, check_safetensors

DEFAULT_VARIANT = "debug"


@dataclass(frozen=True)
class ModelFamily:
    """What the registry knows about one family."""

    name: str
    config_class: type
    model_class: type[nn.Module]  # a LanguageModel for the language-model families
    variants: dict[str, dict[str, Any]]
    label: str  # how reports and figures name the family
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)


_FAMILIES: dict[str, ModelFamily] = {}


def register_model(
    name: str,
    config_class: type,
    model_class: type[nn.Module],
    variants: dict[str, dict[str, Any]],
    *,
    label: str | None = None,
    aliases: dict[str, tuple[str, ...]] | None = None,
) -> ModelFamily:
    """Register a family: its config dataclass, its model class (a LanguageModel for a language model),
    its named variants (which must include `debug`), a display label, and optional override aliases.

    The model class learns its family name (written into every checkpoint's config.json) and its
    config class from here."""
    if name in _FAMILIES and _FAMILIES[name].model_class is not model_class:
        raise ValueError(f"model family {name!r} is registered twice")
    if DEFAULT_VARIANT not in variants:
        raise ValueError(f"model family {name!r} needs a {DEFAULT_VARIANT!r} variant")
    fields = {f.name for f in dataclasses.fields(config_class)}
    for variant, values in variants.items():
        unknown = set(values) - fields
        if unknown:
            raise ValueError(f"variant {name}/{variant} sets unknown fields {sorted(unknown)}")
    model_class.family = name
    model_class.config_class = config_class
    entry = ModelFamily(name, config_class, model_class, dict(variants), label or name, dict(aliases or {}))
    _FAMILIES[name] = entry
    return entry


def families() -> list[str]:
    """The registered family names, sorted."""
    return sorted(_FAMILIES)


def language_models() -> list[str]:
    """The families that are language models (the LanguageModel interface: checkpoints, decoding)."""
    return sorted(n for n, f in _FAMILIES.items() if issubclass(f.model_class, LanguageModel))


def family(name: str) -> ModelFamily:
    """The registry entry of `name`, or a UserError that lists the families (and the closest one)."""
    if name not in _FAMILIES:
        close = difflib.get_close_matches(name, _FAMILIES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown model family '{name}'; choose one of {', '.join(families())}.{hint}")
    return _FAMILIES[name]


def variants(name: str) -> list[str]:
    """The named sizes of a family: `debug` first, then the paper sizes."""
    names = list(family(name).variants)
    return [DEFAULT_VARIANT] + sorted(n for n in names if n != DEFAULT_VARIANT)


def label(name: str) -> str:
    """The family's name in reports and figures (e.g. "GPT-2")."""
    return family(name).label


def model_config(name: str, variant: str = DEFAULT_VARIANT, **overrides: Any) -> Any:
    """The config dataclass of `name` at `variant`, with `overrides` (field names or aliases)."""
    entry = family(name)
    if variant not in entry.variants:
        raise UserError(f"model family '{name}' has no variant '{variant}'; choose one of {', '.join(variants(name))}.")
    fields = {f.name for f in dataclasses.fields(entry.config_class)}
    values = dict(entry.variants[variant])
    for key, value in overrides.items():
        targets = entry.aliases.get(key, (key,))
        unknown = [t for t in targets if t not in fields]
        if unknown:
            known = ", ".join(sorted(fields | set(entry.aliases)))
            raise UserError(f"model family '{name}' has no config field '{key}'; known fields: {known}.")
        values.update(dict.fromkeys(targets, value))
    return entry.config_class(**values)


def build_model(name: str, variant: str = DEFAULT_VARIANT, **overrides: Any) -> nn.Module:
    """A freshly initialised model of family `name` at `variant`, with config `overrides`.

    Initialisation draws from torch's global generator: seed before calling for a reproducible
    model. Build under `torch.device("meta")` to count the parameters of a paper size for free."""
    return family(name).model_class(model_config(name, variant, **overrides))


def load(directory: str | os.PathLike, device: str | torch.device = "cpu", expect: type | None = None) -> LanguageModel:
    """Rebuild the language model saved in `directory` (`LanguageModel.save`), whatever its family, in
    eval mode; `expect`: refuse a checkpoint of another class. Damage is one sentence (UserError)."""
    path = Path(directory)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise UserError(
            f"{path} is not a model checkpoint (it needs {CONFIG_FILE} and {WEIGHTS_FILE}); "
            "pass the directory a run saved its model into."
        )
    try:
        data = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{config_path} is not valid JSON ({e}); the checkpoint is damaged, save it again.") from None
    if not isinstance(data, dict):
        raise UserError(f"{config_path} does not hold a model config (a JSON object); save the checkpoint again.")
    family = data.pop("family", None)
    if family not in language_models():
        raise UserError(
            f"checkpoint {path} has model family {family!r}, which is not one of "
            f"{', '.join(language_models())}; it was written by another version of repro."
        )
    model_cls = _FAMILIES[family].model_class
    if expect is not None and not issubclass(model_cls, expect):
        raise UserError(f"checkpoint {path} holds a {family} model, not a {expect.__name__}.")
    check_safetensors(weights_path)
    try:
        model = model_cls(from_dict(model_cls.config_class, data))
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise UserError(f"{config_path} is not a valid {family} config ({e}); save the checkpoint again.") from None
    try:
        safetensors.torch.load_model(model, str(weights_path), device=str(device))
    except (RuntimeError, OSError, ValueError) as e:  # shapes or names that do not match config.json
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{weights_path} does not match {config_path} ({first}); the checkpoint is damaged or mixed up."
        ) from None
    return model.to(device).eval()
