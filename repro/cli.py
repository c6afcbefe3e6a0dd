"""The `repro` command: parse, look up the experiment, call. No science here."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from repro.errors import Interrupted, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Reproduce the experiments of 'AI for the Open-World: the Learning Principles'.",
    pretty_exceptions_enable=False,
)


def user_errors(fn: Callable) -> Callable:
    """A UserError becomes one sentence on stderr and its exit code (2 for bad input, 1 for a run
    that failed, 130/143 for an interrupted one), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            from rich.markup import escape

            from repro.track import console

            prefix = "" if isinstance(e, Interrupted) else "[red]error:[/] "
            console.print(f"{prefix}{escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper


@app.command("list")
@user_errors
def list_experiments() -> None:
    """Show every experiment (paper reference, claim, cost of each preset) and every evaluation."""
    from repro import registry
    from repro.track import console

    # names never wrap (they are what you type); the other columns fold instead
    table = Table(title="repro experiments (repro run NAME)", show_lines=True)
    table.add_column("name", no_wrap=True)
    for col in ("paper", "claim", "presets (cost)"):
        table.add_column(col, overflow="fold")
    for exp in registry.each():
        costs = "\n".join(f"{p}: {c}" for p, c in exp.preset_costs.items())
        table.add_row(exp.name, exp.paper_ref, exp.claim, costs)
    console.print(table)
    evals = Table(title="repro evaluations (repro eval NAME)", show_lines=True)
    evals.add_column("name", no_wrap=True)
    evals.add_column("what it does", overflow="fold")
    for command in eval_app.registered_commands:
        doc = (command.callback.__doc__ or "").strip().split("\n\n")[0]
        evals.add_row(command.name, " ".join(doc.split()))
    console.print(evals)


@app.command()
@user_errors
def run(
    name: str = typer.Argument(..., help="Experiment name (see `repro list`)."),
    preset: str = typer.Option("cpu", help="smoke (seconds, tests) | cpu (minutes, default) | paper (GPU scale)."),
    overrides: Optional[list[str]] = typer.Option(  # noqa: UP045  (typer needs Optional here)
        None, "--set", help="Override a config value, e.g. --set steps=100 --set eval.sequences=32."
    ),
    seed: int = typer.Option(0, help="Random seed; each seed has its own run directory."),
    out: Path = typer.Option(Path("runs"), help="Root of the run directories."),
    wandb: Optional[bool] = typer.Option(  # noqa: UP045
        None,
        "--wandb/--no-wandb",
        help="Log to W&B (default: only if WANDB_PROJECT is set; offline without a key).",
    ),
    force: bool = typer.Option(False, help="Run again even if a finished run directory exists."),
    data_dir: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--data-dir", help="Folder of local dataset copies, searched before the Hugging Face hub."
    ),
) -> None:
    """Run one experiment into runs/NAME/PRESET/VARIANT/sSEED/ (resumes a killed run)."""
    from repro import registry, runtime

    if data_dir is not None and not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir} is not a directory.")
    exp = registry.get(name)
    runtime.launch(
        exp, preset=preset, overrides=overrides, seed=seed, out=out, use_wandb=wandb, force=force, data_dir=data_dir
    )


@app.command()
@user_errors
def report(
    name: Optional[str] = typer.Argument(None, help="Experiment to report; omit with --all."),  # noqa: UP045
    all_: bool = typer.Option(False, "--all", help="Report every experiment that has finished runs."),
    runs: Path = typer.Option(Path("runs"), help="Root of the run directories to read."),
    out: Path = typer.Option(Path("reports"), help="Where reports/NAME/ is written."),
    preset: Optional[str] = typer.Option(None, help="Which preset's runs to show (default: the largest)."),  # noqa: UP045
) -> None:
    """Turn run directories into reports/NAME/table.md|csv and figures, paper beside ours."""
    from repro import registry, results
    from repro.track import console

    if (name is None) == (not all_):
        raise UserError("give one experiment name or --all.")
    targets = registry.each() if all_ else [registry.get(name)]
    for exp in targets:
        df = results.collect(runs, exp.name)
        if df.empty:
            if all_:
                continue
            raise UserError(f"no finished runs of '{exp.name}' under {runs}/; run `repro run {exp.name}` first.")
        chosen = results.pick_preset(df, preset)
        paths = exp.report(df[df.preset == chosen].reset_index(drop=True), out / exp.name)
        console.print(f"[green]report[/] {exp.name} ({chosen}): " + ", ".join(str(p) for p in paths))
    index = results.write_index(out, registry.each())
    console.print(f"index: {index}")


@app.command()
@user_errors
def plan(
    name: str = typer.Argument(..., help="Experiment name (see `repro list`)."),
    preset: str = typer.Option("paper", help="The preset to cost."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="Override a config value first."),  # noqa: UP045
    gpus: int = typer.Option(64, help="GPUs the run would use (global batch = micro-batch x accum x GPUs)."),
    gpu: str = typer.Option("H100", help="GPU model, for its peak bf16 FLOP/s and default memory."),
    gpu_memory: Optional[float] = typer.Option(None, help="GB of memory per GPU (default: the GPU model's)."),  # noqa: UP045
    mfu: float = typer.Option(0.4, help="Model FLOPs utilisation assumed for the GPU-hours."),
    out: Optional[Path] = typer.Option(None, help="Also write the plan (markdown) to this file."),  # noqa: UP045
) -> None:
    """Parameters, FLOPs/token, tokens, memory per GPU (DDP/FSDP, with/without activation checkpointing)
    and GPU-hours of a preset, computed on the meta device: nothing is allocated."""
    from repro import config as cfglib
    from repro import registry
    from repro.plan import check_spec, print_plan

    exp = registry.get(name)
    cfg = cfglib.apply_overrides(exp.config(preset), overrides)
    spec = check_spec(exp.plan(cfg) if hasattr(exp, "plan") else None, name)
    print_plan(spec, f"{name} --preset {preset}", gpus=gpus, gpu=gpu, gpu_memory_gb=gpu_memory, mfu=mfu, out=out)


eval_app = typer.Typer(
    help="Evaluate a model: a repro checkpoint directory, hf:NAME_OR_DIR, or gguf:FILE.", no_args_is_help=True
)
app.add_typer(eval_app, name="eval")


def _register_evaluations() -> None:
    """Each evaluation module defines its Typer command; the CLI only names and guards it."""
    from repro.eval import harness, icl, ruler

    eval_app.command("ruler")(user_errors(ruler.command))
    eval_app.command("icl")(user_errors(icl.command))
    eval_app.command("harness")(user_errors(harness.command))


_register_evaluations()


def _register_benchmarks() -> None:
    """The benchmark commands live in `repro.bench`; the CLI only names and guards them."""
    from repro import bench

    bench_app = typer.Typer(help=bench.__doc__.splitlines()[0], no_args_is_help=True)
    bench_app.command("train")(user_errors(bench.train_command))
    bench_app.command("decode")(user_errors(bench.decode_command))
    bench_app.command("kernels")(user_errors(bench.kernels_command))
    bench_app.command("eval")(user_errors(bench.eval_command))
    app.add_typer(bench_app, name="bench")


_register_benchmarks()

from repro.cache import app as cache_app  # noqa: E402  (`repro cache list|clear`, issue 17)

app.add_typer(cache_app, name="cache")


def main() -> None:
    os.environ.setdefault("WANDB_SILENT", "true")
    app()


if __name__ == "__main__":
    main()
