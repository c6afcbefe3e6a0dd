"""Device, seeds, the environment record, and the run directory life cycle.

A run directory is `OUT/<experiment>/<preset>/<variant>/s<seed>/` holding `config.yaml`,
`env.json`, `metrics.jsonl`, `rows.jsonl` (written last, atomically: its presence means the run
finished) and any `state/*.pt` a run saves to resume after a kill.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repro import config as cfglib
from repro import results
from repro.errors import UserError
from repro.registry import Experiment
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
    return torch.device(name)


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


def variant_name(overrides: list[str] | None) -> str:
    """`default`, or a readable slug of the overrides plus a short hash (stable for the same set)."""
    if not overrides:
        return "default"
    canon = sorted(overrides)
    slug = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", "+".join(canon))[:60]
    digest = hashlib.sha1("\n".join(canon).encode()).hexdigest()[:6]
    return f"{slug}-{digest}"


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
        if self.tracker.path.exists():
            for line in self.tracker.path.read_text().splitlines():
                record = json.loads(line)
                if key in record:
                    values[record["step"]] = record[key]
        return sorted(values.items())

    def state_path(self, name: str) -> Path:
        path = self.run_dir / "state" / f"{name}.pt"
        path.parent.mkdir(exist_ok=True)
        return path

    def save_state(self, name: str, obj: Any) -> None:
        """Save a stage's result so a killed run resumes after it (written atomically)."""
        path = self.state_path(name)
        tmp = path.with_suffix(".tmp")
        torch.save(obj, tmp)
        tmp.replace(path)

    def load_state(self, name: str) -> Any | None:
        path = self.state_path(name)
        return torch.load(path, weights_only=False) if path.exists() else None


def run_dir_for(out: Path, experiment: str, preset: str, variant: str, seed: int) -> Path:
    return out / experiment / preset / variant / f"s{seed}"


def launch(
    exp: Experiment,
    *,
    preset: str = "cpu",
    overrides: list[str] | None = None,
    seed: int = 0,
    out: Path = Path("runs"),
    use_wandb: bool | None = None,
    force: bool = False,
    data_dir: Path | None = None,
) -> Path:
    """Run one experiment into its run directory; a finished run is a no-op unless `force`.
    `data_dir` (a folder of local dataset copies) fills every `data_dir` field of the config."""
    cfg = cfglib.apply_overrides(exp.config(preset), overrides)
    if data_dir is not None:
        cfg = cfglib.fill_field(cfg, "data_dir", str(data_dir.resolve()))
    exp.check(cfg)  # bad inputs fail here, before anything is written
    variant = variant_name(overrides)
    run_dir = run_dir_for(out, exp.name, preset, variant, seed)
    rows_path = run_dir / "rows.jsonl"
    rank = init_distributed()  # 0 without torchrun; only rank 0 writes to the run directory
    if force and run_dir.exists() and rank == 0:
        shutil.rmtree(run_dir)
    if rows_path.exists():
        console.print(f"[green]already done[/]: {run_dir} (pass --force to run again)")
        return run_dir
    cfg_dict = cfglib.to_dict(cfg)
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists() and cfglib.load_yaml(cfg_path) != cfg_dict:
        raise UserError(f"{run_dir} holds an unfinished run with a different config; pass --force to restart it.")
    resuming = cfg_path.exists()
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfglib.dump_yaml(cfg, cfg_path)
        (run_dir / "env.json").write_text(json.dumps(environment(), indent=2))
    seed_everything(seed)
    device = pick_device(getattr(cfg, "device", "auto"))
    tracker = Tracker(run_dir, f"{exp.name}/{preset}/{variant}/s{seed}", cfg_dict, use_wandb, enabled=rank == 0)
    ctx = RunContext(exp.name, preset, variant, seed, run_dir, device, tracker)
    verb = "resuming" if resuming else "running"
    if rank == 0:
        console.print(f"[bold]{verb}[/] {exp.name} (preset {preset}, seed {seed}) -> {run_dir}")
    try:
        rows = exp.run(cfg, ctx)
    finally:
        tracker.close()
    if rank == 0:
        results.write_rows(rows, rows_path)
        console.print(f"[green]done[/] in {time.time() - ctx.started:.0f} s: {len(rows)} rows in {rows_path}")
    return run_dir
