"""The contract every registered language-model family keeps, and the model registry itself.

Parametrised over `registry.language_models()`: a family registered tomorrow is tested here without editing
this file. Each test builds the family's `debug` variant (small enough that a 60-token input crosses
every path: v2's window, skip and query chunks). Family-specific behaviour (a mosaic's strictly causal
memory, v2's cache pruning, inits, parameter formulas) stays in the per-family test files."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from repro.errors import UserError
from repro.models import registry
from repro.models.lm import LanguageModel, next_token_loss
from repro.models.registry import load as load_checkpoint

FAMILIES = registry.language_models()
V = 61  # a small vocabulary, not a multiple of anything
# The papers' parameter counts of the named sizes, at the precision they are published (reference
# memory-mosaics.md 1.2 and §4.2). A paper variant without a published count is only built.
PAPER_PARAMS = {
    ("gpt2", "small"): 124.0e6,
    ("mosaic", "small"): 123.6e6,
    ("llama", "large"): 8.8e9,
    ("mosaic_v2", "large"): 9.9e9,
    ("mosaic_v2", "large-no-long-term"): 8.3e9,
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tensors here are tiny: one thread avoids OpenMP spin-waits when the 2 cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(family: str, **overrides) -> LanguageModel:
    torch.manual_seed(0)
    return registry.build_model(family, vocab_size=V, block_size=64, **overrides).eval()


def _tokens(B=2, T=40, seed=1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ---- the registry ----------------------------------------------------------------------------------


def test_every_family_is_registered_with_a_debug_default():
    assert {"gpt2", "mosaic", "llama", "mosaic_v2"} <= set(FAMILIES)
    for family in FAMILIES:
        assert registry.variants(family)[0] == "debug" and len(registry.variants(family)) >= 2
        assert registry.model_config(family) == registry.family(family).config_class()  # debug = the defaults
        assert registry.label(family)


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


@pytest.mark.parametrize("family", FAMILIES)
def test_named_variants_and_their_parameter_counts(family):
    """Every variant builds on the meta device (nothing allocated, so 10B costs nothing); the paper
    sizes have the papers' parameter counts; debug stays small enough for tests."""
    for variant in registry.variants(family):
        with torch.device("meta"):
            model = registry.build_model(family, variant)
        n = model.num_params()
        assert n == sum(p.numel() for p in model.parameters()) > 0
        if variant == "debug":
            assert n < 1e6
        if (family, variant) in PAPER_PARAMS:
            paper = PAPER_PARAMS[family, variant]
            unit = 1e6 if paper < 1e9 else 1e9  # 124.0M, 9.9B: one decimal in the paper's unit
            assert round(n / unit, 1) == round(paper / unit, 1), (variant, n)


# ---- the interface ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_changing_token_t_changes_no_earlier_logit(family):
    model = _tiny(family)
    idx = _tokens(T=40)
    base = model(idx)
    for t in (0, 1, 17, 39):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % V
        out = model(changed)
        # positions < t (t-1 included: a memory whose pair t-1 read x_t early would leak here)
        assert torch.allclose(out[:, :t], base[:, :t], atol=1e-6, rtol=0)
        assert not torch.allclose(out[:, t], base[:, t])  # position t reads its own token


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decoding_equals_full_forward(family):
    model = _tiny(family)
    idx = _tokens(T=60)
    full = model(idx)
    cache = model.new_cache(2)
    steps = [model(idx[:, :7], cache)]  # prefill
    steps += [model(idx[:, t : t + 1], cache) for t in range(7, 30)]  # one token at a time
    steps += [model(idx[:, 30:51], cache), model(idx[:, 51:], cache)]  # chunks after a cache
    assert cache.length == 60
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_forked_cache_leaves_its_prefix_and_its_siblings_alone(family):
    """A prefix read once, its cache forked (shared tensors, batch-expanded, as the evaluations'
    PrefixScorer does) into two continuations run one after the other, with decoding steps long
    enough to fill the caches' spare room: each equals the full forward of its own sequence, and the
    prefix cache still continues correctly afterwards."""
    from repro.eval.scoring import _fork

    model = _tiny(family)
    idx = _tokens(T=64)  # GPT-2's block_size here
    prefix, tails = idx[:1, :20], [idx[:, 20:], (idx[:, 20:] + 3) % V]
    with torch.no_grad():
        cache = model.new_cache(1)
        model(prefix[:, :19], cache)
        model(prefix[:, 19:], cache)  # a step: the prefix's buffers now have spare room
        for tail in tails:
            fork = _fork(cache, 2)
            steps = [model(tail[:, t : t + 1], fork) for t in range(tail.shape[1])]
            full = model(torch.cat([prefix.expand(2, -1), tail], dim=1))[:, 20:]
            assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-4, rtol=0)
        again = model(idx[:1, 20:30], cache)
        assert torch.allclose(again, model(idx[:1, :30])[:, 20:], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_prefills_once_then_feeds_one_token(family):
    model = _tiny(family)
    prompt = _tokens(T=9)
    calls = []
    hook = model.register_forward_pre_hook(lambda m, args: calls.append((args[0].shape[1], args[1])))
    out = model.generate(prompt, max_new_tokens=6)
    hook.remove()
    assert [n for n, _ in calls] == [9, 1, 1, 1, 1, 1]  # the 6th token needs no further forward
    assert all(cache is calls[0][1] and cache is not None for _, cache in calls)
    # greedy decoding through the cache = greedy decoding that re-reads the whole prefix each step
    ref = prompt
    for _ in range(6):
        ref = torch.cat([ref, model(ref)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_stops_rows_at_stop_tokens_and_samples_reproducibly(family):
    model = _tiny(family)
    prompt = _tokens(B=3, T=5)
    first = model.generate(prompt, 4)[:, 5]
    out = model.generate(prompt, 4, stop_tokens=[int(first[0])])
    assert out.shape[1] <= 9 and torch.all(out[0, 5:] == first[0])  # a stopped row repeats its stop token
    a = model.generate(prompt, 5, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 5, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (3, 10)


@pytest.mark.parametrize("family", FAMILIES)
def test_context_limit_is_the_models_own(family):
    """A model with learned positions refuses inputs beyond block_size (and generation that would get
    there, before any work); one without reads past its training context."""
    model = _tiny(family)
    if model.max_context is None:
        assert model(_tokens(B=1, T=100)).shape == (1, 100, V)  # block_size is 64
        return
    assert model.max_context == 64
    with pytest.raises(UserError, match="block_size"):
        model(_tokens(B=1, T=65))
    with pytest.raises(UserError, match="64-token context"):
        model.generate(_tokens(B=1, T=60), max_new_tokens=6)
    assert model.generate(_tokens(B=1, T=60), max_new_tokens=5).shape == (1, 65)


@pytest.mark.parametrize("family", FAMILIES)
def test_losses_per_position_ignore_index_and_the_training_loss(family):
    model = _tiny(family)
    idx, targets = _tokens(T=12), _tokens(T=12, seed=5)
    targets[:, :3] = -1
    per_pos = model.loss(idx, targets, reduction="none")
    assert per_pos.shape == (2, 12) and torch.all(per_pos[:, :3] == 0)
    assert torch.allclose(model.loss(idx, targets), per_pos[:, 3:].mean())
    assert torch.equal(next_token_loss(model, (idx, targets)), model.loss(idx, targets))


# ---- checkpoints -----------------------------------------------------------------------------------


def _moved(model: LanguageModel) -> LanguageModel:
    with torch.no_grad():  # move every parameter off its init so a round trip means something
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_round_trip_from_a_fresh_directory(family, tmp_path):
    model = _moved(_tiny(family))
    model.save(tmp_path / "run" / "model")
    fresh = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "run" / "model", fresh)
    shutil.rmtree(tmp_path / "run")
    assert json.loads((fresh / "config.json").read_text())["family"] == family
    loaded = load_checkpoint(fresh)
    assert type(loaded) is registry.family(family).model_class and loaded.config == model.config
    # tied weights stay tied: the same number of distinct parameter tensors
    assert len(list(loaded.parameters())) == len(list(model.parameters()))
    idx = _tokens(T=20)
    assert torch.equal(loaded(idx), model(idx))
    assert loaded.generate(idx[:, :5], 4).shape == (2, 9)


def test_checkpoints_of_every_family_load_in_a_bare_interpreter(tmp_path):
    for family in FAMILIES:
        _tiny(family).save(tmp_path / family)
    code = "import sys; from repro.models.registry import load; print(*(type(load(p)).__name__ for p in sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, *(str(tmp_path / f) for f in FAMILIES)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [registry.family(f).model_class.__name__ for f in FAMILIES]


def test_checkpoint_loading_errors_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="not a model checkpoint"):
        load_checkpoint(tmp_path)
    gpt, mosaic = (registry.family(f).model_class for f in ("gpt2", "mosaic"))
    _tiny("gpt2").save(tmp_path)
    assert type(load_checkpoint(tmp_path, expect=gpt)) is gpt
    with pytest.raises(UserError, match=f"not a {mosaic.__name__}"):
        load_checkpoint(tmp_path, expect=mosaic)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "family": "rnn"}))
    with pytest.raises(UserError, match="family 'rnn'"):
        load_checkpoint(tmp_path)


# ---- the kernel dispatch ---------------------------------------------------------------------------


def _forbid_direct_sdpa(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("scaled_dot_product_attention called: the reference backend never calls it")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", refuse)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_attention_and_memory_call_goes_through_the_kernel_dispatch(family, monkeypatch):
    """With REPRO_KERNELS=reference no attention or memory may call SDPA (the torch backend's tool), in
    training (dropout on), in a long evaluation without gradients, and in cached decoding; and the
    outputs equal the default backend's."""
    from repro import kernels

    model = _tiny(family)
    idx = _tokens(T=60)
    with torch.no_grad():
        expected = model(idx)
    monkeypatch.setenv("REPRO_KERNELS", "reference")
    _forbid_direct_sdpa(monkeypatch)
    before = kernels.CALLS["memory_retrieval", "reference"]
    model.train()
    model.loss(idx, _tokens(T=60, seed=2)).backward()
    model.eval()
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(2)
        steps = [model(idx[:, :40], cache), model(idx[:, 40:41], cache), model(idx[:, 41:], cache)]
    assert kernels.CALLS["memory_retrieval", "reference"] > before
    assert torch.allclose(full, expected, atol=1e-4, rtol=0)
    assert torch.allclose(torch.cat(steps, dim=1), expected, atol=1e-4, rtol=0)


@pytest.mark.slow  # ~40 s interpreted; the offset cases are covered fast at kernel level (test_kernels.py)
@pytest.mark.parametrize("family", FAMILIES)
def test_the_triton_kernels_serve_every_family(family, monkeypatch):
    """The same model under REPRO_KERNELS=triton (interpreted on CPU): a full forward and cached
    decoding (a chunk after the prompt, then one token) agree with the default backend."""
    pytest.importorskip("triton")
    from repro.kernels.memory_retrieval import triton as retrieval

    model = _tiny(family)
    idx = _tokens(B=1, T=40)
    with torch.no_grad():
        expected = model(idx)
        monkeypatch.setenv("REPRO_KERNELS", "triton")
        launches = retrieval.LAUNCHES["fwd"]
        full = model(idx)
        cache = model.new_cache(1)
        steps = [model(idx[:, :30], cache), model(idx[:, 30:39], cache), model(idx[:, 39:], cache)]
    assert retrieval.LAUNCHES["fwd"] > launches
    assert torch.allclose(full, expected, atol=1e-4, rtol=0)
    assert torch.allclose(torch.cat(steps, dim=1), expected, atol=1e-4, rtol=0)
