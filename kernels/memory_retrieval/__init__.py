"""memory_retrieval: causal softmax retrieval from key/value pairs (see kernels/__init__.py)."""

from repro.kernels.memory_retrieval import reference, torch_sdpa  # noqa: F401  (register backends)
