"""Where metrics go: a JSONL file (always, the source of truth), the console (a rich progress bar
with ETA, never a flood of lines) and, only when asked, Weights & Biases (imported lazily)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from repro import files
from repro.errors import UserError

console = Console(stderr=True)


REACH_TIMEOUT_S = 3.0  # how long the W&B server may take to accept a connection before we go offline


def wandb_mode(flag: bool | None) -> str | None:
    """Decide whether and how to use W&B. None means off.

    `--no-wandb` turns it off; `--wandb` or a configured project (WANDB_PROJECT) turns it on. It is
    online only with credentials (WANDB_API_KEY or a netrc entry); otherwise offline, so it never
    prompts for a key. An explicit WANDB_MODE wins, except that online without a key, or with a
    server that does not answer within REACH_TIMEOUT_S, falls back to offline with a warning (wandb
    itself would fail, or hang for minutes before failing).
    """
    if flag is False or (flag is None and not os.environ.get("WANDB_PROJECT")):
        return None
    mode = os.environ.get("WANDB_MODE") or ("online" if _has_wandb_key() else "offline")
    if mode != "online":
        return mode
    if not _has_wandb_key():
        why = "WANDB_MODE=online but there is no API key (WANDB_API_KEY or ~/.netrc)"
    else:
        url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        if _reachable(url, REACH_TIMEOUT_S):
            return "online"
        why = f"{url} cannot be reached within {REACH_TIMEOUT_S:g} s"
    console.print(
        f"[yellow]warning[/]: W&B: {why}; logging offline into the run directory (upload later with `wandb sync`)."
    )
    return "offline"


def _has_wandb_key() -> bool:
    netrc = Path.home() / ".netrc"
    return bool(os.environ.get("WANDB_API_KEY")) or (
        netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")
    )


def _reachable(url: str, timeout: float) -> bool:
    """Whether a TCP connection to the server of `url` opens within `timeout` seconds, name lookup
    included (a thread: getaddrinfo itself has no timeout)."""
    import socket
    import threading
    from urllib.parse import urlparse

    parts = urlparse(url)
    if not parts.hostname:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    opened: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            opened.append(True)
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)


class Tracker:
    """Fan-out of logged scalars. `log` appends to `metrics.jsonl` and forwards to W&B if on."""

    def __init__(
        self,
        run_dir: Path,
        name: str,
        config: dict[str, Any],
        use_wandb: bool | None = None,
        enabled: bool = True,
    ):
        """`enabled=False` (DDP ranks other than 0) makes every method a no-op."""
        self.path = run_dir / "metrics.jsonl"
        if enabled:
            files.repair_jsonl(self.path)  # a killed run may have left half a line: never append after it
        self._file = self.path.open("a") if enabled else None
        self._wandb = None
        mode = wandb_mode(use_wandb) if enabled else None
        if mode is not None and mode != "disabled":
            try:
                import wandb
            except ImportError as e:
                raise UserError("--wandb needs the wandb package: pip install wandb.") from e
            os.environ.setdefault("WANDB_SILENT", "true")
            project = os.environ.get("WANDB_PROJECT", "repro")
            try:
                self._wandb = wandb.init(project=project, name=name, config=config, dir=str(run_dir), mode=mode)
            except Exception as e:  # wandb's errors are many types; the run itself must not depend on W&B
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise UserError(
                    f"W&B could not start a {mode} run ({first}); rerun with --no-wandb, or with WANDB_MODE=offline."
                ) from None

    def log(self, step: int, **scalars: float) -> None:
        clean = {k: float(v) for k, v in scalars.items()}
        if self._file is None:
            return
        record = {"step": step, "time": round(time.time(), 3), **clean}
        try:
            self._file.write(files.dumps(record) + "\n")  # NaN/inf are written as null
            self._file.flush()
        except OSError as e:  # a full disk: one sentence (a torn last line is cut on resume)
            raise (files.write_error(e, self.path) or e) from None
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in clean.items() if math.isfinite(v)}, step=step)

    def summary(self, **values: float) -> None:
        if self._wandb is not None:
            self._wandb.summary.update(values)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _log_every() -> float:
    """Seconds between plain progress lines when stderr is not a terminal ($REPRO_PROGRESS_EVERY, 60)."""
    try:
        return float(os.environ.get("REPRO_PROGRESS_EVERY", "60"))
    except ValueError:
        return 60.0


class _Bar:
    """Moves the bar. When stderr is not a terminal (a log file, nohup, CI), rich draws nothing until
    the end, so a plain line (done/total, elapsed, eta) goes out every `_log_every()` seconds."""

    def __init__(self, progress: Progress, task: Any, description: str, lines: bool):
        self._progress, self._task, self._description = progress, task, description
        self._every = _log_every() if lines else None  # read once, not at every step
        self._start = self._last = time.monotonic()

    def advance(self, n: int = 1, **postfix: float | str) -> None:
        info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in postfix.items())
        self._progress.update(self._task, advance=n, info=info)
        if self._every is None:
            return
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            task = self._progress.tasks[self._task]
            done, total, elapsed = task.completed, task.total, now - self._start
            eta = f"eta {_hms(elapsed / done * (total - done))}" if done and total else ""
            line = f"{self._description} {done:g}/{total:g} {_hms(elapsed)} {eta} {info}"
            console.print(line.rstrip(), soft_wrap=True)


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@contextmanager
def progress(total: int, description: str) -> Iterator[_Bar]:
    """A single rich progress bar with ETA; `bar.advance(loss=0.1)` moves it and shows a postfix."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    import torch.distributed as dist

    quiet = dist.is_available() and dist.is_initialized() and dist.get_rank() != 0  # one bar under torchrun
    with Progress(*columns, console=console, transient=False, disable=quiet) as prog:
        task = prog.add_task(description, total=total, info="")
        yield _Bar(prog, task, description, lines=not quiet and not console.is_terminal)
