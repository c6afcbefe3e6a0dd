"""Device, seeds, the environment record, and the run directory life cycle.

A run directory is `OUT/<experiment>/<preset>/<variant>/s<seed>/` holding `config.yaml`,
`env.json` (the first start, then one entry per resume), `metrics.jsonl`, `rows.jsonl` (written last,
atomically: its presence means the run finished), `failed.json` instead when training diverged, any
`state/*.safetensors` a run saves to resume after a kill (`statefile`: no pickle), and `.lock`
(held by the one process writing it).

What a run does before it writes anything: validate the config (types, ranges, the experiment's own
constraints), the seed, the device and a memory estimate; then it makes the directory and takes its
lock. SIGINT/SIGTERM during training checkpoint the current step and exit 130/143.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repro import config as cfglib
from repro import files, results, statefile
from repro.errors import Interrupted, RunFailed, UserError
from repro.registry import Runnable
from repro.track import Tracker, console


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' was requested but CUDA is not available; use --set device=cpu.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"device '{name}' is not a device torch knows; use auto, cpu, cuda or cuda:N.") from None


def init_distributed() -> int:
    """Under `torchrun` (WORLD_SIZE > 1): join the process group and return this rank, else 0."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank()


def _git_sha() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    """What produced a run: code version, library versions, hardware, kernel backend."""
    from repro.kernels import backend as kernel_backend
    from repro.kernels import choices as kernel_choices

    env: dict[str, Any] = {
        "git_sha": _git_sha(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "kernel_backend": kernel_backend(),
        "kernels": kernel_choices(),  # the backend each op uses in this run
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_count"] = torch.cuda.device_count()
    return env


@dataclass
class RunContext:
    """What an experiment's `run` gets besides its config."""

    experiment: str
    preset: str
    variant: str
    seed: int
    run_dir: Path
    device: torch.device
    tracker: Tracker
    started: float = field(default_factory=time.time)

    def row(self, **fields: Any) -> dict[str, Any]:
        """A result row with this run's identity filled in (see `results.ROW_FIELDS`)."""
        base = {
            "experiment": self.experiment,
            "preset": self.preset,
            "variant": self.variant,
            "seed": self.seed,
        }
        return results.make_row(**{**base, **fields})

    def metric_curve(self, key: str) -> list[tuple[int, float]]:
        """(step, value) pairs of one logged scalar from metrics.jsonl, the last value per step
        (a resumed run logs the steps after its last checkpoint twice)."""
        values: dict[int, float] = {}
        for record in files.read_jsonl(self.tracker.path):
            if key in record:
                value = record[key]
                values[record["step"]] = float("nan") if value is None else value  # null: not finite
        return sorted(values.items())

    def state_path(self, name: str) -> Path:
        path = self.run_dir / "state" / f"{name}.safetensors"
        path.parent.mkdir(exist_ok=True)
        return path

    def save_state(self, name: str, obj: Any) -> None:
        """Save a stage's result so a killed run resumes after it (written atomically; by rank 0 only
        under torchrun, as every file of the run directory, since the ranks hold the same result).
        The format runs no code when read (`statefile`): plain data and tensors only."""
        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return
        path = self.state_path(name)
        files.atomic_write(path, lambda tmp: statefile.save(obj, tmp), lambda: statefile.size(obj))
        path.with_suffix(".pt").unlink(missing_ok=True)  # an older run's pickle of the same stage

    def load_state(self, name: str) -> Any | None:
        path = self.state_path(name)
        files.remove_stale_temps(path.parent)  # partial files of a killed run's writes
        if not path.exists():
            return _load_legacy_state(path.with_suffix(".pt"))
        try:
            return statefile.load(path)
        except Exception as e:  # written atomically, so only damage from outside gets here
            raise UserError(
                f"checkpoint {path} cannot be read ({type(e).__name__}); delete it to redo that stage, "
                "or rerun with --force."
            ) from e


def _load_legacy_state(path: Path) -> Any | None:
    """`state/NAME.pt` of a run started before resume state was pickle-free: read with torch's
    restricted unpickler (tensors and plain containers only), which refuses anything that could run
    code; what it refuses is one sentence."""
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:
        raise UserError(
            f"checkpoint {path} cannot be read safely ({type(e).__name__}: it is damaged or holds objects "
            "that could run code when loaded); rerun with --force to redo the run."
        ) from None


def run_dir_for(out: Path, experiment: str, preset: str, variant: str, seed: int) -> Path:
    return out / experiment / preset / variant / f"s{seed}"


def check_memory(
    needed: int,
    device: torch.device,
    what: str = "one training step",
    hint: str = "lower batch_size (or the sequence length)",
) -> None:
    """Refuse a run whose estimated need (a lower bound, in bytes) exceeds the device's memory."""
    if needed <= 0:
        return
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        where = "GPU"
    else:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        where = "machine"
    if needed > total:
        raise UserError(
            f"{what} needs at least {needed / 2**30:.1f} GiB but this {where} has {total / 2**30:.1f} GiB; {hint}."
        )


# ---- signals: a checkpoint at the current step, then exit 130 (SIGINT) or 143 (SIGTERM) -----------
# The handler only records the signal while the training loop runs (it checkpoints at the end of the
# step and raises Interrupted); anywhere else, or on a second signal, it raises Interrupted at once.
_pending_signal: int | None = None
_deferring = 0


def _on_signal(signum: int, frame: Any) -> None:
    global _pending_signal
    if _deferring and _pending_signal is None:
        _pending_signal = signum
        return
    raise Interrupted("interrupted; rerun the same command to resume (finished stages are kept).", signum)


@contextmanager
def handle_signals() -> Iterator[None]:
    """Install the SIGINT/SIGTERM handler for the duration of a run (main thread only)."""
    global _pending_signal
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        _pending_signal = None


@contextmanager
def defer_signals() -> Iterator[None]:
    """Inside: a signal waits for `pending_signal()` (the training loop asks once per step)."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1


def pending_signal() -> int | None:
    return _pending_signal


# ---- the run directory ---------------------------------------------------------------------------


def record_start(path: Path, resuming: bool) -> None:
    """env.json: the environment of the first start; each resume appends (time, command, git sha)."""
    env = environment()
    if resuming and path.exists():
        try:
            first = json.loads(path.read_text())
        except ValueError:
            first = None  # unreadable: start the record again rather than refuse to resume
        if isinstance(first, dict):
            entry = {"time": env["started"], "command": env["argv"], "git_sha": env["git_sha"]}
            first.setdefault("resumes", []).append(entry)
            env = first
    files.write_json(path, env)


def _make_run_dir(run_dir: Path) -> bool:
    """Create the run directory; True when it did not exist. An unwritable place is one sentence."""
    existed = run_dir.is_dir()
    files.check_writable(run_dir, "--out")
    return not existed


def _clear_run_dir(run_dir: Path) -> None:
    """--force: delete everything of a previous run but the lock this process holds."""
    for path in run_dir.iterdir():
        if path.name == files.DirectoryLock.NAME:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _remove_new_run_dir(run_dir: Path, out: Path) -> None:
    """Undo a run directory this command created when it was rejected before saving any state, and
    the parents it left empty (up to --out)."""
    if any(run_dir.glob("state/*")):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in run_dir.parents:
        if parent == out or out not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:
            break


def configure(
    exp: Runnable,
    preset: str,
    overrides: list[str] | None,
    options: dict[str, tuple[str, Any]],
    seed: int,
    device: str | None,
    data_dir: Path | None,
) -> tuple[Any, str]:
    """The run's config and variant name: the preset, `--set` overrides, promoted options
    (config key -> (flag, text)), `--data-dir` (every `data_dir` field) and `--device` (the `device`
    field where the config has one), then the runnable's own resolution and every check. Bad input
    fails here, before anything is written."""
    cfg = cfglib.apply_overrides(exp.config(preset), overrides)
    parsers = {o.key: o.parse for o in exp.options}
    for key, (flag, raw) in options.items():
        cfg = cfglib.set_option(cfg, key, raw, flag, parsers.get(key))
    if data_dir is not None:
        cfg = cfglib.fill_field(cfg, "data_dir", str(data_dir.resolve()))
    if device is not None and any(f.name == "device" for f in dataclasses.fields(cfg)):
        cfg = dataclasses.replace(cfg, device=device)
    cfglib.check_seed(seed)
    cfg = exp.resolve(cfg, seed)
    try:
        cfglib.validate(cfg)
    except UserError as e:  # name the flag the user typed, not the config key behind it
        flag = next((flag for key, (flag, _) in options.items() if str(e).startswith(f"{key}=")), None)
        if flag is None:
            raise
        raise UserError(f"{flag} {str(e).split('=', 1)[1]}") from None
    exp.check(cfg)
    named = [f"{key}={cfglib.show(getattr_path(cfg, key))}" for key in options]
    return cfg, exp.variant(cfg, [*(overrides or []), *named])


def getattr_path(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def launch(
    exp: Runnable,
    *,
    preset: str = "cpu",
    overrides: list[str] | None = None,
    options: dict[str, tuple[str, Any]] | None = None,
    seed: int = 0,
    out: Path = Path("runs"),
    device: str | None = None,
    data_dir: Path | None = None,
    force: bool = False,
    wandb: bool | None = None,
) -> Path:
    """Run one experiment, evaluation or benchmark into its run directory; a finished run is a no-op
    unless `force`. See `configure` for what makes the config."""
    cfg, variant = configure(exp, preset, overrides, options or {}, seed, device, data_dir)
    device_obj = pick_device(device or getattr(cfg, "device", "auto"))
    check_memory(exp.memory_estimate(cfg), device_obj)
    run_dir = run_dir_for(out, exp.name, preset, variant, seed)
    rows_path = run_dir / "rows.jsonl"
    if results.finished_rows(rows_path) is not None and not force:
        console.print(f"[green]already done[/]: {run_dir} (pass --force to run again)")
        return run_dir
    rank = init_distributed()  # 0 without torchrun; only rank 0 writes to the run directory
    lock = files.DirectoryLock(run_dir)
    created = False
    if rank == 0:
        created = _make_run_dir(run_dir)
        lock.acquire()  # one writer per run directory, for the whole run
    try:
        if force and rank == 0:
            _clear_run_dir(run_dir)
        if results.finished_rows(rows_path) is not None:  # finished by another process while this one started
            console.print(f"[green]already done[/]: {run_dir} (pass --force to run again)")
            return run_dir
        if rows_path.exists() and rank == 0:  # rows that do not match done.json: finish the run again
            console.print(f"[yellow]warning[/]: {rows_path} does not match its done.json; running it again.")
            for stale in (rows_path, run_dir / results.DONE_FILE):
                stale.unlink(missing_ok=True)
        failed = run_dir / "failed.json"
        if failed.exists():
            reason = json.loads(failed.read_text()).get("reason", "see failed.json")
            raise RunFailed(f"{run_dir} failed before ({reason.rstrip('.')}); pass --force to start it again.")
        cfg_dict = cfglib.to_dict(cfg)
        cfg_path = run_dir / "config.yaml"
        if cfg_path.exists() and cfglib.load_yaml(cfg_path) != cfg_dict:
            raise UserError(f"{run_dir} holds an unfinished run with a different config; pass --force to restart it.")
        resuming = cfg_path.exists()
        if rank == 0:
            cfglib.dump_yaml(cfg, cfg_path)
            record_start(run_dir / "env.json", resuming)
        seed_everything(seed)
        tracker = Tracker(run_dir, f"{exp.name}/{preset}/{variant}/s{seed}", cfg_dict, wandb, enabled=rank == 0)
        ctx = RunContext(exp.name, preset, variant, seed, run_dir, device_obj, tracker)
        verb = "resuming" if resuming else "running"
        if rank == 0:
            console.print(f"[bold]{verb}[/] {exp.name} (preset {preset}, seed {seed}) -> {run_dir}")
        try:
            with handle_signals():
                rows = exp.run(cfg, ctx)
        except RunFailed as e:
            if rank == 0:  # never finished: rows.jsonl is not written, the last good checkpoint stays
                files.write_json(failed, {"reason": str(e), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            raise
        except Interrupted:
            raise
        except UserError:
            if created and rank == 0:  # rejected input (bad data, say): leave nothing behind
                _remove_new_run_dir(run_dir, out)  # still locked: no one can start in it meanwhile
            raise
        finally:
            tracker.close()
        if rank == 0:
            missing = [r for r in rows if not math.isfinite(r["value"]) and r.get("slice_key") not in ("text", "json")]
            if missing:  # written as null (strict JSON); say so rather than let a report average them
                first = missing[0]
                console.print(
                    f"[yellow]warning[/]: {len(missing)} of {len(rows)} result values are not finite "
                    f"(first: {first['metric']} of {first['model']}, {first['split']}); they are written as null."
                )
            results.write_rows(rows, rows_path)
            console.print(f"[green]done[/] in {time.time() - ctx.started:.0f} s: {len(rows)} rows in {rows_path}")
        return run_dir
    finally:
        lock.release()
