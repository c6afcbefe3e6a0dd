"""Small C kernels for the CPU, built at first use with the system C compiler and called via ctypes.

Why not `torch.utils.cpp_extension`: a C file with no torch headers compiles in well under a second
(the torch headers take ~30 s), and needs neither ninja nor a matching C++ ABI. Tensors cross the
boundary as data pointers plus element strides; the Python side (each op's `c_loop.py`) checks
dtypes and devices and wraps the calls in `torch.library.custom_op`s with autograd formulas.

The library is cached under `$REPRO_KERNEL_CACHE` (default `$XDG_CACHE_HOME/repro/kernels`, else
`~/.cache/repro/kernels`), named by a hash of the source, the flags and the compiler, and written
under a temporary name then renamed, so concurrent first uses leave one complete file. `usable()` is
what the kernel dispatch asks before choosing the `c` backend automatically: a C compiler on PATH
(`$CC` when set, and then only it; else cc/gcc/clang). Without one, auto picks the `torch` backend.
The `c` backends load their library through `library()`, which returns None when there is no
compiler or the build fails (said once per process, as a warning): they then serve the call with
their torch path, so a machine without a working compiler runs everything, only slower.
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
import warnings
from pathlib import Path

# -O3 vectorises the inner loops over D; -fassociative-math (with its two prerequisites) lets the
# reductions over D vectorise too (only the rounding order of a sum changes). No -march=native: a
# cache directory on a shared home may be read by other CPU models.
FLAGS = ("-O3", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math")


@functools.cache
def compiler() -> str | None:
    """The C compiler the `c` backend would use, or None (looked up once per process: the dispatch
    asks on every call)."""
    if os.environ.get("CC"):  # the user's choice, and only it (CC=/nonexistent: no C backend)
        return shutil.which(os.environ["CC"])
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
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
            cmd = [cc, *FLAGS, str(source), "-o", str(tmp_so)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise RuntimeError(
                    f"building {source.name} with {cc} failed (set REPRO_KERNELS=torch to avoid it):\n{done.stderr}"
                )
            os.replace(tmp_so, out)  # atomic: a concurrent build leaves one complete file
    return ctypes.CDLL(str(out))


_FAILED: dict[Path, str] = {}  # sources whose build or load failed in this process, with the reason


def library(source: Path) -> ctypes.CDLL | None:
    """`load(source)`, or None when there is no C compiler or the build or load fails: the caller
    then runs its torch path. A failure is warned about once per source and not retried."""
    if source in _FAILED:
        return None
    try:
        return load(source)
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        _FAILED[source] = str(err)
        warnings.warn(f"{err}\nThe torch backend serves these calls instead.", RuntimeWarning, stacklevel=2)
        return None
