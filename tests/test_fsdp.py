"""FSDP2 under torchrun (two gloo processes on CPU) against one process, through the one loop.

Tolerances: fp32 throughout (amp off). Two ranks with one micro-batch each and one process with two
micro-batches see the same global batch (the loop's batch index is (step x accum + micro) x ranks +
rank), so they differ only in the order gradients are summed: we allow 1e-5 on losses and 1e-6 on
weights (observed: bit-identical weights, losses within 3e-7).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import fsdp_worker  # noqa: E402

from repro.models.registry import load as load_checkpoint
from repro.train import distributed  # noqa: E402
from repro.train.loop import LoopConfig  # noqa: E402

FAMILIES = ("llama", "mosaic_v2")
LOSS_TOL, WEIGHT_TOL = 1e-5, 1e-6


def _torchrun(run_dir: Path, *args: str) -> dict:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not found next to the interpreter")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(Path(fsdp_worker.__file__)), str(run_dir), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((run_dir / "losses.json").read_text())


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_fsdp_steps_equal_single_process_steps_and_export_loads(tmp_path, one_thread):
    """Two FSDP steps (two ranks, activation checkpointing on) == two single-process steps with
    accum 2: same losses, same updated weights (read back from the exported safetensors)."""
    sharded = _torchrun(tmp_path / "fsdp", "--steps", "2", "--activation-checkpointing")
    for family in FAMILIES:
        single = fsdp_worker.run(tmp_path / "one" / family, family, "fsdp", steps=2, accum=2)
        assert sharded[family] == pytest.approx(single, abs=LOSS_TOL)
        a = load_checkpoint(tmp_path / "fsdp" / family / "export" / family).state_dict()
        b = load_checkpoint(tmp_path / "one" / family / "export" / family).state_dict()
        torch.manual_seed(0)
        init = fsdp_worker.build(family).state_dict()
        assert a.keys() == b.keys() == init.keys()
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= WEIGHT_TOL
        assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-3  # the steps did move the weights


@pytest.mark.slow
def test_checkpoint_from_two_ranks_resumes_in_one_on_the_same_curve(tmp_path, one_thread):
    """Two ranks train 3 of 6 steps, checkpoint (DCP, one shard file per rank) and are killed; one
    process resumes from the shards (accum adjusted to keep the global batch) and finishes: the
    6 losses equal an uninterrupted single-process run's."""
    killed = _torchrun(tmp_path / "run", "--steps", "6", "--checkpoint-every", "3", "--die-at", "3")
    assert killed == {family: None for family in FAMILIES}
    for family in FAMILIES:
        shards = sorted(p.name for p in (tmp_path / "run" / family / "state" / f"{family}.train.dcp").iterdir())
        assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
        resumed = fsdp_worker.run(tmp_path / "run" / family, family, "fsdp", steps=6, accum=1)
        straight = fsdp_worker.run(tmp_path / "straight" / family, family, "fsdp", steps=6, accum=2)
        assert len(resumed) == 6 and resumed == pytest.approx(straight, abs=LOSS_TOL)


def test_single_process_fsdp_checkpoint_resumes_after_a_kill(tmp_path, one_thread):
    """Without torchrun the fsdp strategy trains the plain model but keeps the DCP format, so its
    checkpoints move between world sizes; a kill after step 2 resumes on the same curve."""
    family = "llama"
    assert fsdp_worker.run(tmp_path / "a", family, "fsdp", steps=4, accum=2, checkpoint_every=2, die_at=2) is None
    assert (tmp_path / "a" / "state" / f"{family}.train.dcp" / ".metadata").exists()
    resumed = fsdp_worker.run(tmp_path / "a", family, "fsdp", steps=4, accum=2)
    straight = fsdp_worker.run(tmp_path / "b", family, "fsdp", steps=4, accum=2)
    assert resumed == pytest.approx(straight, abs=LOSS_TOL)


def test_resume_keeps_the_global_batch_across_world_sizes():
    loop = LoopConfig(accum=1)
    assert distributed.global_batch_accum(None, loop) == 1
    assert distributed.global_batch_accum({"global_batch": 4}, loop) == 4  # 4 ranks x 1 -> 1 rank x 4
    assert distributed.global_batch_accum({"global_batch": 1}, loop) == 1


def test_blocks_of_finds_the_repeated_blocks():
    torch.manual_seed(0)
    for family in FAMILIES:
        model = fsdp_worker.build(family)
        assert distributed.blocks_of(model) == list(model.blocks)


def test_activation_checkpointing_keeps_gradients(one_thread):
    torch.manual_seed(0)
    x, y = fsdp_worker.batch_fn(0)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = fsdp_worker.build("mosaic_v2")
        if ckpt:
            distributed.checkpoint_blocks(model)
        fsdp_worker.lm_loss(model, (x, y)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


def _corpus(root: Path) -> Path:
    """A tiny generated TinyStories-like corpus (the real one may be absent; tests never download)."""
    import random

    rng = random.Random(0)
    root.mkdir(parents=True)
    for name, n in (("train.txt", 300), ("valid.txt", 80)):
        lines = [f"Once, {rng.choice(['Lily', 'Tom'])} had a {rng.choice(['ball', 'cat'])}. The end." for _ in range(n)]
        (root / name).write_text("\n".join(lines) + "\n")
    return root


# The paper preset with its FSDP loop (strategy, activation checkpointing) kept, everything else shrunk.
PAPER_SCALED_DOWN = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.ffn_size=96",
    "model.mosaic_ffn_size=96",
    "model.short_window=8",
    "model.long_skip_min=2",
    "model.long_skip_max=8",
    "model.query_chunk=64",
    "model.vocab_size=320",
    "pretrain.block_size=32",
    "pretrain.steps=4",
    "pretrain.batch_size=2",
    "finetune.block_size=64",
    "finetune.steps=2",
    "finetune.batch_size=1",
    "loop.accum=1",
    "loop.compile=false",
    "loop.checkpoint_every=2",
    "loop.eval_every=2",
    "loop.log_every=1",
    "eval_multiples=1,2",
    "eval_tokens=256",
    "eval_batch_tokens=256",
    "val_windows=2",
    "memory_lengths=256",
    "memory_families=mosaic_v2",
    "data.tokenizer=bpe",
    "data.vocab_size=300",
]


@pytest.mark.slow
def test_paper_preset_launches_under_torchrun_with_fsdp(tmp_path):
    """`torchrun ... repro run mmv2-pretrain --preset paper` (scaled down by --set, FSDP kept): rank 0
    writes one run, the states are DCP shards, the exported checkpoints load for the evaluations."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not found next to the interpreter")
    corpus = _corpus(tmp_path / "corpus")
    sets = [*PAPER_SCALED_DOWN, f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}"]
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "repro.cli", "run", "mmv2-pretrain"]
    cmd += ["--preset", "paper", "--out", str(tmp_path / "runs")] + [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = list((tmp_path / "runs").glob("mmv2-pretrain/paper/*/s0"))
    assert (run_dir / "rows.jsonl").exists()
    for name in ("llama-pretrain", "mosaic_v2-finetune"):
        files = {p.name for p in (run_dir / "state" / f"{name}.train.dcp").iterdir()}
        assert {"__0_0.distcp", "__1_0.distcp", ".metadata"} <= files
        model = load_checkpoint(run_dir / "checkpoints" / name)
        assert model.config.vocab_size == 320 and model.num_params() > 0
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in metrics if "llama-pretrain/loss" in m]
    assert steps == sorted(set(steps)) == [0, 1, 2, 3]  # logged once, by rank 0
