"""The mosaics' fast paths against their reference (`repro.models.mosaic_reference`: the papers'
formulas, one memory at a time, on the reference kernels): logits and every parameter gradient, on each
CPU backend, for v1 (with and without the 1/sqrt(d) head scale), v2 (with its long-term memory, with
it dropped, and built without it), and no-grad forwards after a parameter changes in place (the
constants kept between no-grad steps must follow)."""

from __future__ import annotations

import pytest
import torch
from test_kernels import assert_close

from repro.models.mosaic import MemoryMosaic, MosaicConfig
from repro.models.mosaic_reference import mosaic_v1_logits, mosaic_v2_logits
from repro.models.mosaic_v2 import MemoryMosaicV2, MosaicV2Config

BACKENDS = ["torch", "c"]  # c is served by torch where no compiler is found
T = 40  # crosses v2's short window (8) and long skip (3); odd pair counts
# The gradients of per-head scalars (bandwidths, decays, value mixes) are sums of B x T x D terms that
# cancel; a different float32 order (the C scan carries its state in double where the reference rounds
# at every step) moves them by up to 2e-5 relative here, the logits by under 1e-6.
GRAD_RATIO = 5e-5


def _v1(head_scale: str) -> MemoryMosaic:
    torch.manual_seed(0)
    cfg = MosaicConfig(n_layer=2, n_head=4, n_embd=32, vocab_size=64, pmem_size=24, ic_dropout=0.0, hd_dropout=0.0)
    cfg.head_scale = head_scale
    return MemoryMosaic(cfg).eval()


def _v2(long_term: bool = True, drop: bool = False) -> MemoryMosaicV2:
    torch.manual_seed(0)
    model = MemoryMosaicV2(MosaicV2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=64, long_term=long_term)).eval()
    with torch.no_grad():  # away from the init's symmetric values, so that every parameter matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if drop:
        model.drop_long_term_memory()
    return model


CASES = {
    "v1": (lambda: _v1("inv_sqrt_width"), mosaic_v1_logits),
    "v1-no-head-scale": (lambda: _v1("none"), mosaic_v1_logits),
    "v2": (lambda: _v2(), mosaic_v2_logits),
    "v2-long-dropped": (lambda: _v2(drop=True), mosaic_v2_logits),
    "v2-short-only": (lambda: _v2(long_term=False), mosaic_v2_logits),
}


def _logits_and_grads(model, forward, idx, upstream) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    logits = forward(idx)
    (logits * upstream).sum().backward()
    named = sorted((n, p) for n, p in model.named_parameters() if p.grad is not None)
    return [logits] + [p.grad.clone() for _, p in named], [n for n, _ in named]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_fast_paths_equal_the_reference(case, backend, monkeypatch):
    build, reference = CASES[case]
    model = build()
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(64, (3, T), generator=g)
    upstream = torch.randn(3, T, 64, generator=g)
    ref, names = _logits_and_grads(model, lambda i: reference(model, i), idx, upstream)
    monkeypatch.setenv("REPRO_KERNELS", backend)
    got, got_names = _logits_and_grads(model, model, idx, upstream)
    assert got_names == names  # the same parameters get gradients (a dropped memory's get none)
    for name, a, b in zip(["logits", *names], ref, got, strict=True):
        assert_close(f"{case} {backend} {name}", a, b, 1e-5 if name == "logits" else GRAD_RATIO)


@pytest.mark.parametrize("case", ["v1", "v2"])
def test_no_grad_constants_follow_a_parameter_change(case):
    """Without gradients the models keep parameter-only constants (fused weights, scaled tables,
    per-head scales) between calls: an in-place update (an optimizer step) or a load must refresh them."""
    build, reference = CASES[case]
    model = build()
    idx = torch.randint(64, (2, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model(idx)  # fills the kept constants
        for p in model.parameters():
            p.mul_(1.1)
        assert_close(f"{case} after an in-place update", reference(model, idx), model(idx), 1e-5)
        model.load_state_dict({k: v * 0.9 for k, v in model.state_dict().items()})
        assert_close(f"{case} after a load", reference(model, idx), model(idx), 1e-5)
