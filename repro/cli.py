"""The `repro` command: commands generated from the registry by kind. No science here.

    repro list [NAME]                      every runnable by kind; NAME: its details and preset costs
    repro run NAME                         an experiment
    repro eval NAME --model M              an evaluation (one generated command each, with its options)
    repro bench NAME                       a benchmark (one generated command each, with its options)
    repro report [NAME | --all]            run directories -> reports/NAME/
    repro plan NAME                        sizes, memory and GPU-hours of a preset
    repro cache list | clear               the shared backbone cache

`run`, `eval` and `bench` take the same common options with the same meaning: --preset, --set, --seed
(0), --out (the run root), --device, --data-dir, --force, --wandb. Start-up stays light: the runnables'
names, kinds and options are read from their source (`registry.scan`), and torch is imported only
when a command runs.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from repro import registry
from repro.errors import Interrupted, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Reproduce the experiments of 'AI for the Open-World: the Learning Principles'.",
    pretty_exceptions_enable=False,
)
eval_app = typer.Typer(
    help="Evaluate a model: a repro checkpoint directory, hf:NAME_OR_DIR or gguf:FILE.", no_args_is_help=True
)
bench_app = typer.Typer(help="Benchmarks: ratios against a baseline measured in the same run.", no_args_is_help=True)
cache_app = typer.Typer(help="The cache of pretrained backbones that experiments share.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")
app.add_typer(cache_app, name="cache")

VERBS = {"experiment": "run", "evaluation": "eval", "benchmark": "bench"}
KW = inspect.Parameter.KEYWORD_ONLY


def _print(text: str) -> None:
    from repro.track import console

    console.print(text, highlight=False, soft_wrap=True)


def user_errors(fn: Callable) -> Callable:
    """A UserError becomes one sentence on stderr and its exit code (2 for bad input, 1 for a run
    that failed, 130/143 for an interrupted one), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (UserError, OSError) as e:
            from rich.markup import escape

            from repro.files import write_error

            if isinstance(e, OSError):  # a full disk or an unwritable folder, wherever it is met
                e = write_error(e, Path(e.filename)) if e.filename else None
                if e is None:
                    raise
            prefix = "" if isinstance(e, Interrupted) else "[red]error:[/] "
            _print(f"{prefix}{escape(str(e))}")
            raise typer.Exit(e.exit_code) from None

    return wrapper


# ---- the common options of run / eval / bench ------------------------------------------------------


def _common() -> list[inspect.Parameter]:
    """The options every runnable command takes, as parameters of a generated signature."""
    opt = typer.Option

    def p(name: str, annotation: Any, default: Any) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)

    return [
        p("preset", str, opt("cpu", help="smoke (seconds, tests) | cpu (minutes, default) | paper (GPU scale).")),
        p("overrides", Optional[list[str]], opt(None, "--set", help="Override a config value: --set a.b=VALUE.")),  # noqa: UP045
        p("seed", int, opt(0, help="Random seed; each seed has its own run directory.")),
        p("out", Path, opt(Path("runs"), help="Root of the run directories.")),
        p("device", Optional[str], opt(None, help="cpu, cuda, cuda:N or auto (default: the preset's).")),  # noqa: UP045
        p(
            "data_dir",
            Optional[Path],  # noqa: UP045  (typer needs Optional here)
            opt(None, "--data-dir", help="Folder of local dataset copies, searched before the hub."),
        ),
        p("force", bool, opt(False, "--force", help="Run again even if the run directory is finished.")),
        p(
            "wandb",
            Optional[bool],  # noqa: UP045
            opt(None, "--wandb/--no-wandb", help="Log to W&B (default: only if WANDB_PROJECT is set)."),
        ),
    ]


def _reports_option() -> inspect.Parameter:
    return inspect.Parameter(
        "reports",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(
            None, help="Where NAME/ is written (default: reports/, or OUT/reports/ for another --out)."
        ),
        annotation=Optional[Path],  # noqa: UP045
    )


def _option_params(entry: registry.Entry) -> list[inspect.Parameter]:
    params = []
    for i, (flag, _key, help_, is_flag) in enumerate(entry.options):
        default = typer.Option(False, flag, help=help_) if is_flag else typer.Option(None, flag, help=help_)
        annotation = bool if is_flag else Optional[str]  # noqa: UP045  (parsed as the config field's type)
        params.append(
            inspect.Parameter(f"opt_{i}", inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        )
    return params


def launch(
    name: str,
    kind: str,
    models: list[str] | None = None,
    options: dict[str, Any] | None = None,
    *,
    reports: Path | None = None,
    preset: str = "cpu",
    overrides: list[str] | None = None,
    seed: int = 0,
    out: Path = Path("runs"),
    device: str | None = None,
    data_dir: Path | None = None,
    force: bool = False,
    wandb: bool | None = None,
) -> list[Path]:
    """What `repro run|eval|bench NAME` does: run the runnable (an evaluation once per model) through the
    one lifecycle, with `options` its promoted options by flag (text, or True for a switch); evaluations
    and benchmarks then write their report. Returns the run directories."""
    runnable = registry.get(name, kind)  # an unknown name fails before torch is imported
    from repro import results, runtime

    flags = {flag: key for flag, key, _help, _ in registry.entry(name).options}
    given = {}
    for flag, value in (options or {}).items():
        if flag not in flags:
            raise UserError(f"'{name}' has no option {flag}; `repro list {name}` shows its options.")
        given[flags[flag]] = (flag, value)
    if data_dir is not None and not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir} is not a directory.")
    common = dict(preset=preset, overrides=overrides, seed=seed, out=out, device=device, data_dir=data_dir)
    run_dirs = []
    for model in models or [None]:
        chosen = given | ({"model": ("--model", model)} if model is not None else {})
        run_dirs.append(runtime.launch(runnable, options=chosen, force=force, wandb=wandb, **common))
    if kind != "experiment":
        paths = results.write_report(runnable, out, reports, preset)
        _print("[green]report[/] " + ", ".join(str(p) for p in paths))
    return run_dirs


def _command(entry: registry.Entry) -> Callable:
    """A Typer command for one evaluation or benchmark: the common options, its own promoted options,
    and for an evaluation `--model` (several, comma-separated or repeated, each a run of its own)."""

    def command(**kw: Any) -> None:
        models = None
        if entry.kind == "evaluation":
            models = [m.strip() for spec in kw.pop("model") for m in spec.split(",") if m.strip()]
        options = {}
        for i, (flag, _key, _help, is_flag) in enumerate(entry.options):
            value = kw.pop(f"opt_{i}")
            if (is_flag and value) or (not is_flag and value is not None):
                options[flag] = True if is_flag else value
        launch(entry.name, entry.kind, models, options, **kw)

    params = _common() + [_reports_option()] + _option_params(entry)
    if entry.kind == "evaluation":
        model = typer.Option(..., "--model", help="A repro checkpoint directory, hf:NAME_OR_DIR or gguf:FILE; "
                             "comma-separate or repeat for several.")  # fmt: skip
        params.insert(
            0, inspect.Parameter("model", inspect.Parameter.KEYWORD_ONLY, default=model, annotation=list[str])
        )
    command.__signature__ = inspect.Signature(params)
    command.__doc__ = f"{entry.claim or entry.paper_ref}"
    command.__name__ = entry.command.replace("-", "_")
    return user_errors(command)


def _add_generated_commands() -> None:
    for entry in registry.scan().values():
        if entry.kind == "evaluation":
            eval_app.command(entry.command, help=_summary(entry))(_command(entry))
        elif entry.kind == "benchmark":
            bench_app.command(entry.command, help=_summary(entry))(_command(entry))


def _summary(entry: registry.Entry) -> str:
    return f"{entry.claim or entry.paper_ref} ({entry.paper_ref})" if entry.claim else entry.paper_ref


# ---- run, list, report, plan ------------------------------------------------------------------------


def run(name: str = typer.Argument(..., help="Experiment name (see `repro list`)."), **kw: Any) -> None:
    """Run one experiment into OUT/NAME/PRESET/VARIANT/sSEED/ (resumes a killed run)."""
    launch(name, "experiment", **kw)


run.__signature__ = inspect.Signature(
    [
        inspect.Parameter(
            "name",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=typer.Argument(..., help="Experiment name (see `repro list`)."),
            annotation=str,
        )
    ]  # noqa: E501
    + _common()
)
app.command()(user_errors(run))


@app.command("list")
@user_errors
def list_runnables(name: Optional[str] = typer.Argument(None, help="Show one runnable in full.")) -> None:  # noqa: UP045
    """Every experiment, evaluation and benchmark by kind; with NAME, its claim, options and preset costs."""
    from rich.table import Table

    from repro.track import console

    if name is not None:
        _details(registry.entry(name))
        return
    for kind in registry.KINDS:
        table = Table(title=f"{kind}s: repro {VERBS[kind]} NAME{' --model M' if kind == 'evaluation' else ''}",
                      title_justify="left", box=None, pad_edge=False, width=min(console.width, 100))  # fmt: skip
        table.add_column("name", no_wrap=True, style="bold")
        table.add_column("paper", overflow="fold", ratio=1)
        for entry in (registry.scan()[n] for n in registry.names(kind)):
            table.add_row(entry.command, entry.paper_ref)
        console.print(table)
        console.print()
    console.print("`repro list NAME` shows a runnable's claim, options and the cost of each preset.")


def _details(entry: registry.Entry) -> None:
    from rich.table import Table

    from repro.track import console

    table = Table(show_header=False, box=None, width=min(console.width, 100))
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold", ratio=1)
    extra = " --model M" if entry.kind == "evaluation" else ""
    table.add_row("command", f"repro {VERBS[entry.kind]} {entry.command}{extra}")
    table.add_row("paper", entry.paper_ref)
    if entry.claim:
        table.add_row("claim", entry.claim)
    for preset, cost in entry.preset_costs:
        table.add_row(f"--preset {preset}", cost)
    for flag, key, help_, _ in entry.options:
        table.add_row(flag, f"{help_} (config key {key})")
    console.print(table)


@app.command()
@user_errors
def report(
    name: Optional[str] = typer.Argument(None, help="What to report; omit with --all."),  # noqa: UP045
    all_: bool = typer.Option(False, "--all", help="Report everything that has finished runs."),
    out: Path = typer.Option(Path("runs"), help="Root of the run directories to read."),
    reports: Path = typer.Option(Path("reports"), help="Where NAME/ is written."),
    preset: Optional[str] = typer.Option(None, help="Which preset's runs to show (default: the largest)."),  # noqa: UP045
) -> None:
    """Turn run directories into reports/NAME/table.md|csv and figures, paper beside ours."""
    from repro import results

    if (name is None) == (not all_):
        raise UserError("give one name or --all.")
    targets = registry.each() if all_ else [registry.get(name)]
    from repro.files import check_writable

    check_writable(reports, "--reports")  # before any report is rendered: nothing half-written
    for runnable in targets:
        df = results.collect(out, runnable.name)
        if df.empty:
            if all_:
                continue
            verb = VERBS[runnable.kind]
            raise UserError(f"no finished runs of '{runnable.name}' under {out}/; run `repro {verb} {name}` first.")
        chosen = results.pick_preset(df, preset)
        paths = runnable.report(df[df.preset == chosen].reset_index(drop=True), reports / runnable.name)
        _print(f"[green]report[/] {runnable.name} ({chosen}): " + ", ".join(str(p) for p in paths))
    _print(f"index: {results.write_index(reports, registry.each())}")


@app.command()
@user_errors
def plan(
    name: str = typer.Argument(..., help="Experiment name (see `repro list`)."),
    preset: str = typer.Option("cpu", help="The preset to cost (as everywhere, cpu by default; --preset paper)."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="Override a config value first."),  # noqa: UP045
    gpus: int = typer.Option(64, help="GPUs the run would use (global batch = micro-batch x accum x GPUs)."),
    gpu: str = typer.Option("H100", help="GPU model, for its peak bf16 FLOP/s and default memory."),
    gpu_memory: Optional[float] = typer.Option(None, help="GB of memory per GPU (default: the GPU model's)."),  # noqa: UP045
    mfu: float = typer.Option(0.4, help="Model FLOPs utilisation assumed for the GPU-hours."),
    write: Optional[Path] = typer.Option(None, help="Also write the plan (markdown) to this file."),  # noqa: UP045
) -> None:
    """Parameters, FLOPs/token, tokens, memory per GPU (DDP/FSDP, with/without activation checkpointing)
    and GPU-hours of a preset, computed on the meta device: nothing is allocated."""
    from repro import config as cfglib
    from repro.plan import check_spec, print_plan

    runnable = registry.get(name)
    cfg = cfglib.apply_overrides(runnable.config(preset), overrides)
    cfglib.validate(cfg)  # the range checks of every run: an absurd size is refused before the build
    spec = check_spec(runnable.plan(cfg), name)
    print_plan(spec, f"{name} --preset {preset}", gpus=gpus, gpu=gpu, gpu_memory_gb=gpu_memory, mfu=mfu, out=write)


_CACHE_DIR = typer.Option(None, "--cache-dir", help="Cache root (default: $REPRO_CACHE_DIR, else runs/_cache).")


@cache_app.command("list")
@user_errors
def cache_list(cache_dir: Optional[Path] = _CACHE_DIR) -> None:  # noqa: UP045
    """Show every cached backbone: hash, what it is, ID test accuracy, training time, size."""
    from repro import cache

    cache.list_entries(cache_dir)


@cache_app.command("clear")
@user_errors
def cache_clear(
    hashes: Optional[list[str]] = typer.Argument(None, help="Hashes to remove (default: all)."),  # noqa: UP045
    cache_dir: Optional[Path] = _CACHE_DIR,  # noqa: UP045
    yes: bool = typer.Option(False, "--yes", "-y", help="Remove without asking."),
) -> None:
    """Remove cached backbones (all of them, or the given hashes); runs retrain what they miss."""
    from repro import cache

    cache.clear_entries(hashes, cache_dir, yes)


_add_generated_commands()


def main() -> None:
    os.environ.setdefault("WANDB_SILENT", "true")
    app()


if __name__ == "__main__":
    main()
