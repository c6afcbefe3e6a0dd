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


def wandb_mode(flag: bool | None) -> str | None:
    """Decide whether and how to use W&B. None means off.

    `--no-wandb` turns it off; `--wandb` or a configured project (WANDB_PROJECT) turns it on. It is
    online only with credentials (WANDB_API_KEY or a netrc entry); otherwise offline, so it never
    prompts for a key. An explicit WANDB_MODE always wins.
    """
    if flag is False or (flag is None and not os.environ.get("WANDB_PROJECT")):
        return None
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (
        netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")
    )
    return "online" if has_key else "offline"


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
            self._wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "repro"),
                name=name,
                config=config,
                dir=str(run_dir),
                mode=mode,
            )

    def log(self, step: int, **scalars: float) -> None:
        clean = {k: float(v) for k, v in scalars.items()}
        if self._file is None:
            return
        record = {"step": step, "time": round(time.time(), 3), **clean}
        self._file.write(files.dumps(record) + "\n")  # NaN/inf are written as null
        self._file.flush()
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
