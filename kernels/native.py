"""Small C kernels for the CPU, built at first use with the system C compiler and called via ctypes.

Why not `torch.utils.cpp_extension`: a C file with no torch headers compiles in well under a second
(the torch headers take ~30 s), and needs neither ninja nor a matching C++ ABI. Tensors cross the
boundary as data pointers plus element strides; the Python side (each op's `c_loop.py`) checks
dtypes and devices and wraps the calls in `torch.library.custom_op`s with autograd formulas.

The library is cached under `$REPRO_KERNEL_CACHE` (default `$XDG_CACHE_HOME/repro/kernels`, else
`~/.cache/repro/kernels`), named by a hash of the source, the flags and the compiler, and written
under a temporary name then renamed, so concurrent first uses leave one complete file. `usable()` is
what the kernel dispatch asks before choosing the `c` backend automatically: a C compiler on PATH
(`$CC`, else cc/gcc/clang). Without one, auto picks the `torch` backend.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

# -O3 vectorises the inner loops over D; -fassociative-math (with its two prerequisites) lets the
# reductions over D vectorise too (only the rounding order of a sum changes). No -march=native: a
# cache directory on a shared home may be read by other CPU models.
FLAGS = ("-O3", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math")


@functools.cache
def compiler() -> str | None:
    """The C compiler the `c` backend would use, or None (looked up once per process: the dispatch
    asks on every call)."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def usable() -> bool:
    return compiler() is not None


def cache_dir() -> Path:
    if os.environ.get("REPRO_KERNEL_CACHE"):
        return Path(os.environ["REPRO_KERNEL_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "repro" / "kernels"


@functools.cache
def load(source: Path) -> ctypes.CDLL:
    """Compile `source` (once per content, flags and compiler) and load it."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("the 'c' kernel backend needs a C compiler (set CC); or set REPRO_KERNELS=torch")
    text = source.read_bytes()
    key = hashlib.sha256(text + " ".join((cc, *FLAGS, platform.machine())).encode()).hexdigest()[:16]
    out = cache_dir() / f"{source.stem}-{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            tmp_so = Path(tmp) / out.name
            done = subprocess.run([cc, *FLAGS, str(source), "-o", str(tmp_so)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(
                    f"building {source.name} with {cc} failed (set REPRO_KERNELS=torch to avoid it):\n{done.stderr}"
                )
            os.replace(tmp_so, out)  # atomic: a concurrent build leaves one complete file
    return ctypes.CDLL(str(out))
