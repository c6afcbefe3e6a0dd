"""memory_retrieval: causal softmax retrieval from key/value pairs (see kernels/__init__.py)."""

import importlib.util

from repro.kernels.memory_retrieval import c_small, reference, torch_sdpa  # noqa: F401  (register backends)

if importlib.util.find_spec("triton") is not None:  # the `gpu` extra; absent on CPU-only installs
    from repro.kernels.memory_retrieval import triton  # noqa: F401
