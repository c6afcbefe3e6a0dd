"""Files that survive crashes: whole-file writes that are all or nothing, append-only JSON-lines files
whose torn last line is ignored (and cut off before the next append), strict JSON, and the lock that
keeps a run directory to one writer.

A process can die at any instruction (kill -9, a full disk, a power cut). So:
- a file that must be whole is written under a temporary name unique to this process and call, then
  renamed over the real name (`atomic_write`); readers see the old file or the new one, never half;
- an append-only `.jsonl` file can end in a partial line; `read_jsonl` drops it, and
  `repair_jsonl` truncates it before anyone appends after it (else it would glue onto the next line);
- JSON is strict (`dumps`): NaN and infinities become null, so every file parses as standard JSON.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repro.errors import EnvironmentFailed, UserError


def temp_path(path: Path) -> Path:
    """A hidden sibling of `path`, unique to this process and call (two writers never share one)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write(
    path: str | os.PathLike, write: Callable[[Path], object], size_hint: Callable[[], int] | None = None
) -> Path:
    """Call `write(tmp)` to fill a temporary file, then rename it to `path` (atomic on POSIX).

    The temporary file is removed if `write` fails or the process is interrupted, so an error
    leaves the previous `path` (or none) and no debris; the temporary files of writers killed in this
    folder are removed first (`remove_stale_temps`). A full disk or a place that cannot be written
    is one sentence (`write_error`); `size_hint()` (bytes, asked only then) lets it say how much space
    the file needs."""
    path = Path(path)
    remove_stale_temps(path.parent)  # what killed writers left here (they cannot clean up after kill -9)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except Exception as e:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        about = getattr(e, "filename", None)  # an error about another file (one `write` reads) stays as is
        ours = about is None or Path(about) in (tmp, path, path.parent)
        error = write_error(e, path, max(size_hint() if size_hint else 0, written)) if ours else None
        if error is None:
            raise
        raise error from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def check_writable(folder: str | os.PathLike, what: str = "--out") -> None:
    """Create `folder` if needed and make sure a file can be written there: one sentence (exit 2,
    naming the option) otherwise, before any work whose result would have nowhere to go."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temp_path(folder / "write-test")
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {folder} ({e.strerror or e}); choose a writable {what}.") from None


def resolved_path(text: str) -> str:
    """A path given on the command line, made absolute (a run's config must not depend on the cwd)."""
    return str(Path(text).expanduser().resolve())


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_CANNOT_WRITE = (errno.EACCES, errno.EROFS, errno.EPERM)


def write_error(e: BaseException, path: Path, needed: int = 0) -> UserError | None:
    """The one sentence for a failed write of `path`, or None when `e` is not about the place:
    a full disk (exit 1: the folder, its free space and at least what the file needs) or a folder
    that cannot be written (exit 2: choose another). Libraries that write for us (safetensors,
    torch) report a full disk in their own words, so their message is read too."""
    code = getattr(e, "errno", None)
    text = str(e)
    if code in _NO_SPACE or "No space left on device" in text or "Disk quota exceeded" in text:
        folder = path.parent
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            free = 0
        need = f"; {path.name} needs at least {_size(needed)}" if needed else ""
        return EnvironmentFailed(
            f"the disk holding {folder} is full ({_size(free)} free{need}): free some space and run the "
            "same command again (a run resumes from its last checkpoint)."
        )
    if code in _CANNOT_WRITE:
        return UserError(
            f"cannot write {path} ({e.strerror}); choose a folder you can write to or fix its permissions."
        )
    return None


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


_TEMP_NAMES = (  # temp_path's names (.NAME.PID.HEX.tmp; HEX may be all digits), then older ones (.NAME.PID.tmp)
    re.compile(r"\..+\.(\d+)\.[0-9a-f]{8}\.tmp"),
    re.compile(r"\..+\.(\d+)\.tmp"),
)


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Remove the temporary files and folders that writers killed mid-write left in `folder`: their
    names carry the writer's PID, and a writer that no longer runs will never rename them. Returns
    how many went. (A PID reused since by another process keeps its debris until that one ends.)"""
    removed = 0
    for tmp in Path(folder).glob(".*.tmp") if Path(folder).is_dir() else ():
        match = next((m for m in (pattern.fullmatch(tmp.name) for pattern in _TEMP_NAMES) if m), None)
        if match is None or _running(int(match[1])):
            continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or not a PID at all: leave it
    return True


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a whole text file atomically."""
    return atomic_write(path, lambda p: p.write_text(text))


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, +-inf) replaced by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """Standard JSON (never the bare NaN/Infinity tokens Python writes by default): non-finite
    numbers become null."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write strict JSON atomically."""
    return write_text(path, dumps(obj, indent=indent) + "\n")


def write_jsonl(path: str | os.PathLike, records: list[dict[str, Any]]) -> Path:
    """Write a whole JSON-lines file atomically (strict JSON, one record a line)."""
    return write_text(path, "".join(dumps(r) + "\n" for r in records))


def _complete_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records of the complete lines of `path`, and the byte length those lines cover.

    A last line without its newline, or one that does not parse, is a torn write: not counted.
    A bad line anywhere else is corruption that no crash produces, and is an error."""
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        last = end == -1 or end == len(data) - 1
        if end == -1:  # no newline: the writer died mid-line
            break
        line = data[pos:end]
        if line.strip():
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                if last:
                    break
                lineno = data.count(b"\n", 0, pos) + 1
                raise UserError(
                    f"{path} line {lineno} is not valid JSON (the file is damaged); "
                    "delete the run directory or rerun with --force."
                ) from None
        pos = end + 1
    return records, pos


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file, ignoring a torn final line; [] if the file is absent."""
    path = Path(path)
    return _complete_lines(path)[0] if path.exists() else []


def repair_jsonl(path: str | os.PathLike) -> int:
    """Cut a torn final line off `path` (before appending to it); returns the bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    _, good = _complete_lines(path)
    extra = path.stat().st_size - good
    if extra:
        with path.open("r+b") as f:
            f.truncate(good)
    return extra


class DirectoryLock:
    """An OS lock (flock) on `directory/.lock`, held while a process writes into `directory`.

    The kernel drops it when the process dies, however it dies, so a killed run never leaves a stale
    lock. The file holds the holder's PID, for the refusal message. It is never deleted: deleting a
    lock file lets a third process lock a new inode while a second still holds the old one."""

    NAME = ".lock"

    def __init__(self, directory: Path):
        self.directory = directory
        self.path = directory / self.NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise UserError naming the process that holds it."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"{self.directory} is being written by another run (process {holder}); "
                "wait for it to finish or stop it, then run this command again."
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:  # a full disk: the lock holds without the PID, the run cannot
            os.close(fd)
            raise (write_error(e, self.path) or e) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
