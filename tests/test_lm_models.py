"""What is specific to Memory Mosaics v1 and its GPT-2 baseline: parameter parity at the paper's
shapes, the contextual memory's strict causality, the leaky-average scan, the reference init, and
training with attention dropout. The interface every family shares is tests/test_lm_contract.py."""

import math

import pytest
import torch

from repro.models import registry
from repro.models.mosaic import MemoryMosaic, leaky_average

V = 61  # a small vocabulary, not a multiple of anything


def _tiny(**kw) -> MemoryMosaic:
    torch.manual_seed(0)
    shape = dict(n_layer=2, n_head=4, n_embd=32, block_size=64, vocab_size=V, pmem_size=24)
    return registry.build_model("mosaic", **{**shape, **kw}).eval()


def _tokens(B=2, T=30, seed=1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ---- parameter parity (reference 1.2: 45.7M vs 46.1M at 1 block, 123.6M vs 124.0M at 12) --------


@pytest.mark.parametrize(("n_layer", "mosaic_m", "gpt_m"), [(1, 45.7, 46.1), (12, 123.6, 124.0)])
def test_parameter_parity_at_paper_shapes(n_layer, mosaic_m, gpt_m):
    with torch.device("meta"):  # shapes only: nothing is allocated
        mm = registry.build_model("mosaic", "small", n_layer=n_layer)
        gpt = registry.build_model("gpt2", "small", n_layer=n_layer)
    n_mm, n_gpt = mm.num_params(), gpt.num_params()
    assert abs(n_mm - mosaic_m * 1e6) / (mosaic_m * 1e6) < 0.005
    assert abs(n_gpt - gpt_m * 1e6) / (gpt_m * 1e6) < 0.005
    assert abs(n_mm - n_gpt) / n_gpt < 0.01
    # the formula: tied embedding, 12 d^2 per block (c-mem 3d^2, p-mem 2d^2 + 2 * 3.5d * d), two
    # LayerNorm gains and 7 per-head scalars per block, the final LayerNorm gain
    Vp, d, H = 50304, 768, 12
    assert mm.config.pmem_pairs() == 2688
    assert n_mm == Vp * d + n_layer * (12 * d * d + 2 * d + 7 * H) + d
    assert n_gpt == Vp * d + 512 * d + n_layer * (12 * d * d + 2 * d) + d


# ---- the mosaic's pieces --------------------------------------------------------------------------


def test_mosaic_contextual_memory_is_strictly_causal():
    """Position t's c-mem output reads pairs j <= t-1 only, so it ignores x_t's own pair and x_{t+1};
    position 0 has an empty memory and outputs 0."""
    cmem = _tiny().blocks[0].cmem
    x = torch.randn(2, 25, 32, generator=torch.Generator().manual_seed(2))
    base = cmem(x)
    assert torch.all(base[:, 0] == 0)
    t = 11
    x2 = x.clone()
    x2[:, t + 1] += 3.0  # changes value v_t (which reads x_{t+1}) and key t+1
    out = cmem(x2)
    assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0)
    assert not torch.allclose(out[:, t + 2], base[:, t + 2])  # query t+2 does read pair t


def _naive_leaky_average(x, lam, state=None):
    """The official regular version: an explicit (T, T) matrix exp(-lambda (t - tau)), tau <= t."""
    T = x.shape[2]
    t = torch.arange(T, dtype=x.dtype)
    lag = t[:, None] - t[None, :]  # (T, T)
    w = torch.exp(-lam.view(-1, 1, 1) * lag.clamp(min=0)) * (lag >= 0)  # (H, T, T)
    y = w @ x
    if state is not None:
        y = y + torch.exp(-lam.view(-1, 1) * (t + 1))[..., None] * state[:, :, None]
    return y


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_leaky_average_scan_equals_the_naive_matrix(backend):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 150, 6, generator=g, dtype=torch.float64)
    lam = torch.tensor([0.0, 0.05, 0.5, 5.0, 50.0], dtype=torch.float64, requires_grad=True)
    state = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    for s in (None, state):
        xs = x.clone().requires_grad_(True)
        y, last = leaky_average(xs, lam, s, backend=backend)
        ref_x = x.clone().requires_grad_(True)
        ref = _naive_leaky_average(ref_x, lam, s)
        assert torch.allclose(y, ref, atol=1e-10) and torch.equal(last, y[:, :, -1])
        w = torch.randn_like(y)
        gx, glam = torch.autograd.grad((y * w).sum(), (xs, lam))
        rx, rlam = torch.autograd.grad((ref * w).sum(), (ref_x, lam))
        assert torch.allclose(gx, rx, atol=1e-9) and torch.allclose(glam, rlam, atol=1e-8)
    # float32 input: float32 math, still close to the float64 reference
    y32, _ = leaky_average(x.float(), lam.detach().float(), backend=backend)
    assert y32.dtype == torch.float32
    assert torch.allclose(y32.double(), _naive_leaky_average(x, lam.detach()), atol=1e-4)


def test_mosaic_init_follows_the_reference():
    torch.manual_seed(0)
    model = registry.build_model("mosaic", n_layer=4, n_head=8, n_embd=256, vocab_size=500, pmem_size=512)
    cmem, pmem = model.blocks[0].cmem, model.blocks[0].pmem
    d, L, H = 256, 4, 8
    lam = 10 * cmem.keys.leak.abs()
    assert torch.allclose(torch.exp(-lam[[0, -1]]), torch.tensor([math.exp(-0.5), math.exp(-5.0)]))
    assert torch.allclose(cmem.keys.beta(), torch.full((H,), math.exp(2.0)))
    assert torch.allclose(torch.exp(10 * cmem.value_scale), torch.full((H,), math.exp(-0.5)))
    assert cmem.value_mix.min() >= 0 and cmem.value_mix.max() <= 1
    assert abs(cmem.value_proj.weight.std() - 1 / math.sqrt(d)) < 0.1 / math.sqrt(d)
    assert abs(cmem.c_proj.weight.std() - 1 / math.sqrt(d * L)) < 0.1 / math.sqrt(d * L)
    assert abs(pmem.table_keys.std() - 1 / math.sqrt(d // H)) < 0.02
    assert model.lm_head.weight is model.wte.weight
    # the Library's tied matrix ends at the head Linear's N(0, 1/d), not the Embedding's N(0, 1)
    assert abs(model.wte.weight.std() - 1 / math.sqrt(d)) < 0.1 / math.sqrt(d)
    assert all(m.bias is None for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm)))


def test_mosaic_trains_with_dropout_causally_and_every_parameter_learns():
    """Training mode takes the attention-dropout path (SDPA, the kernel has no dropout): with the same
    dropout masks it is still causal, and every parameter, per-head scalars included, gets a gradient."""
    model = _tiny(ic_dropout=0.3, hd_dropout=0.1).train()
    idx = _tokens(T=24)
    torch.manual_seed(7)
    base = model(idx)
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % V
    torch.manual_seed(7)
    assert torch.allclose(model(changed)[:, :10], base[:, :10], atol=1e-6, rtol=0)
    model.loss(idx, _tokens(T=24, seed=9)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
