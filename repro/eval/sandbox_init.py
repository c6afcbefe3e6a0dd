"""The sandbox's launcher: run as a script (`python -I -S sandbox_init.py PARAMS`) with a clean
environment, the program on stdin, and a status pipe. Standard library only; imports nothing of repro.

Linux with unprivileged user namespaces (or root):
  launcher -- unshare(user, mount, pid, net, ipc, uts) --> fork: `init`, PID 1 of the new namespaces
  init: mounts a fresh /proc (only the sandbox's processes), a private tmpfs on /tmp (the program's
        directory, the only writable place), an empty read-only tmpfs on /var/tmp and /run (no
        Unix sockets), a /dev of null/zero/full/random/urandom only, then remounts every other mount
        read-only; forks the program and waits for it up to the timeout. When init exits, the kernel
        kills every process left in its PID namespace (setsid children and daemons included).
  program: its own session, resource limits, no capability (in any namespace), stdin /dev/null,
        stdout discarded, stderr to a file whose tail goes back in the status.
The network namespace has no interface but a loopback that is down: nothing can be reached.
Without namespaces (another OS, or user namespaces switched off): the launcher is a child subreaper;
at the end it kills the program's process group and every process reparented to it. Files, network
and other processes of the user are then not contained (the status says which protections held).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import resource
import signal
import sys
import time

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 4096, 8192, 16384, 1 << 18
KEEP_FLAGS = {  # per-mount flags a remount inside a user namespace must repeat (they are locked)
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": 1024,
    "nodiratime": 2048,
    "relatime": 1 << 21,
    "strictatime": 1 << 24,
    "nosymfollow": 256,
}
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 28, 47, 4
SECURE_ALL = 0xEF  # NOROOT, NO_SETUID_FIXUP, NO_CAP_AMBIENT_RAISE on, KEEP_CAPS off: each locked
DEVICES = ("null", "zero", "full", "random", "urandom")
WORKSPACE_BYTES = 64 << 20
libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(text: str | None) -> bytes | None:
        return None if text is None else text.encode()

    _check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def enter_namespaces(uid: int, gid: int) -> bool:
    """Unshare every namespace and become root inside (mapped to our own uid outside)."""
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    if not sys.platform.startswith("linux") or libc.unshare(flags) != 0:
        return False
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")
    return True


def _mounts() -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) of every mount, parents first."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
            out.append((point, set(fields[5].split(","))))
    return out


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def build_filesystem(workspace: str, aux: str, keep: list[str], report: dict) -> tuple[str, str]:
    """In the new mount namespace: the mounts described above. Returns the program's directory (an
    empty one, named as `workspace`) and the folder for the launcher's files (source, stderr)."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we do propagates out
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        report["contained"].append("private /proc")
    except OSError as e:
        report["failed"].append(str(e))
    hidden = [d for d in ("/tmp", "/var/tmp", "/run") if os.path.isdir(d) and not os.path.islink(d)]
    hidden = [d for d in hidden if not any(_under(k, d) for k in keep)]  # never hide the interpreter
    hidden = [d for d in hidden if d == "/tmp" or not _under(workspace, d)]  # nor the workspace
    if "/tmp" in hidden and _under(workspace, "/tmp") and _under(aux, "/tmp"):
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={WORKSPACE_BYTES},mode=1777")
        os.makedirs(workspace, mode=0o700)
        os.makedirs(aux, mode=0o700)
        private = "/tmp"
    else:  # $TMPDIR elsewhere, or the interpreter under /tmp: the private tmpfs goes on the workspace
        _mount("tmpfs", workspace, "tmpfs", MS_NOSUID | MS_NODEV, f"size={WORKSPACE_BYTES},mode=700")
        private, aux = workspace, os.path.join(workspace, ".sandbox")
        workspace = os.path.join(workspace, os.path.basename(workspace))
        os.mkdir(aux)
        os.mkdir(workspace)
    for d in hidden:
        if d != private:
            _mount("tmpfs", d, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=755")
    _private_dev(aux)
    failed = []
    for point, options in _mounts():
        if point == private or "ro" in options:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | sum(v for k, v in KEEP_FLAGS.items() if k in options)
        try:
            _mount(None, point, None, flags)
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: hidden under a mount made above (/dev/shm)
                failed.append(point)
    if failed:
        report["failed"].append("still writable: " + ", ".join(failed))
    else:
        report["contained"].append("read-only filesystem but a private tmpfs")
    return workspace, aux


def _private_dev(staging: str) -> None:
    """A tmpfs on /dev holding only the harmless devices (bind-mounted from the real ones): no disk,
    no /dev/shm, no terminal."""
    stage = os.path.join(staging, "dev")
    os.mkdir(stage)
    _mount("tmpfs", stage, "tmpfs", MS_NOSUID, "size=4k,mode=755")
    for name in (d for d in DEVICES if os.path.exists(f"/dev/{d}")):
        target = os.path.join(stage, name)
        open(target, "w").close()
        _mount(f"/dev/{name}", target, None, MS_BIND)
    os.symlink("/proc/self/fd", os.path.join(stage, "fd"))
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", os.path.join(stage, name))
    _mount(stage, "/dev", None, MS_MOVE)
    os.rmdir(stage)


def _limit(params: dict, isolated: bool) -> None:
    """In the program's process, before exec."""
    nproc = params["max_processes"]
    if not isolated:  # the count is per user, across the machine: allow what the user already runs
        nproc += sum(1 for p in os.listdir("/proc") if p.isdigit())
    cpu = int(params["timeout"]) + 1
    for what, soft in (
        (resource.RLIMIT_AS, params["memory"]),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, params["max_file_bytes"]),
        (resource.RLIMIT_NPROC, nproc),
        (resource.RLIMIT_NOFILE, 256),
        (resource.RLIMIT_CORE, 0),
    ):
        hard = soft + 1 if what == resource.RLIMIT_CPU else soft
        resource.setrlimit(what, (soft, hard))


def _drop_capabilities() -> None:
    """Root inside the namespaces but with no capability left, now or after exec (securebits
    NOROOT, an empty bounding set): the program cannot undo the mounts. It keeps its uid: files it
    can read outside are those the user can read."""
    _check(libc.prctl(PR_SET_SECUREBITS, SECURE_ALL, 0, 0, 0), "securebits")
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # past the last capability this kernel knows
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable x 2 words: all empty
    _check(libc.capset(header, data), "capset")


def start_program(params: dict, program: bytes, workdir: str, aux: str, isolated: bool) -> int:
    """Fork the program's process: the source runs from `aux` (not the program's own, empty folder)."""
    source = os.path.join(aux, "program.py")
    with open(source, "wb") as f:
        f.write(program)
    pid = os.fork()
    if pid:
        return pid
    try:  # the program's process: never returns
        os.setsid()
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        os.chdir(workdir)
        null = os.open("/dev/null", os.O_RDWR)
        err = os.open(os.path.join(aux, "stderr"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(err, 2)
        if isolated:
            _drop_capabilities()
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        _limit(params, isolated)
        home = workdir
        env = {"PATH": params["path"], "PYTHONHASHSEED": "0", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}
        os.execve(params["python"], [params["python"], "-I", "-B", source], env)
    finally:
        os._exit(127)


def supervise(pid: int, timeout: float, max_processes: int | None) -> dict:
    """Wait for the program up to `timeout` seconds; kill its process group at the deadline. As
    init of a PID namespace, also count the namespace's processes (`max_processes`): RLIMIT_NPROC
    does not bind a program whose uid outside is root."""
    deadline, pause = time.monotonic() + timeout, 0.001
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(status):
                return {"status": "signaled", "signal": os.WTERMSIG(status)}
            return {"status": "exited", "code": os.WEXITSTATUS(status)}
        if max_processes is not None and sum(p.isdigit() for p in os.listdir("/proc")) > max_processes + 1:
            _kill_group(pid)
            os.waitpid(pid, 0)
            return {"status": "too many processes"}
        if time.monotonic() > deadline:
            _kill_group(pid)
            os.waitpid(pid, 0)
            return {"status": "timed out"}
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def kill_descendants(grace: float = 2.0) -> None:
    """As a child subreaper (no PID namespace): kill whatever the program left behind; orphans of
    orphans are reparented to us in turn, so loop until no child is left."""
    me, deadline = str(os.getpid()), time.monotonic() + grace
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except (OSError, ValueError):
                continue
            if stat.rsplit(")", 1)[-1].split()[1] == me:  # its parent is us
                _kill_group(int(entry))
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        time.sleep(0.01)


def _stderr_tail(aux: str) -> str:
    try:
        with open(os.path.join(aux, "stderr"), "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def main() -> None:
    params = json.loads(sys.argv[1])
    program = sys.stdin.buffer.read()
    status = os.fdopen(params["status_fd"], "w")
    os.set_inheritable(params["status_fd"], False)
    report: dict = {"contained": ["own session, killed as a group", "resource limits"], "failed": []}
    isolated = params["namespaces"] and enter_namespaces(params["uid"], params["gid"])
    libc.prctl(PR_SET_DUMPABLE, 0)  # the launcher's memory and /proc entries stay closed to the program
    if isolated:
        report["contained"] += ["user, mount, pid, ipc, uts namespaces", "no network"]
        init = os.fork()
        if init:  # the launcher waits for init; when it dies (killed from outside), init gets SIGKILL
            os.waitpid(init, 0)
            os._exit(0)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
        report["failed"].append("no user namespaces: files, network and other processes are not contained")
    workdir, aux = params["workspace"], params["aux"]
    try:
        if isolated:
            workdir, aux = build_filesystem(workdir, aux, params["keep"], report)
        watch = params["max_processes"] if isolated and "private /proc" in report["contained"] else None
        result = supervise(start_program(params, program, workdir, aux, isolated), params["timeout"], watch)
    except OSError as e:
        result = {"status": "sandbox error", "error": str(e)}
    if not isolated:
        kill_descendants()
    result.update(stderr=_stderr_tail(aux), **report)
    status.write(json.dumps(result))
    status.close()
    os._exit(0)  # as PID 1: every process left in the namespace dies now


if __name__ == "__main__":
    main()
