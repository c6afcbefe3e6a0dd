"""Every kernel backend against its reference specification (the flash-linear-attention recipe).

Odd shapes (T = 63, 200, 1000; D = 60, 64), outputs and every gradient under a random upstream
gradient, fp32 and bf16 tolerance tiers scored by relative RMS error, output buffers poisoned with NaN
so a kernel that skips a row fails loudly. Triton runs under TRITON_INTERPRET=1 on CPU (set in
conftest.py) with tiny shapes; those tests skip cleanly when triton is not installed. The `gpu` tests
repeat the comparison at real sizes on CUDA.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from repro import kernels
from repro.errors import UserError
from repro.kernels import dispatch
from repro.models.mosaic import leaky_average

# relative RMS error allowed, per input dtype (fla uses 5e-3 for fp32-ish, up to 2e-2 for half precision)
RATIO = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}
RATIO_IDS = {"fp32": torch.float32, "bf16": torch.bfloat16}
MASKS = [(None, 1), (8, 1), (None, 5), (20, 3), (None, 0)]  # (window, skip): v1, v2 short-term, v2 long-term...


def assert_close(name: str, ref: torch.Tensor, got: torch.Tensor, ratio: float, atol: float = 1e-6) -> None:
    """Pass if the largest absolute error is below `atol`, else require ||ref - got|| / ||ref|| < ratio."""
    ref, got = ref.detach().double(), got.detach().double()
    assert ref.shape == got.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert not torch.isnan(got).any(), f"{name}: NaN in the result"
    err = (ref - got).abs().max().item()
    if err <= atol:
        return
    rel = ((ref - got).norm() / ref.norm().clamp_min(1e-12)).item()
    assert rel < ratio, f"{name}: relative RMS error {rel:.2e} >= {ratio:.0e} (max abs error {err:.2e})"


needs_cc = pytest.mark.skipif(not kernels.native.usable(), reason="the c backend needs a C compiler")


@pytest.fixture
def triton_ops():
    """The Triton modules of both ops, or a skip when triton is not installed (CI without `gpu`)."""
    pytest.importorskip("triton")
    from repro.kernels.leaky_scan import triton as scan
    from repro.kernels.memory_retrieval import triton as retrieval

    return retrieval, scan


# ------------------------------------------------------------------------------------------------
# memory_retrieval


def _retrieval_case(B, H, T, D, Dv, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, d, generator=g) for d in (D, D, Dv))
    q = q * 0.5 * torch.rand(B, H, T, 1, generator=g) * 4  # a per-query bandwidth folded into q (v2)
    do = torch.randn(B, H, T, Dv, generator=g)
    return [x.to(device=device, dtype=dtype) for x in (q, k, v, do)]


def _retrieval_grads(backend, q, k, v, do, window, skip):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = kernels.memory_retrieval(q, k, v, window=window, skip=skip, backend=backend)
    (out * do).sum().backward()
    return {"out": out, "dq": q.grad, "dk": k.grad, "dv": v.grad}


def _check_retrieval(backend, B, H, T, D, Dv, window, skip, dtype, device="cpu"):
    q, k, v, do = _retrieval_case(B, H, T, D, Dv, dtype, device)
    ref = _retrieval_grads("reference", q.float(), k.float(), v.float(), do.float(), window, skip)  # fp32 truth
    got = _retrieval_grads(backend, q, k, v, do, window, skip)
    ratio = RATIO[dtype]
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        ratio *= 2  # Triton 3.7's interpreter truncates fp32 -> bf16 (GPUs round to nearest): twice the error
    for name in ref:
        assert got[name].dtype == dtype, name
        assert_close(f"{backend} {name}", ref[name], got[name], ratio)
    if skip > 0:  # the first `skip` rows see nothing: exactly zero
        assert torch.all(got["out"][:, :, :skip] == 0)


TORCH_RETRIEVAL = [(63, 60, 2, w, s) for w, s in MASKS] + [(1000, 64, 1, 20, 3), (1000, 64, 1, None, 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("T", "D", "H", "window", "skip"), TORCH_RETRIEVAL)
def test_retrieval_torch_backend(T, D, H, window, skip, dtype, nan_poison):
    _check_retrieval("torch", 1, H, T, D, 32 if T > 100 else D, window, skip, dtype)


def test_retrieval_torch_backend_stays_banded(monkeypatch):
    """The windowed path never builds a T x T mask: one SDPA call over blocks of b queries, each
    against the 2b keys of its own and the previous block."""
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append((q.shape[-2], k.shape[-2], None if attn_mask is None else tuple(attn_mask.shape[-2:])))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    from repro.kernels.memory_retrieval import torch_sdpa

    T, window = 1000, 16
    q, k, v, _ = _retrieval_case(1, 1, T, 8, 8, torch.float32)
    out = torch_sdpa.memory_retrieval(q, k, v, window=window, skip=1)
    b = max(window - 1, torch_sdpa.MIN_BAND_BLOCK)
    assert calls == [(b, 2 * b, (b, 2 * b))]
    ref = kernels.memory_retrieval(q, k, v, window=window, skip=1, backend="reference")
    assert_close("banded", ref, out, 1e-5)


@pytest.mark.parametrize("backend", ["torch", pytest.param("c", marks=needs_cc)])
@pytest.mark.parametrize(("window", "skip"), [(None, 1), (None, 3), (8, 1), (20, 3)])
def test_retrieval_shifted_by_the_caller(backend, window, skip, nan_poison):
    """The mosaics pass queries skip.. and keys ..T-1-skip (q_start - k_start = skip, equal lengths),
    so the retrieval is causal once shifted: forward and gradients equal the reference's."""
    q, k, v, do = _retrieval_case(2, 3, 70, 6, 6, torch.float32)
    q, k, v, do = q[:, :, skip:], k[:, :, :-skip], v[:, :, :-skip], do[:, :, skip:]
    grads = {}
    for name in ("reference", backend):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        out = kernels.memory_retrieval(*leaves, window=window, skip=skip, q_start=skip, backend=name)
        (out * do).sum().backward()
        grads[name] = [out, *(x.grad for x in leaves)]
    for part, ref, got in zip(("out", "dq", "dk", "dv"), grads["reference"], grads[backend], strict=True):
        assert_close(f"{backend} shifted {part}", ref, got, RATIO[torch.float32])


# Queries and keys at their absolute positions (decoding after a cache, a truncated short-term cache,
# a table read without a mask): (window, skip, first query, first key, query_chunk, scale).
OFFSETS = [
    (None, 1, 0, 0, 4, 1.0),  # a training sequence in query chunks (v2's long no-grad evaluation)
    (None, 5, 0, 0, 4, 1.0),
    (6, 1, 0, 0, 4, 1.0),
    (6, 1, 9, 4, None, 1.0),  # a short-term cache that dropped the keys no query can see any more
    (None, 3, 4, 0, 4, 1.0),
    (None, 1, 36, 0, None, 1.0),  # one decoding step
    (None, 0, 20, 0, None, None),  # attention: a chunk of new tokens after a 20-token cache
    (8, 1, 36, 28, None, 1.0),
]


def _offset_case(window, skip, first, start, scale, seed=3):
    """A 37-token sequence; the queries from `first` on, the keys from `start` on, and the reference
    retrieval of the whole sequence, whose rows from `first` on are the answer."""
    g = torch.Generator().manual_seed(seed)
    B, H, T, D = 2, 3, 37, 5
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    ref = kernels.memory_retrieval(q, k, v, window=window, skip=skip, scale=scale, backend="reference")
    return q[:, :, first:], k[:, :, start:], v[:, :, start:], ref[:, :, first:]


@pytest.mark.parametrize(("window", "skip", "first", "start", "chunk", "scale"), OFFSETS)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_retrieval_at_offsets_equals_the_whole_sequence(backend, window, skip, first, start, chunk, scale, nan_poison):
    if backend == "triton":
        pytest.importorskip("triton")
    q, k, v, ref = _offset_case(window, skip, first, start, scale)
    got = kernels.memory_retrieval(
        q, k, v, window=window, skip=skip, q_start=first, k_start=start, query_chunk=chunk, scale=scale,
        backend=backend,
    )  # fmt: skip
    assert_close(f"{backend} at offsets", ref, got, 1e-5)


def test_offset_gradients_and_an_unmasked_table_on_triton(triton_ops, nan_poison):
    """Gradients of a chunk after a cache and of a table read with no mask (skip=None) match the
    reference; keys beyond a block edge (Tk = 70) and a query block past the end (Tq = 40)."""
    g = torch.Generator().manual_seed(5)
    for window, skip, q_start, Tq, Tk in [(8, 1, 50, 20, 70), (None, None, 0, 40, 70), (None, 0, 30, 40, 70)]:
        q, k, v = (
            torch.randn(1, 2, Tq, 16, generator=g),
            torch.randn(1, 2, Tk, 16, generator=g),
            torch.randn(1, 2, Tk, 8, generator=g),
        )
        do = torch.randn(1, 2, Tq, 8, generator=g)
        grads = {}
        for backend in ("reference", "triton"):
            leaves = [x.clone().requires_grad_() for x in (q, k, v)]
            out = kernels.memory_retrieval(*leaves, window=window, skip=skip, q_start=q_start, backend=backend)
            (out * do).sum().backward()
            grads[backend] = [out, *(x.grad for x in leaves)]
        for name, ref, got in zip(("out", "dq", "dk", "dv"), grads["reference"], grads["triton"], strict=True):
            assert_close(f"triton {name} (window {window}, skip {skip})", ref, got, 1e-5)


def test_an_explicit_triton_choice_refuses_attention_dropout():
    """Triton has no attention dropout: asking for it by name with dropout is an error, not a silent
    fallback (needs the `gpu` extra, which registers the Triton backend)."""
    pytest.importorskip("triton", reason="the Triton backend is registered only with the gpu extra")
    q, k, v, _ = _retrieval_case(1, 2, 30, 8, 8, torch.float32)
    with pytest.raises(UserError, match="no attention dropout"):
        kernels.memory_retrieval(q, k, v, dropout_p=0.1, backend="triton")


def test_dropout_is_served_where_it_exists(monkeypatch):
    """The automatic choice (Triton on CUDA) hands a call with dropout to the torch backend, and p = 0
    changes nothing."""
    if "triton" not in dispatch._IMPLS["memory_retrieval"]:  # registered only where triton imports
        pytest.skip("the Triton backend needs the gpu extra (without it, auto on a CPU is c or torch)")
    q, k, v, _ = _retrieval_case(1, 2, 30, 8, 8, torch.float32)
    monkeypatch.delenv("REPRO_KERNELS", raising=False)
    monkeypatch.setattr(dispatch, "_triton_usable", lambda: True)
    before = kernels.CALLS["memory_retrieval", "torch"]
    torch.manual_seed(0)
    dropped = kernels.memory_retrieval(q, k, v, dropout_p=0.5)
    assert kernels.CALLS["memory_retrieval", "torch"] == before + 1
    plain = kernels.memory_retrieval(q, k, v, backend="torch")
    assert not torch.allclose(dropped, plain) and torch.isfinite(dropped).all()
    zero = kernels.memory_retrieval(q, k, v, dropout_p=0.0, backend="reference")
    assert_close("p = 0", zero, plain, 1e-5)


# Triton under the interpreter: every mask at (63, 60); the v2 masks at (200, 64) with Dv != D; bf16.
TRITON_RETRIEVAL = [(63, 60, 60, w, s, torch.float32) for w, s in MASKS] + [
    (200, 64, 32, 16, 1, torch.float32),
    (200, 64, 64, 80, 1, torch.float32),  # a window wider than two blocks: unmasked interior blocks
    (200, 61, 64, None, 7, torch.float32),  # D = 60 + 1: the raw-key Gaussian augmentation
    (63, 60, 60, None, 1, torch.bfloat16),
    (200, 64, 32, 16, 1, torch.bfloat16),
    (63, 60, 60, 8, 1, torch.float16),
]


@pytest.mark.parametrize(
    ("T", "D", "Dv", "window", "skip", "dtype"),
    TRITON_RETRIEVAL,
    ids=[f"T{c[0]}-D{c[1]}-Dv{c[2]}-w{c[3]}-s{c[4]}-{str(c[5])[6:]}" for c in TRITON_RETRIEVAL],
)
def test_retrieval_triton_interpreted(T, D, Dv, window, skip, dtype, triton_ops, nan_poison):
    _check_retrieval("triton", 1, 1, T, D, Dv, window, skip, dtype)


def test_retrieval_triton_path_ran_and_compiles(triton_ops):
    """The triton backend launches its kernels (counted), and torch.compile traces around the op."""
    retrieval, _ = triton_ops
    q, k, v, do = _retrieval_case(1, 1, 40, 16, 16, torch.float32)
    before = dict(retrieval.LAUNCHES)
    eager = _retrieval_grads("triton", q, k, v, do, 8, 1)
    assert retrieval.LAUNCHES["fwd"] == before.get("fwd", 0) + 1
    assert retrieval.LAUNCHES["bwd"] == before.get("bwd", 0) + 1

    def step(q, k, v):
        return kernels.memory_retrieval(q, k, v, window=8, skip=1, backend="triton") * 2.0

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
    out = compiled(qq, kk, vv)
    (out * do).sum().backward()
    assert_close("compiled out", 2 * eager["out"], out, 1e-6)
    assert_close("compiled dq", 2 * eager["dq"], qq.grad, 1e-6)


def test_retrieval_custom_op_contract(triton_ops):
    """torch.library.opcheck: fake (meta) shapes, schema and autograd registration agree with the op."""
    retrieval, _ = triton_ops
    q, k, v, _ = _retrieval_case(1, 1, 20, 8, 8, torch.float32)
    torch.library.opcheck(retrieval._fwd, (q.requires_grad_(), k.requires_grad_(), v, None, 1))


# ------------------------------------------------------------------------------------------------
# leaky_scan


def _scan_case(B, H, T, D, dtype, *, v1=False, state=True, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, T, D, generator=g)
    gate = None if v1 else torch.exp(0.5 * torch.randn(B, H, T, generator=g))  # exp(W_g x_t)
    lam = torch.rand(H, generator=g) if v1 else torch.exp(-torch.randn(B, H, T, generator=g).abs())  # exp(-|W x|)
    if not v1:
        lam[..., T // 2] = 0.0  # a full reset: exact in every backend
    s0 = torch.randn(B, H, D, generator=g) if state else None
    dy, dfinal = torch.randn(B, H, T, D, generator=g), torch.randn(B, H, D, generator=g)
    to = {"device": device}
    return (
        x.to(dtype=dtype, **to),
        None if gate is None else gate.to(**to),
        lam.to(**to),
        None if s0 is None else s0.to(**to),
        dy.to(**to),
        dfinal.to(**to),
    )


def _scan_grads(backend, x, gate, lam, s0, dy, dfinal):
    x, gate, lam, s0 = (None if t is None else t.detach().clone().requires_grad_() for t in (x, gate, lam, s0))
    y, final = kernels.leaky_scan(x, gate, lam, s0, backend=backend)
    ((y * dy).sum() + (final * dfinal).sum()).backward()
    out = {"y": y, "final": final, "dx": x.grad, "dlam": lam.grad}
    if gate is not None:
        out["dg"] = gate.grad
    if s0 is not None:
        out["dstate"] = s0.grad
    return out


def _check_scan(backend, B, H, T, D, dtype, *, v1=False, state=True, device="cpu"):
    case = _scan_case(B, H, T, D, dtype, v1=v1, state=state, device=device)
    ref = _scan_grads("reference", case[0].float(), *case[1:])
    got = _scan_grads(backend, *case)
    assert got["y"].dtype == got["final"].dtype == torch.float32  # fp32 state whatever the input
    assert got["dx"].dtype == dtype
    for name in ref:
        # bf16 inputs are exact in fp32; only dx is rounded to bf16 on the way out
        ratio = RATIO[dtype] if name == "dx" else RATIO[torch.float32]
        assert_close(f"{backend} {name}", ref[name], got[name], ratio)


VARIANTS = {"v2-state": (False, True), "v2": (False, False), "v1": (True, True)}
TORCH_SCAN = [(T, D, name, dtype) for T, D in [(63, 60), (200, 64)] for name in VARIANTS for dtype in RATIO_IDS] + [
    (1000, 60, "v2-state", "fp32"),
    (1000, 60, "v1", "bf16"),
]


CPU_SCAN_BACKENDS = ["torch", pytest.param("c", marks=needs_cc)]


@pytest.mark.parametrize("backend", CPU_SCAN_BACKENDS)
@pytest.mark.parametrize(("T", "D", "variant", "dtype"), TORCH_SCAN)
def test_scan_cpu_backends(backend, T, D, variant, dtype, nan_poison):
    v1, state = VARIANTS[variant]
    dtype = RATIO_IDS[dtype]
    _check_scan(backend, 1, 2, T, D, dtype, v1=v1, state=state)


@needs_cc
@pytest.mark.parametrize("v1", [False, True], ids=["v2", "v1"])
def test_scan_c_reads_split_heads_in_place(v1, nan_poison):
    """The models hand the scan a (B, T, H, D) buffer seen as (B, H, T, D) and v1's decay as a (H,)
    vector: the C loop reads both in place (no copy), lays y out like x, and matches the reference
    in value and gradient, including T = 1 and an unused final state."""
    from repro.kernels.leaky_scan import c_loop

    for T in (1, 45):
        x, gate, lam, s0, dy, _ = _scan_case(3, 4, T, 12, torch.float32, v1=v1)
        x = x.transpose(1, 2).contiguous().transpose(1, 2)  # (B, T, H, D) memory, (B, H, T, D) view
        grads = {}
        for backend in ("reference", "c"):
            leaves = [None if t is None else t.detach().clone().requires_grad_() for t in (x, gate, lam, s0)]
            y, _ = kernels.leaky_scan(*leaves, backend=backend)
            (y * dy).sum().backward()
            grads[backend] = [y] + [t.grad for t in leaves if t is not None]
            if backend == "c":
                assert y.stride() == x.stride()
        for ref, got in zip(grads["reference"], grads["c"], strict=True):
            assert_close("c strided", ref, got, RATIO[torch.float32])
    torch.library.opcheck(c_loop._fwd, (x.requires_grad_(), None if v1 else gate, lam.view(1, -1, 1).expand(3, 4, 45)
                                        if v1 else lam, s0))  # fmt: skip


TRITON_SCAN = [
    (63, 60, False, True, torch.float32),
    (200, 64, False, False, torch.float32),
    (63, 60, True, True, torch.float32),
    (63, 64, False, True, torch.bfloat16),
]


@pytest.mark.parametrize(
    ("T", "D", "v1", "state", "dtype"),
    TRITON_SCAN,
    ids=[f"T{c[0]}-D{c[1]}-{'v1' if c[2] else 'v2'}-{'s' if c[3] else 'nos'}-{str(c[4])[6:]}" for c in TRITON_SCAN],
)
def test_scan_triton_interpreted(T, D, v1, state, dtype, triton_ops, nan_poison):
    _check_scan("triton", 1, 1, T, D, dtype, v1=v1, state=state)


def test_scan_triton_path_ran_and_compiles(triton_ops):
    _, scan = triton_ops
    x, gate, lam, s0, dy, dfinal = _scan_case(1, 1, 20, 8, torch.float32)
    before = dict(scan.LAUNCHES)
    eager = _scan_grads("triton", x, gate, lam, s0, dy, dfinal)
    assert scan.LAUNCHES["fwd"] == before.get("fwd", 0) + 1
    assert scan.LAUNCHES["bwd"] == before.get("bwd", 0) + 1
    compiled = torch.compile(lambda *a: kernels.leaky_scan(*a, backend="triton"), backend="aot_eager", fullgraph=True)
    xx = x.clone().requires_grad_()
    y, final = compiled(xx, gate, lam, s0)
    ((y * dy).sum() + (final * dfinal).sum()).backward()
    assert_close("compiled y", eager["y"], y, 1e-6)
    assert_close("compiled dx", eager["dx"], xx.grad, 1e-6)


def test_scan_custom_op_contract(triton_ops):
    _, scan = triton_ops
    x, gate, lam, s0, _, _ = _scan_case(1, 1, 12, 8, torch.float32)
    torch.library.opcheck(scan._fwd, (x.requires_grad_(), gate, lam.requires_grad_(), s0))


@pytest.mark.parametrize("backend", ["reference", "torch", pytest.param("c", marks=needs_cc)])
def test_scan_v1_is_the_leaky_average(backend):
    """v1: g = 1 and lam_h = exp(-decay_h) constant in time give mosaic.leaky_average exactly."""
    x = torch.randn(2, 3, 50, 8, dtype=torch.float64)
    decay, s0 = torch.rand(3, dtype=torch.float64), torch.randn(2, 3, 8, dtype=torch.float64)
    y, final = kernels.leaky_scan(x, None, torch.exp(-decay), s0, backend=backend)
    y_avg, final_avg = leaky_average(x, decay, s0)
    torch.testing.assert_close(y, y_avg)
    torch.testing.assert_close(final, final_avg)


def test_scan_state_carries_across_calls():
    """Scanning [a, b] equals scanning a, then b from a's final state (the decoding cache)."""
    x, gate, lam, _, _, _ = _scan_case(1, 2, 40, 8, torch.float32, state=False)
    y, final = kernels.leaky_scan(x, gate, lam, backend="torch")
    y1, s1 = kernels.leaky_scan(x[:, :, :25], gate[:, :, :25], lam[:, :, :25], backend="torch")
    y2, s2 = kernels.leaky_scan(x[:, :, 25:], gate[:, :, 25:], lam[:, :, 25:], s1, backend="torch")
    torch.testing.assert_close(torch.cat([y1, y2], dim=2), y)
    torch.testing.assert_close(s2, final)


@needs_cc
@pytest.mark.parametrize("v1", [False, True], ids=["v2", "v1"])
@pytest.mark.parametrize("state", [False, True], ids=["nostate", "state"])
def test_scan_c_steps_without_gradients(v1, state, nan_poison):
    """Without gradients the c backend takes shortcuts (no custom-op dispatch; one decoding step in
    torch ops): the same values as the reference, and never the input tensor itself."""
    for T in (1, 7):
        x, gate, lam, s0, _, _ = _scan_case(2, 3, T, 5, torch.float32, v1=v1, state=state)
        with torch.no_grad():
            ref = kernels.leaky_scan(x, gate, lam, s0, backend="reference")
            got = kernels.leaky_scan(x, gate, lam, s0, backend="c")
        for name, a, b in zip(("y", "final"), ref, got, strict=True):
            assert_close(f"c no-grad T={T} {name}", a, b, RATIO[torch.float32])
        assert got[0].data_ptr() != x.data_ptr()


def test_every_op_is_dispatched():
    assert set(kernels.choices()) == {"leaky_scan", "memory_retrieval"}
    assert all(kernels.choices()[op] in kernels.BACKENDS for op in kernels.choices())


# ------------------------------------------------------------------------------------------------
# GPU, real sizes


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize(("window", "skip"), [(None, 1), (256, 1), (None, 64)])
@pytest.mark.parametrize(("T", "D"), [(1000, 60), (4096, 64), (2047, 65)])
def test_retrieval_triton_gpu(T, D, window, skip, dtype, nan_poison):
    _check_retrieval("triton", 2, 4, T, D, D, window, skip, dtype, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("v1", "state"), [(False, True), (True, False)], ids=["v2-state", "v1"])
@pytest.mark.parametrize(("T", "D"), [(1000, 60), (4096, 64)])
def test_scan_triton_gpu(T, D, v1, state, dtype, nan_poison):
    _check_scan("triton", 2, 4, T, D, dtype, v1=v1, state=state, device="cuda")


@pytest.mark.slow
def test_triton_kernels_compile_for_h100(triton_ops):
    """The interpreter skips the compiler: compile every kernel to an sm_90 cubin (no GPU needed)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "repro.kernels.compile_check", "--quick"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr


def test_bench_rows_dry_run_on_cpu():
    """The GPU benchmark's row builders, run on CPU with the torch backends and a wall-clock timer."""
    import time

    from repro.bench import kernels as bench

    def measure(fn, reps):
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3, 0.0

    args = {"impl_names": ("torch", "reference"), "device": "cpu", "measure": measure}
    rows = bench._retrieval_rows(300, 1, 1, 16, torch.float32, (1e12, 1e11), 1, mem_limit=2**30, **args)
    rows += bench._scan_rows(300, 1, 1, 16, torch.float32, (1e12, 1e11), 1, **args)
    assert {(r.op, r.impl, r.mode) for r in rows} >= {
        ("memory_retrieval", "torch", "fwd+bwd"),
        ("leaky_scan", "reference", "fwd"),
    }
    assert all(r.ms is not None and r.frac_peak is not None for r in rows)
    table = bench.format_table(rows)
    assert table.count("\n") == len(rows) + 1
    assert not bench.verify(("torch",), "cpu", torch.float32, shapes=((100, 60),))
    assert not bench.verify(("torch",), "cpu", torch.bfloat16, shapes=((100, 60),))
