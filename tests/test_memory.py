"""The associative memory: causality, permutation invariance, equality with softmax attention,
and every kernel backend against the reference specification."""

import pytest
import torch
import torch.nn.functional as F

from repro import kernels
from repro.kernels import dispatch
from repro.models.memory import associative_recall, recall_all


def _qkv(B=2, H=3, T=63, D=60, Dv=None, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, d, generator=g).to(dtype) for d in (D, D, Dv or D)]


@pytest.mark.parametrize("kernel", ["gaussian", "dot"])
@pytest.mark.parametrize("normalize", [True, False])
def test_strictly_causal(kernel, normalize):
    q, k, v = _qkv(T=40, D=8)
    out = associative_recall(k, k, v, 2.0, normalize=normalize, kernel=kernel)
    t = 17
    k2, v2 = k.clone(), v.clone()
    k2[:, :, t] += 5.0  # change the pair stored at t (and the query at t)
    v2[:, :, t] -= 3.0
    out2 = associative_recall(k2, k2, v2, 2.0, normalize=normalize, kernel=kernel)
    assert torch.equal(out[:, :, :t], out2[:, :, :t])  # positions < t: untouched
    assert not torch.allclose(out[:, :, t + 1 :], out2[:, :, t + 1 :])  # later ones do read pair t
    # position t reads only pairs j < t, so its own value does not reach it
    v3 = v.clone()
    v3[:, :, t] += 100.0
    out3 = associative_recall(k, k, v3, 2.0, normalize=normalize, kernel=kernel)
    assert torch.allclose(out[:, :, : t + 1], out3[:, :, : t + 1])
    assert not torch.allclose(out[:, :, t + 1], out3[:, :, t + 1])
    assert torch.all(out[:, :, 0] == 0)  # an empty memory returns zeros


def test_permutation_of_stored_pairs_changes_nothing():
    q, k, v = _qkv(T=50, D=6)
    s = 30
    perm = torch.randperm(s, generator=torch.Generator().manual_seed(1))
    k2, v2 = k.clone(), v.clone()
    k2[:, :, :s], v2[:, :, :s] = k[:, :, perm], v[:, :, perm]
    a = associative_recall(q, k, v, 3.0)
    b = associative_recall(q, k2, v2, 3.0)
    # queries t >= s see the same set {pairs 0..t-1} in a different order
    assert torch.allclose(a[:, :, s:], b[:, :, s:], atol=1e-6)
    # an unmasked table is permutation invariant everywhere
    table_k, table_v = k[0, :, :s], v[0, :, :s]  # (H, N, D)
    p = recall_all(q, table_k, table_v, 3.0)
    p2 = recall_all(q, table_k[:, perm], table_v[:, perm], 3.0)
    assert torch.allclose(p, p2, atol=1e-6)


def test_equals_softmax_attention_when_key_norms_are_fixed():
    q, k, v = _qkv(T=33, D=16)
    beta = 4.0
    ours = associative_recall(q, k, v, beta, normalize=True, kernel="gaussian")
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    mask = torch.ones(33, 33, dtype=torch.bool).tril(-1)  # strictly causal
    scores = (beta * qn @ kn.transpose(-1, -2)).masked_fill(~mask, float("-inf"))  # (B, H, T, T)
    attn = torch.softmax(scores[:, :, 1:], dim=-1) @ v  # row 0 sees nothing
    assert torch.allclose(ours[:, :, 1:], attn, atol=1e-5)


def test_raw_keys_give_the_exact_gaussian_kernel():
    q, k, v = _qkv(B=1, H=2, T=20, D=3)
    beta = 0.7
    ours = associative_recall(q, k, v, beta, normalize=False, kernel="gaussian")
    d2 = (q[..., :, None, :] - k[..., None, :, :]).pow(2).sum(-1)  # (B, H, T, T)
    logits = (-beta / 2 * d2).masked_fill(~torch.ones(20, 20, dtype=torch.bool).tril(-1), float("-inf"))
    expected = torch.softmax(logits[:, :, 1:], -1) @ v
    assert torch.allclose(ours[:, :, 1:], expected, atol=1e-5)


def test_bandwidth_shapes_per_head_and_per_query():
    q, k, v = _qkv(B=2, H=3, T=12, D=4)
    per_head = torch.tensor([1.0, 2.0, 3.0])
    out = associative_recall(q, k, v, per_head)
    for h in range(3):
        one = associative_recall(q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1], float(per_head[h]))
        assert torch.allclose(out[:, h : h + 1], one, atol=1e-6)
    per_query = torch.full((2, 3, 12), 2.0)
    assert torch.allclose(associative_recall(q, k, v, per_query), associative_recall(q, k, v, 2.0), atol=1e-6)


@pytest.mark.parametrize(("window", "skip"), [(None, 1), (None, 0), (None, 5), (8, 1), (20, 3)])
@pytest.mark.parametrize(("T", "D", "Dv"), [(63, 60, 60), (200, 64, 32)])
def test_torch_backend_matches_reference_with_gradients(window, skip, T, D, Dv):
    q, k, v = _qkv(B=1, H=2, T=T, D=D, Dv=Dv)
    q = q * 0.3
    grads = {}
    for name in ("reference", "torch"):
        qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
        out = kernels.memory_retrieval(qq, kk, vv, window=window, skip=skip, backend=name)
        out.backward(torch.ones_like(out) / out.numel() ** 0.5)
        grads[name] = (out.detach(), qq.grad, kk.grad, vv.grad)
    for a, b in zip(grads["reference"], grads["torch"], strict=True):
        assert torch.isfinite(b).all()
        assert torch.allclose(a, b, atol=2e-5, rtol=1e-4)


def test_backend_choice_explicit_env_auto(monkeypatch):
    monkeypatch.delenv("REPRO_KERNELS", raising=False)
    has_triton = "triton" in dispatch._IMPLS["memory_retrieval"]
    on_cpu_with_cc = not torch.cuda.is_available() and kernels.native.usable()  # the C loops
    expected = "triton" if has_triton and dispatch._triton_usable() else "c" if on_cpu_with_cc else "torch"
    assert kernels.backend(op="memory_retrieval") == expected
    monkeypatch.setenv("REPRO_KERNELS", "reference")
    assert kernels.backend(op="memory_retrieval") == "reference"
    assert kernels.backend("torch", op="memory_retrieval") == "torch"  # explicit beats the environment
    monkeypatch.setenv("REPRO_KERNELS", "cuda-magic")
    from repro.errors import UserError

    with pytest.raises(UserError, match="not a kernel backend"):
        kernels.backend(op="memory_retrieval")


def test_bad_window_is_refused():
    q, k, v = _qkv(T=10, D=4)
    with pytest.raises(ValueError, match="window"):
        kernels.memory_retrieval(q, k, v, window=1, skip=1)
