"""The `c` backends (small C loops built at first use) against the reference, and the fallback to the
torch path when there is no C compiler or the build fails (a fresh machine without a compiler runs
everything, only slower). The leaky scan's C loop is also covered in test_kernels.py beside the other
backends; here: memory retrieval for small heads (the three-moons memory), the dispatch's choice, and
what happens without a working compiler."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from test_kernels import MASKS, OFFSETS, RATIO, _offset_case, _retrieval_case, _scan_case, assert_close

from repro import kernels
from repro.kernels import native

needs_cc = pytest.mark.skipif(not native.usable(), reason="the c backend needs a C compiler")


def _grads(backend: str, q, k, v, do, **mask) -> list[torch.Tensor]:
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = kernels.memory_retrieval(q, k, v, backend=backend, **mask)
    (out * do).sum().backward()
    return [out, q.grad, k.grad, v.grad]


def _assert_same_grads(name: str, ref: list[torch.Tensor], got: list[torch.Tensor]) -> None:
    for part, a, b in zip(("out", "dq", "dk", "dv"), ref, got, strict=True):
        assert_close(f"{name} {part}", a, b, RATIO[torch.float32])


@needs_cc
@pytest.mark.parametrize(("D", "Dv"), [(2, 2), (6, 6), (3, 16), (16, 5)])
@pytest.mark.parametrize(("window", "skip"), MASKS)
def test_retrieval_c_small_heads(D, Dv, window, skip, nan_poison):
    """Forward and every gradient against the reference, at odd lengths, with the rows split over two
    threads (each slice one C call) and a bandwidth as large as the three-moons memory's (beta 50)."""
    torch.set_num_threads(2)
    for T in (63, 200):
        q, k, v, do = _retrieval_case(2, 3, T, D, Dv, torch.float32, seed=T)
        q = q * 25  # scores of a few hundred: most weights underflow, as in the trained three-moons memory
        mask = dict(window=window, skip=skip)
        _assert_same_grads(f"c T={T}", _grads("reference", q, k, v, do, **mask), _grads("c", q, k, v, do, **mask))
    q, k, v, _ = _retrieval_case(2, 3, skip + 1, D, Dv, torch.float32)  # only the last row sees a key
    out = kernels.memory_retrieval(q, k, v, backend="c", window=window, skip=skip)
    assert torch.all(out[:, :, :skip] == 0) and torch.equal(out[:, :, skip], v[:, :, 0])


@needs_cc
@pytest.mark.parametrize(("window", "skip", "first", "start", "chunk", "scale"), OFFSETS)
def test_retrieval_c_at_offsets_equals_the_whole_sequence(window, skip, first, start, chunk, scale, nan_poison):
    q, k, v, ref = _offset_case(window, skip, first, start, scale)
    got = kernels.memory_retrieval(
        q, k, v, window=window, skip=skip, q_start=first, k_start=start, query_chunk=chunk, scale=scale, backend="c"
    )
    assert_close("c at offsets", ref, got, 1e-5)


@needs_cc
def test_retrieval_c_gradients_after_a_cache_and_without_a_mask(nan_poison):
    g = torch.Generator().manual_seed(5)
    for window, skip, q_start, Tq, Tk in [(8, 1, 50, 20, 70), (None, None, 0, 40, 70), (None, 0, 30, 40, 70)]:
        q, k = torch.randn(1, 2, Tq, 6, generator=g), torch.randn(1, 2, Tk, 6, generator=g)
        v, do = torch.randn(1, 2, Tk, 4, generator=g), torch.randn(1, 2, Tq, 4, generator=g)
        mask = dict(window=window, skip=skip, q_start=q_start)
        ref, got = _grads("reference", q, k, v, do, **mask), _grads("c", q, k, v, do, **mask)
        _assert_same_grads(f"c (window {window}, skip {skip})", ref, got)


@needs_cc
def test_retrieval_c_custom_op_contract():
    from repro.kernels.memory_retrieval import c_small

    q, k, v, _ = _retrieval_case(1, 2, 30, 2, 2, torch.float32)
    args = (q[0].requires_grad_(), k[0].requires_grad_(), v[0].requires_grad_(), 0, 0, 1, -1, 1.0)
    torch.library.opcheck(c_small._fwd, args)


@needs_cc
def test_retrieval_c_hands_other_calls_to_torch(monkeypatch):
    """Large heads, bf16, attention dropout, single-query decoding steps and empty memories never
    reach the C loop, and still give the torch backend's answer."""
    from repro.kernels.memory_retrieval import c_small

    def refuse(*args):
        raise AssertionError("the C loop was called")

    monkeypatch.setattr(c_small, "_fwd", refuse)
    for D, dtype, Tq in [(64, torch.float32, 40), (2, torch.bfloat16, 40), (2, torch.float32, 1)]:
        q, k, v, _ = _retrieval_case(1, 2, 40, D, D, dtype)
        q = q[:, :, -Tq:]
        got = kernels.memory_retrieval(q, k, v, skip=1, q_start=40 - Tq, backend="c")
        want = kernels.memory_retrieval(q, k, v, skip=1, q_start=40 - Tq, backend="torch")
        torch.testing.assert_close(got, want)
    torch.manual_seed(0)
    q, k, v, _ = _retrieval_case(1, 2, 40, 2, 2, torch.float32)
    dropped = kernels.memory_retrieval(q, k, v, dropout_p=0.5, backend="c")
    assert torch.isfinite(dropped).all()
    empty = kernels.memory_retrieval(q, k[:, :, :0], v[:, :, :0], skip=None, backend="c")  # an empty memory: 0
    assert empty.shape == q.shape and not empty.any()


@needs_cc
@pytest.mark.parametrize("n_head", [1, 3])
def test_three_moons_memory_on_c_equals_the_reference(n_head):
    """The model the C loop was written for: a training loss and every parameter gradient, c vs the
    reference backend, on a window of the three-moons size and bandwidth."""
    from repro.models.moon_memory import MoonMemory, MoonMemoryConfig

    torch.manual_seed(n_head)
    model = MoonMemory(MoonMemoryConfig(n_head=n_head, beta=50.0))
    x = torch.randn(4, 241, 6)
    result = {}
    for backend in ("reference", "c"):
        os.environ["REPRO_KERNELS"] = backend
        try:
            model.zero_grad()
            loss = (model(x) - x[:, 1:]).clamp(-0.5, 0.5).pow(2).mean()
            loss.backward()
            result[backend] = [loss] + [p.grad.clone() for p in model.parameters()]
        finally:
            del os.environ["REPRO_KERNELS"]
    for i, (a, b) in enumerate(zip(result["reference"], result["c"], strict=True)):
        assert_close(f"three-moons {n_head} head(s), tensor {i}", a, b, 1e-5)


@needs_cc
def test_c_is_the_cpu_default_where_a_compiler_is_found(monkeypatch):
    monkeypatch.delenv("REPRO_KERNELS", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert kernels.choices() == {"leaky_scan": "c", "memory_retrieval": "c"}
    monkeypatch.setattr(native, "usable", lambda: False)
    assert kernels.choices() == {"leaky_scan": "torch", "memory_retrieval": "torch"}


# ------------------------------------------------------------------------------------------------
# without a working compiler


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """An empty kernel cache and no memory of earlier lookups, builds or failures (restored after)."""
    monkeypatch.setenv("REPRO_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setattr(native, "_FAILED", {})

    def clear():
        native.compiler.cache_clear()
        native.load.cache_clear()

    clear()
    yield
    clear()


def _every_op_on_c_equals_the_reference():
    x, gate, lam, s0, dy, _ = _scan_case(2, 3, 30, 4, torch.float32)
    ref, got = (
        kernels.leaky_scan(x, gate, lam, s0, backend="reference"),
        kernels.leaky_scan(x, gate, lam, s0, backend="c"),
    )
    for a, b in zip(ref, got, strict=True):
        assert_close("leaky_scan c -> torch", a, b, 1e-5)
    q, k, v, do = _retrieval_case(1, 2, 50, 2, 2, torch.float32)
    _assert_same_grads("retrieval c -> torch", _grads("reference", q, k, v, do), _grads("c", q, k, v, do))


def test_no_compiler_means_the_torch_path(fresh_native, monkeypatch):
    """CC names a compiler that does not exist: auto picks torch, and an explicit `c` (REPRO_KERNELS=c
    or backend="c") is served by the torch path with one warning, never an error."""
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.delenv("REPRO_KERNELS", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert native.compiler() is None and not native.usable()
    assert kernels.choices() == {"leaky_scan": "torch", "memory_retrieval": "torch"}
    with pytest.warns(RuntimeWarning, match="needs a C compiler"):
        _every_op_on_c_equals_the_reference()
    assert not (native.cache_dir()).exists()  # nothing built, nothing written


def test_a_failed_build_means_the_torch_path(fresh_native, monkeypatch, tmp_path):
    """A compiler that exists but fails (here a script that exits 1): each source is tried once, said
    once as a warning with the compiler's message, and the calls run on torch."""
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'broken-cc: cannot build' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    assert native.usable()
    with pytest.warns(RuntimeWarning, match="cannot build") as caught:
        _every_op_on_c_equals_the_reference()
        _every_op_on_c_equals_the_reference()  # a second time: no new build, no new warning
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 2  # scan.c and small.c
    from repro.kernels.leaky_scan import c_loop
    from repro.kernels.memory_retrieval import c_small

    assert set(native._FAILED) == {c_loop.SOURCE, c_small.SOURCE}


def test_a_fresh_process_without_a_compiler_trains_a_mosaic(tmp_path):
    """What a fresh clone on a machine without cc sees: no C backend chosen, no warning, a training
    step of the language mosaic and of the three-moons memory runs, and no library is written."""
    code = (
        "import warnings, torch\n"
        "warnings.filterwarnings('error', category=RuntimeWarning, module='repro')\n"
        "from repro import kernels\n"
        "from repro.models.registry import build_model\n"
        "assert set(kernels.choices().values()) == {'torch'}, kernels.choices()\n"
        "m = build_model('mosaic', n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=32)\n"
        "m(torch.randint(32, (2, 16))).sum().backward()\n"
        "moon = build_model('moon_memory', n_head=3)\n"
        "moon(torch.randn(2, 20, 6)).sum().backward()\n"
        "print('ok')\n"
    )
    env = {**os.environ, "CC": "/nonexistent/cc", "REPRO_KERNEL_CACHE": str(tmp_path / "kernels")}
    env.pop("REPRO_KERNELS", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    assert not (tmp_path / "kernels").exists()


def test_the_library_is_cached_outside_the_source_tree(fresh_native, tmp_path):
    if not native.usable():
        pytest.skip("needs a C compiler")
    from repro.kernels.memory_retrieval import c_small

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lib = native.library(c_small.SOURCE)
    assert lib is not None
    built = list((tmp_path / "kernels").glob("small-*.so"))
    assert len(built) == 1 and not list(c_small.SOURCE.parent.glob("*.so"))
