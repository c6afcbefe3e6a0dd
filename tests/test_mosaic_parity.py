"""Our Memory Mosaic v1 against the paper's own code: the official `Library` model (StackAssoMem,
regular version) run on fixed weights and ids gave the logits stored in the fixture (its provenance:
../shared/fixtures/README.md). Loaded into our model under the mapping below, the logits must agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import safetensors.torch
import torch

from repro.models.mosaic import MemoryMosaic, MosaicConfig

FIXTURE = Path(__file__).parent / "fixtures" / "mosaic_v1_official_library.safetensors"

# official name (regex) -> ours; per block, "attn" is the contextual memory, "pmem" the persistent one
NAME_MAP = [
    (r"blocks\.(\d+)\.ln1\.weight", r"blocks.\1.ln_1.weight"),
    (r"blocks\.(\d+)\.ln2\.weight", r"blocks.\1.ln_2.weight"),
    (r"blocks\.(\d+)\.attn\.k_featurizer\.conv\.weight", r"blocks.\1.cmem.keys.proj.weight"),
    (r"blocks\.(\d+)\.attn\.leaky_key_beta", r"blocks.\1.cmem.keys.leak"),
    (r"blocks\.(\d+)\.attn\.kernel_beta", r"blocks.\1.cmem.keys.bandwidth"),
    (r"blocks\.(\d+)\.attn\.v_featurizer\.linear\.weight", r"blocks.\1.cmem.value_proj.weight"),
    (r"blocks\.(\d+)\.attn\.v_featurizer\.coef", r"blocks.\1.cmem.value_mix"),
    (r"blocks\.(\d+)\.attn\.value_beta", r"blocks.\1.cmem.value_scale"),
    (r"blocks\.(\d+)\.attn\.c_proj\.weight", r"blocks.\1.cmem.c_proj.weight"),
    (r"blocks\.(\d+)\.pmem\.k_featurizer\.conv\.weight", r"blocks.\1.pmem.queries.proj.weight"),
    (r"blocks\.(\d+)\.pmem\.leaky_key_beta", r"blocks.\1.pmem.queries.leak"),
    (r"blocks\.(\d+)\.pmem\.kernel_beta", r"blocks.\1.pmem.queries.bandwidth"),
    (r"blocks\.(\d+)\.pmem\.pmem\.M_k0", r"blocks.\1.pmem.table_keys"),
    (r"blocks\.(\d+)\.pmem\.pmem\.M_v0", r"blocks.\1.pmem.table_values"),
    (r"blocks\.(\d+)\.pmem\.value_beta", r"blocks.\1.pmem.value_scale"),
    (r"blocks\.(\d+)\.pmem\.c_proj\.weight", r"blocks.\1.pmem.c_proj.weight"),
    (r"emb\.weight", "wte.weight"),
    (r"head\.weight", "lm_head.weight"),
    (r"ln_out\.weight", "ln_f.weight"),
]


def official_to_ours(name: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
    for pattern, ours in NAME_MAP:
        if re.fullmatch(pattern, name):
            new = re.sub(pattern, ours, name)
            if name.endswith("conv.weight"):
                tensor = tensor.squeeze(-1)  # a kernel-1 convolution (C, C, 1) is a Linear (C, C)
            elif ".pmem.M_" in name:
                tensor = tensor.squeeze(0)  # one table: (1, H, N, D) -> (H, N, D)
            return new, tensor
    raise KeyError(f"no mapping for official parameter {name}")


@pytest.mark.parametrize("backend", ["torch", "c"])
def test_mosaic_v1_matches_official_library_logits(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU defaults: torch, and c where a compiler is found (else c is served by torch). (The
    reference backend, whose scan rounds its float32 state at every step, lands at 1.4e-5.)"""
    monkeypatch.setenv("REPRO_KERNELS", backend)
    tensors = safetensors.torch.load_file(str(FIXTURE))
    with safetensors.safe_open(str(FIXTURE), "pt") as f:
        meta = f.metadata()
    ids, expected = tensors.pop("__input_ids__"), tensors.pop("__logits__")
    assert meta["pmem_count"] == "1" and meta["skip_tokens"] == "0"  # what our model implements
    cfg = MosaicConfig(
        n_layer=int(meta["n_layer"]),
        n_head=int(meta["n_head"]),
        n_embd=int(meta["n_embd"]),
        block_size=int(meta["block_size"]),
        vocab_size=int(meta["vocab_size"]),
        pmem_size=int(meta["pmem_size"]),
        ic_dropout=0.0,
        hd_dropout=0.0,
        head_scale="inv_sqrt_width",  # the paper's choice, which the official logits include
        init="library",
    )
    model = MemoryMosaic(cfg).eval()
    ours = dict(official_to_ours(k, v) for k, v in tensors.items())
    assert torch.equal(ours["wte.weight"], ours["lm_head.weight"])  # the official head is tied too
    missing, unexpected = model.load_state_dict(ours, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max().item() < 1e-5
    # the scale matters: without it the same weights give other logits
    model.config.head_scale = "none"
    with torch.no_grad():
        assert (model(ids) - expected).abs().max().item() > 1e-2
