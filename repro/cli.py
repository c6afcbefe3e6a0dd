"""The `repro` command: parse, look up the experiment, call. No science here."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from repro.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Reproduce the experiments of 'AI for the Open-World: the Learning Principles'.",
    pretty_exceptions_enable=False,
)


def user_errors(fn: Callable) -> Callable:
    """A UserError becomes one sentence on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            from repro.track import console

            console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

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

    if data_dir is not None:
        if not data_dir.is_dir():
            raise UserError(f"--data-dir {data_dir} is not a directory.")
        os.environ["REPRO_DATA_DIR"] = str(data_dir.resolve())

    exp = registry.get(name)
    runtime.launch(exp, preset=preset, overrides=overrides, seed=seed, out=out, use_wandb=wandb, force=force)


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

bench_app = typer.Typer(help="Benchmarks: ratios against a baseline measured in the same run.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("train")
@user_errors
def bench_train(
    families: str = typer.Option("gpt2,mosaic", help="Model families; the first is the baseline."),
    n_layer: int = typer.Option(4, help="Blocks."),
    n_embd: int = typer.Option(256, help="Width."),
    n_head: int = typer.Option(4, help="Heads."),
    block_size: int = typer.Option(256, help="Context length."),
    batch_size: int = typer.Option(16, help="Sequences per step."),
    vocab_size: int = typer.Option(8192, help="Vocabulary."),
    rounds: int = typer.Option(3, help="Interleaved measurement rounds."),
    steps: int = typer.Option(4, help="Timed steps per round."),
    compile: bool = typer.Option(False, help="torch.compile both models."),
    out: Path = typer.Option(Path("reports/bench"), help="Where the table goes."),
) -> None:
    """Training tokens/s of each model family at the same shape, measured in one run."""
    from repro.bench import ThroughputConfig, training_throughput, write_throughput_report

    cfg = ThroughputConfig(
        families=tuple(f.strip() for f in families.split(",") if f.strip()),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        block_size=block_size,
        batch_size=batch_size,
        vocab_size=vocab_size,
        rounds=rounds,
        steps=steps,
        compile=compile,
    )
    write_throughput_report(training_throughput(cfg), cfg, out)


@bench_app.command("kernels")
@user_errors
def bench_kernels(
    lengths: str = typer.Option("1k,2k,4k,8k,16k,32k", help="Sequence lengths (1k = 1024)."),
    batch: int = typer.Option(4, help="Batch size."),
    heads: int = typer.Option(16, help="Heads."),
    dim: int = typer.Option(64, help="Head dimension."),
    dtype: str = typer.Option("bfloat16", help="bfloat16 | float16 | float32."),
    reps: int = typer.Option(100, help="Timed repetitions per point."),
    out: Path = typer.Option(Path("reports/kernels"), help="Where bench.md / bench.json go."),
) -> None:
    """Kernels vs the reference and SDPA: correctness first (prints nothing else if it fails), then time,
    peak memory, TFLOP/s and GB/s as a fraction of the GPU's peak. On CPU: the torch backends only."""
    import torch

    from repro.kernels.bench import run_benchmark

    if dtype not in ("bfloat16", "float16", "float32"):
        raise UserError(f"--dtype {dtype}: choose bfloat16, float16 or float32.")
    try:
        sizes = tuple(int(float(x[:-1]) * 1024) if x.lower().endswith("k") else int(x) for x in lengths.split(","))
    except ValueError:
        raise UserError(f"--lengths {lengths}: expected numbers such as 1k,4k,32768.") from None
    try:
        run_benchmark(sizes, batch, heads, dim, getattr(torch, dtype), reps, echo=typer.echo, out_dir=out)
    except RuntimeError as e:  # the correctness gate failed: the numbers would mean nothing
        typer.echo(f"benchmark refused: {e}", err=True)
        raise typer.Exit(1) from None


def main() -> None:
    os.environ.setdefault("WANDB_SILENT", "true")
    app()


if __name__ == "__main__":
    main()
