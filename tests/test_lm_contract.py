"""The contract every registered language-model family keeps, and the model registry itself.

Parametrised over `registry.families()`: a family added tomorrow is tested here without editing this
file. Family-specific behaviour (a mosaic's strictly causal memory, v2's windows) stays in the
per-family test files."""

import pytest

from repro.errors import UserError
from repro.models import registry

FAMILIES = registry.families()


# ---- the registry ----------------------------------------------------------------------------------


def test_every_family_is_registered_with_a_debug_default():
    assert {"gpt2", "mosaic", "llama", "mosaic_v2"} <= set(FAMILIES)
    for family in FAMILIES:
        assert registry.variants(family)[0] == "debug" and len(registry.variants(family)) >= 2
        assert registry.model_config(family) == registry.family(family).config_class()  # debug = the defaults


def test_overrides_unknown_names_and_aliases():
    cfg = registry.model_config("gpt2", "small", n_layer=1, vocab_size=97)
    assert (cfg.n_layer, cfg.n_embd, cfg.vocab_size) == (1, 768, 97)
    mosaic = registry.model_config("mosaic", dropout=0.3)  # one name for both of v1's dropouts
    assert mosaic.ic_dropout == mosaic.hd_dropout == 0.3
    with pytest.raises(UserError, match="unknown model family 'gtp2'.*Did you mean 'gpt2'"):
        registry.build_model("gtp2")
    with pytest.raises(UserError, match="no variant 'huge'"):
        registry.model_config("llama", "huge")
    with pytest.raises(UserError, match="no config field 'n_layers'"):
        registry.model_config("mosaic_v2", n_layers=3)
