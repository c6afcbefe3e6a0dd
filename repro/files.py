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

import json
import math
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repro.errors import UserError


def temp_path(path: Path) -> Path:
    """A hidden sibling of `path`, unique to this process and call (two writers never share one)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` to fill a temporary file, then rename it to `path` (atomic on POSIX).

    The temporary file is removed if `write` fails or the process is interrupted, so an error
    leaves the previous `path` (or none) and no debris."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def resolved_path(text: str) -> str:
    """A path given on the command line, made absolute (a run's config must not depend on the cwd)."""
    return str(Path(text).expanduser().resolve())


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
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
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
