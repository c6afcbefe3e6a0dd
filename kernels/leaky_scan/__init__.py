"""leaky_scan: the gated leaky average y_t = g_t x_t + lam_t y_{t-1} (see kernels/__init__.py)."""

import importlib.util

from repro.kernels.leaky_scan import c_loop, reference, torch_chunk  # noqa: F401  (register backends)

if importlib.util.find_spec("triton") is not None:  # the `gpu` extra; absent on CPU-only installs
    from repro.kernels.leaky_scan import triton  # noqa: F401
