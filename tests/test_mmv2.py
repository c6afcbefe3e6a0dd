"""What is specific to Memory Mosaics v2 and its Llama baseline: the paper's size table, equal sizes
at our shapes, causality in training mode with a sampled m, the short-term cache pruning, the
chunked no-grad path, the gated scan against a naive loop, the Table 6 init, the long-term-memory
switch, and the experiment's smoke run on generated text. The interface every family shares
(causality, cached decoding, checkpoints, the kernel dispatch) is tests/test_lm_contract.py."""

import math
import random

import pytest
import torch

from repro.errors import UserError
from repro.models import registry
from repro.models.lm import LanguageModel
from repro.models.mosaic_v2 import gated_leaky_scan, visible_pairs
from repro.models.registry import load as load_checkpoint

V = 61


@pytest.fixture(autouse=True)
def _one_thread():
    """Tensors here are tiny: one thread avoids OpenMP spin-waits when the 2 cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(family: str, **kw) -> LanguageModel:
    """The debug sizes (v2: window 8, m ~ U[3, 6], 16-query chunks) at a narrower width."""
    torch.manual_seed(0)
    return registry.build_model(
        family, **{"n_layer": 2, "n_head": 4, "n_embd": 32, "vocab_size": V, "ffn_size": 48, **kw}
    ).eval()


def _tokens(B=2, T=40, seed=1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ---- sizes -----------------------------------------------------------------------------------------


def test_paper_size_table_matches_section_4_2():
    """Large configs on the meta device: 8.8B / 16.7 GFLOPs (transformer), 9.9B / 18.9 (MM v2),
    8.3B / 15.6 (MM v2 without long-term memory) at context 256."""
    from repro.experiments.mmv2_pretrain import paper_models, size_table

    models = paper_models()
    llama, mm, mm_short = models.values()
    got = [(m.num_params() / 1e9, m.flops_per_token(256) / 1e9) for m in (llama, mm, mm_short)]
    for (params, gflops), (p_paper, f_paper) in zip(got, [(8.8, 16.7), (9.9, 18.9), (8.3, 15.6)], strict=True):
        assert round(params, 1) == p_paper and round(gflops, 1) == f_paper
    # the formula: untied 128256 x 4096 embedding and head; per layer 4d^2 + 3dd' (+2 RMSNorm gains),
    # and for the mosaic two memories of (W_phi, W_psi, W_g, W_lambda, 5 scalars per head), W_o from 2d to d
    Vp, d, H, f, L = 128256, 4096, 32, 14336, 32
    assert llama.num_params() == 2 * Vp * d + L * (4 * d * d + 3 * d * f + 2 * d) + d
    assert mm.num_params() == 2 * Vp * d + L * (2 * (2 * d * d + 2 * d * H + 5 * H) + 2 * d * d + 3 * d * f + 2 * d) + d
    assert all(r["verdict"] == "matches" for r in size_table(models=models))


def test_cpu_shapes_have_equal_parameters():
    from repro.models.pairing import ShapeV2, build_pair_model

    shape = ShapeV2()
    llama, mm = (build_pair_model(f, shape, 4096, 128) for f in ("llama", "mosaic_v2"))
    assert abs(mm.num_params() / llama.num_params() - 1) < 0.005
    assert mm.config.ffn_size < shape.ffn_size  # the second memory is paid for by a narrower SwiGLU


# ---- the v2 model -------------------------------------------------------------------------------------


def test_mosaic_is_causal_in_training_mode_with_a_sampled_m():
    model = _tiny("mosaic_v2", dropout=0.2).train()
    idx = _tokens()
    torch.manual_seed(5)
    base = model(idx)
    changed = idx.clone()
    changed[:, 20] = (changed[:, 20] + 1) % V
    torch.manual_seed(5)
    assert torch.allclose(model(changed)[:, :20], base[:, :20], atol=1e-6, rtol=0)
    model.loss(idx, _tokens(seed=9)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        # Table 6's alpha_psi = e^min(|theta|, 15) with theta = 0: d|theta|/dtheta is 0 there, so the
        # value scale keeps its init (as it would in any autograd implementation of the formula)
        assert (p.grad.abs().sum() == 0) == name.endswith("values.scale"), name


def test_short_term_cache_holds_only_what_a_future_query_can_see():
    """(Cached decoding = the full forward is the contract test's; this is the pruning.)"""
    model = _tiny("mosaic_v2")
    idx = _tokens(T=60)
    cache = model.new_cache(2)
    model(idx[:, :7], cache)
    for t in range(7, 30):
        model(idx[:, t : t + 1], cache)
    model(idx[:, 30:], cache)
    short = cache.layers[0].short
    assert short.keys.length == 8 - 1 and short.start == 60 - 8 + 1
    assert short.values.view().shape[2] == 8 - 2  # pair 59 waits for token 60
    assert cache.layers[0].long.keys.length == 60


def test_long_no_grad_input_takes_the_chunked_path_and_agrees_with_the_kernel():
    model = _tiny("mosaic_v2")
    idx = _tokens(T=70)  # > query_chunk = 16
    with torch.no_grad():
        chunked = model(idx)
    kernel = model(idx)  # gradients enabled: the kernel dispatch
    assert torch.allclose(chunked, kernel, atol=1e-5, rtol=0)


# ---- the v2 pieces ---------------------------------------------------------------------------------


def _naive_scan(x, g, lam, state=None):
    y = torch.zeros_like(x[:, :, 0]) if state is None else state
    out = []
    for t in range(x.shape[2]):
        y = g[:, :, t, None] * x[:, :, t] + lam[:, :, t, None] * y
        out.append(y)
    return torch.stack(out, dim=2)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_gated_scan_equals_the_sequential_recurrence(backend):
    gen = torch.Generator().manual_seed(4)
    B, H, T, D = 2, 3, 50, 4
    x = torch.randn(B, H, T, D, generator=gen, dtype=torch.float64)
    g = torch.exp(torch.randn(B, H, T, generator=gen, dtype=torch.float64))
    lam = torch.exp(-3 * torch.rand(B, H, T, generator=gen, dtype=torch.float64))
    lam[0, 0, 10] = 0.0  # a full reset must not produce NaN
    state = torch.randn(B, H, D, generator=gen, dtype=torch.float64)
    for s in (None, state):
        leaves = [t.clone().requires_grad_(True) for t in (x, g, lam)]
        y, last = gated_leaky_scan(*leaves, s, backend=backend)
        refs = [t.clone().requires_grad_(True) for t in (x, g, lam)]
        ref = _naive_scan(*refs, s)
        assert torch.allclose(y, ref, atol=1e-10) and torch.equal(last, y[:, :, -1])
        w = torch.randn_like(y)
        ours = torch.autograd.grad((y * w).sum(), leaves[:2])  # lam = 0 has an infinite log: skip its grad
        theirs = torch.autograd.grad((ref * w).sum(), refs[:2])
        assert all(torch.allclose(a, b, atol=1e-8) for a, b in zip(ours, theirs, strict=True))


def test_table_6_initialisation():
    torch.manual_seed(0)
    d, L, H, f = 256, 3, 4, 512
    model = registry.build_model("mosaic_v2", n_layer=L, n_head=H, n_embd=d, vocab_size=500, ffn_size=f)
    mem = model.blocks[0].short
    beta = mem.bandwidth(torch.tensor([0, 1, 8, 27]))[0]  # (H, 4)
    e = math.exp(1.5)
    assert torch.allclose(beta[0], torch.tensor([2 * e, 2 * e, e * 2 + e, e * 3 + e]), rtol=1e-5)  # n=0 read as 1
    assert torch.allclose(mem.values.scale.exp(), torch.ones(H)) and mem.values.mix.min() >= 0
    assert mem.values.mix.max() <= 1
    for layer in (0, 2):
        block = model.blocks[layer]
        sigma = 1 / math.sqrt(2 * d * (layer + 1))
        for w in (block.long.keys.w_phi.weight, block.short.values.w_psi.weight, block.wo.weight, block.pmem.w1.weight):
            assert abs(w.std() / sigma - 1) < 0.1 and w.abs().max() <= 3 * sigma + 1e-6
        w2 = block.pmem.w2.weight
        assert abs(w2.std() * math.sqrt(2 * f * (layer + 1)) - 1) < 0.1
    for w in (model.wte.weight, model.lm_head.weight):
        assert abs(w.std() * math.sqrt(2 * d) - 1) < 0.1
    assert model.lm_head.weight is not model.wte.weight


def test_visible_pairs_and_sampled_m():
    t = torch.arange(6)
    assert visible_pairs(t, 3, 1).tolist() == [0, 1, 2, 2, 2, 2]  # pairs t-2..t-1
    assert visible_pairs(t, None, 2).tolist() == [0, 0, 1, 2, 3, 4]  # pairs 0..t-2
    model = _tiny("mosaic_v2")
    assert model.long_skip() == 3
    model.train()
    draws = {model.long_skip() for _ in range(200)}
    assert draws == {3, 4, 5, 6}


def test_long_term_memory_switch():
    model = _tiny("mosaic_v2")
    idx = _tokens()
    base = model(idx)
    model.drop_long_term_memory()
    dropped = model(idx)
    # the long-term memory is empty before position m = 3, so only later positions change
    assert torch.allclose(dropped[:, :3], base[:, :3], atol=1e-6) and not torch.allclose(dropped[:, 3:], base[:, 3:])
    model.drop_long_term_memory(False)
    assert torch.equal(model(idx), base)
    with pytest.raises(UserError, match="without long-term memory"):
        _tiny("mosaic_v2", long_term=False).drop_long_term_memory()
    with pytest.raises(UserError, match="no long-term memory"):
        _tiny("llama").drop_long_term_memory()


# ---- the experiment --------------------------------------------------------------------------------


def test_smoke_run_report_and_checkpoints(tmp_path):
    from repro import registry, results, runtime

    rng = random.Random(0)
    names, things = ["Lily", "Tom", "Mia"], ["ball", "cat", "boat"]
    root = tmp_path / "corpus"
    root.mkdir()
    for name, n in (("train.txt", 300), ("valid.txt", 80)):
        lines = [f"Once, {rng.choice(names)} had a {rng.choice(things)}. It was fun. The end." for _ in range(n)]
        (root / name).write_text("\n".join(lines) + "\n")
    exp = registry.get("mmv2-pretrain")
    overrides = [f"data.path={root}", f"data.cache_dir={tmp_path / 'cache'}"]
    run_dir = runtime.launch(exp, preset="smoke", overrides=overrides, out=tmp_path / "runs")
    df = results.collect(tmp_path / "runs", "mmv2-pretrain")
    ext = df[df.metric == "extrapolation_loss"]
    assert set(ext.model) == {
        "llama-pretrain",
        "llama-finetune",
        "mosaic_v2-pretrain",
        "mosaic_v2-finetune",
        "mosaic_v2-finetune-nolong",
    }
    assert sorted(ext.slice_value.astype(int).unique()) == [32, 64, 128, 256] and ext.value.between(0.1, 10).all()
    assert {"train_tok_per_s", "decode_tok_per_s"} <= set(df[df.split == "bench"].metric)
    assert (df[df.metric == "peak_mb"].value >= 0).all()
    for name in ("llama-finetune", "mosaic_v2-pretrain"):
        model = load_checkpoint(run_dir / "checkpoints" / name)
        assert (run_dir / "checkpoints" / name / "tokenizer_meta.json").exists()  # the evaluations need it
        assert model.config.block_size == (64 if name.endswith("finetune") else 32)
    copies = df[df.metric == "copy_loss"]  # after each stage: random tokens and validation text, two copies
    assert len(copies) == 4 * 2 * 2 and set(copies.split) == {"random", "validation"}
    paths = exp.report(df, tmp_path / "report")
    assert {p.name for p in paths} >= {"table.md", "fig_loss_curves.png", "fig_extrapolation.png", "fig_copy.png"}
    text = (tmp_path / "report" / "table.md").read_text()
    assert "9.9B" in text and "In-context copy test" in text and "random tokens, after fine-tuning" in text
