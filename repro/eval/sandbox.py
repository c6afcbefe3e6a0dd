"""Run one untrusted Python program (model-generated code) as contained as this platform allows.

`run(program, timeout)` starts `sandbox_init.py` with a clean environment (PATH only: no API key or
token of ours), in its own session, with the program on stdin; what it sets up is described there.
On Linux with user namespaces (unprivileged ones are on by default in most distributions; some, such
as Ubuntu 24.04 with AppArmor's restriction, need them allowed):
- the only writable place is a private 64 MiB tmpfs (the program's directory; nothing of it is seen
  outside); every other mount is read-only, /dev holds only null/zero/full/random/urandom;
- no network (an empty network namespace; abstract Unix sockets are per namespace too, and /run and
  /tmp, where socket files live, are hidden);
- no other process is visible (a PID namespace with its own /proc), so no environment, memory or
  signal of the caller's processes reaches it;
- at the timeout (or when the program exits) every process it started dies with the namespace,
  setsid children and daemons included;
- limits: address space (`memory`), CPU time (timeout + 1 s), file size, processes, open files.
What is not contained: the program reads whatever files the user can read (with no network and no
writable place outside, it can only print them into its own error line), and it shares the machine's
CPU and memory with others (no cgroup). Without user namespaces (another OS, or switched off) only
the session kill, the resource limits and the clean environment hold; `Outcome.failed` says so, and the
caller process is made non-dumpable meanwhile so that `/proc/<pid>/environ` of it cannot be read.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

LAUNCHER = Path(__file__).with_name("sandbox_init.py")
MEMORY_BYTES = 2 << 30  # address-space cap of one program
MAX_FILE_BYTES = 16 << 20
MAX_PROCESSES = 64
GRACE_S = 10.0  # the launcher's own start and clean-up, beyond the program's timeout
NAMESPACES_ENV = "REPRO_SANDBOX_NAMESPACES"  # 0: do without (tests of the fallback)


@dataclass
class Outcome:
    status: str  # "exited", "signaled", "timed out", "too many processes" or "sandbox error"
    code: int | None = None
    stderr: str = ""
    contained: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "exited" and self.code == 0


def _keep() -> list[str]:
    """Folders the interpreter needs: never hidden under an empty mount."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.realpath(sys.executable)}
    paths |= {p for p in sysconfig.get_paths().values() if p}
    return sorted({os.path.realpath(p) for p in paths})


def run(program: str, timeout: float, memory: int = MEMORY_BYTES) -> Outcome:
    """Run `program` (Python source) in the sandbox; it passes when it exits with status 0."""
    workspace = tempfile.mkdtemp(prefix="repro-code-eval-")  # the program's directory, empty
    aux = tempfile.mkdtemp(prefix="repro-code-eval-aux-")  # the launcher's: the source, stderr
    read, write = os.pipe()
    params = {
        "timeout": timeout,
        "memory": memory,
        "max_file_bytes": MAX_FILE_BYTES,
        "max_processes": MAX_PROCESSES,
        "status_fd": write,
        "workspace": workspace,
        "aux": aux,
        "keep": _keep(),
        "python": sys.executable,
        "path": os.environ.get("PATH", "/usr/bin:/bin"),
        "uid": os.geteuid(),
        "gid": os.getegid(),
        "namespaces": os.environ.get(NAMESPACES_ENV, "1") != "0",
    }
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", str(LAUNCHER), json.dumps(params)],
            cwd=workspace,
            env={"PATH": params["path"]},
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=(write,),
        )
        os.close(write)
        write = -1
        try:
            _, err = proc.communicate(program.encode(), timeout=timeout + GRACE_S)
        except subprocess.TimeoutExpired:  # the launcher itself hung: its whole session goes
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return Outcome("timed out", failed=["the launcher did not finish"])
        with os.fdopen(read, "r") as f:
            read = -1
            text = f.read()
        if not text:
            return Outcome("sandbox error", stderr=err.decode(errors="replace"))
        status = json.loads(text)
        return Outcome(
            status["status"],
            status.get("code"),
            status.get("stderr", "") or status.get("error", ""),
            status.get("contained", []),
            status.get("failed", []),
        )
    finally:
        for fd in (read, write):
            if fd >= 0:
                os.close(fd)
        for folder in (workspace, aux):
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def closed_to_children() -> Iterator[None]:
    """While it lasts, this process is not dumpable: a process of the same user cannot read its
    /proc/<pid>/environ or memory (for the fallback, where programs see our processes)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        before = libc.prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
    except (OSError, AttributeError):  # not Linux
        libc = None
    try:
        yield
    finally:
        if libc is not None and before >= 0:
            libc.prctl(4, before, 0, 0, 0)
