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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from repro.errors import UserError

if TYPE_CHECKING:
    from repro.models.lm import LanguageModel

DEFAULT_VARIANT = "debug"


@dataclass(frozen=True)
class ModelFamily:
    """What the registry knows about one family."""

    name: str
    config_class: type
    model_class: type[LanguageModel]
    variants: dict[str, dict[str, Any]]
    label: str  # how reports and figures name the family
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)


_FAMILIES: dict[str, ModelFamily] = {}


def register_model(
    name: str,
    config_class: type,
    model_class: type[LanguageModel],
    variants: dict[str, dict[str, Any]],
    *,
    label: str | None = None,
    aliases: dict[str, tuple[str, ...]] | None = None,
) -> ModelFamily:
    """Register a family: its config dataclass, its LanguageModel subclass, its named variants
    (which must include `debug`), a display label, and optional override aliases.

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


def build_model(name: str, variant: str = DEFAULT_VARIANT, **overrides: Any) -> LanguageModel:
    """A freshly initialised model of family `name` at `variant`, with config `overrides`.

    Initialisation draws from torch's global generator: seed before calling for a reproducible
    model. Build under `torch.device("meta")` to count the parameters of a paper size for free."""
    return family(name).model_class(model_config(name, variant, **overrides))
