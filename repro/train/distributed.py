"""Scale-out for the one training loop: DDP or FSDP2 wrapping, and the checkpoints that go with each.

The loop (`repro.train.loop.train`) asks this module for four things and stays the same loop under
every strategy (`LoopConfig.strategy`):

- `wrap(model, ...)`: the module the loop calls. One process: the model itself. Under `torchrun`,
  `ddp` replicates it (`DistributedDataParallel`), `fsdp` shards it with FSDP2
  (`torch.distributed.fsdp.fully_shard`): one FSDP unit per block plus the root (embedding, final
  norm, head), each block optionally activation-checkpointed and `torch.compile`d before sharding,
  a bf16 `MixedPrecisionPolicy` with fp32 gradient reduction when the loop runs in bf16.
- `no_sync(runner)`: skip the gradient reduction on micro-batches before the last.
- `load_state` / `save_state`: the resume point. `ddp` keeps a single `state/NAME.safetensors` written by
  rank 0; `fsdp` writes a `torch.distributed.checkpoint` (DCP) directory `state/NAME.dcp/` where every
  rank saves its own shards, and which loads on any number of ranks (DCP reshards on load), one
  process without a process group included.
- `export(model, directory)`: the usual `config.json` + `model.safetensors` that `repro eval` loads,
  gathered from the shards (collective: every rank calls it, rank 0 writes).

Parameters stay fp32 in the optimizer (FSDP keeps fp32 shards; the bf16 copies exist only while a
block runs), so resuming or exporting never loses precision.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn as nn

from repro.errors import UserError

if TYPE_CHECKING:
    from repro.runtime import RunContext
    from repro.train.optim import LoopConfig

STRATEGIES = ("ddp", "fsdp")


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless running under torchrun with an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model: the first ModuleList whose items all share one class
    (`blocks` of Llama / MM v2, `transformer.h` of GPT-2). Empty for models without one."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1:
            return list(module)
    return []


def checkpoint_blocks(model: nn.Module) -> None:
    """Per-block activation checkpointing: each block keeps only its input for the backward and
    recomputes the rest (non-reentrant, RNG state preserved so dropout masks repeat). The block's
    `forward` is replaced in place, so parameter names and checkpoints are unchanged."""
    from torch.utils.checkpoint import checkpoint

    for block in blocks_of(model):
        if getattr(block, "_repro_ckpt", False):
            continue
        inner = block.forward

        @functools.wraps(inner)
        def forward(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward
        block._repro_ckpt = True


def shard(model: nn.Module, device: torch.device, *, bf16: bool, compile_blocks: bool = False) -> nn.Module:
    """FSDP2 in place: `fully_shard` each block, then the root; returns the model (now an FSDPModule).

    Models whose parameters sit on the meta device (every rank but 0 may build them there, see
    `build_context`) get their values from rank 0 by a broadcast after sharding, so a large model
    exists in full only once, on rank 0's host memory, and every run starts from rank 0's init."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    rank, world_size = world()
    on_meta = any(p.is_meta for p in model.parameters())
    synced = torch.tensor([int(on_meta)], device=device)
    dist.all_reduce(synced)
    full = None
    if int(synced.item()):  # someone built on meta: rank 0 holds the real init, broadcast it after sharding
        if rank == 0:
            if on_meta:
                raise RuntimeError("rank 0 must build the model on a real device; only other ranks may use meta")
            full = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    elif not on_meta:
        model.to(device)
    mesh = init_device_mesh(device.type, (world_size,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kwargs: dict[str, Any] = {"mesh": mesh} | ({"mp_policy": policy} if policy else {})
    for block in blocks_of(model):
        if compile_blocks:
            block.compile()  # in place (nn.Module.compile): parameter names do not change
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    if int(synced.item()):
        model.to_empty(device=device)
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, full or {}, options=options)
        # rank 0's init drew from the CPU generator, the meta builds did not: continue from rank 0's
        # state everywhere, so later draws (MM v2's m, dropout) agree across ranks as under DDP
        rng = torch.get_rng_state().to(device)
        dist.broadcast(rng, src=0)
        torch.set_rng_state(rng.cpu())
    return model


def reshard(model: nn.Module) -> None:
    """Put every FSDP unit back to its sharded parameters. A forward without backward (evaluation)
    leaves the root unit gathered; its parameters are then not the ones the optimizer and the state
    dicts know, so we reshard before building an optimizer, saving or exporting."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def build_context(loop: LoopConfig) -> contextlib.AbstractContextManager:
    """Where an experiment builds its model: on the meta device (nothing allocated) on every rank but
    0 when the loop will shard it, else as usual. See `shard`."""
    rank, world_size = world()
    if loop.strategy == "fsdp" and world_size > 1 and rank != 0:
        return torch.device("meta")
    return contextlib.nullcontext()


def wrap(model: nn.Module, loop: LoopConfig, device: torch.device, bf16: bool) -> nn.Module:
    """The module the loop calls (see the module docstring); the model is moved to `device`."""
    if loop.strategy not in STRATEGIES:
        raise UserError(f"loop.strategy={loop.strategy!r} is not one of {', '.join(STRATEGIES)}.")
    _, world_size = world()
    if loop.activation_checkpointing:
        checkpoint_blocks(model)
    if loop.strategy == "fsdp" and dist.is_available() and dist.is_initialized():  # one rank too (gpu-check)
        if is_sharded(model):  # a second stage trains the already sharded model on
            reshard(model)
        else:
            shard(model, device, bf16=bf16, compile_blocks=loop.compile)
        return model
    model.to(device)
    runner: nn.Module = model
    if world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        runner = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return torch.compile(runner) if loop.compile else runner


@contextlib.contextmanager
def no_sync(runner: nn.Module) -> Iterator[None]:
    """Accumulate gradients locally (no all-reduce / reduce-scatter) inside the block."""
    if is_sharded(runner):
        runner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            runner.set_requires_gradient_sync(True)
    elif hasattr(runner, "no_sync"):
        with runner.no_sync():
            yield
    else:
        yield


def value(scalar: torch.Tensor) -> float:
    """A float from a scalar tensor that may be a DTensor (a gradient norm under FSDP)."""
    from torch.distributed.tensor import DTensor

    return float(scalar.full_tensor() if isinstance(scalar, DTensor) else scalar)


def all_finite(model: nn.Module) -> bool:
    """Whether every weight is finite. Sharded: each rank checks its shards, and all ranks agree."""
    from torch.distributed.tensor import DTensor

    local = [p.to_local() if isinstance(p, DTensor) else p for p in model.parameters()]
    ok = all(bool(torch.isfinite(p).all()) for p in local)
    if is_sharded(model):
        flag = torch.tensor([int(ok)], device=local[0].device if local else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok = bool(flag.item())
    return ok


# ---- resume points ------------------------------------------------------------------------------


def _dcp_dir(ctx: RunContext, name: str) -> Path:
    return ctx.run_dir / "state" / f"{name}.dcp"


def load_state(
    ctx: RunContext, name: str, model: nn.Module, opt: torch.optim.Optimizer, loop: LoopConfig
) -> dict[str, Any] | None:
    """Restore model and optimizer from the run's resume point, if any, and return the loop's own
    entries (step, losses, rng, global_batch). None when the run starts fresh."""
    if loop.strategy != "fsdp":
        saved = ctx.load_state(name)
        if saved is not None:
            model.load_state_dict(saved.pop("model"))
            opt.load_state_dict(saved.pop("optimizer"))
        return saved
    path = _dcp_dir(ctx, name)
    if not (path / ".metadata").exists():
        return None
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    reshard(model)
    model_sd, optim_sd = get_state_dict(model, opt)
    with (path / ".metadata").open("rb") as f:
        saved_meta = _read_dcp_metadata(f, path).state_dict_metadata.get("meta")
    meta_buffer = torch.empty(saved_meta.size if hasattr(saved_meta, "size") else (0,), dtype=torch.uint8)
    state = {"model": model_sd, "optim": optim_sd, "rng": torch.get_rng_state(), "meta": meta_buffer}
    try:
        with _quiet_single_process():
            dcp.load(state, storage_reader=_SafeReader(path), planner=_SafePlanner())
    except (Exception, CheckpointException) as e:  # DCP's exception is a BaseException
        raise UserError(
            f"checkpoint {path} cannot be read safely ({type(e).__name__}: it is damaged or holds objects "
            "that could run code when loaded); rerun with --force to redo the run."
        ) from None
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    meta = state["meta"]  # a string in checkpoints written before it was a tensor
    return {**json.loads(meta if isinstance(meta, str) else bytes(meta.tolist())), "rng": state["rng"]}


def save_state(
    ctx: RunContext, name: str, model: nn.Module, opt: torch.optim.Optimizer, loop: LoopConfig, entries: dict
) -> None:
    """Write the resume point: rank 0 alone under `ddp` (one safetensors file); every rank under `fsdp` (DCP)."""
    rank, world_size = world()
    if loop.strategy != "fsdp":
        if rank == 0:
            ctx.save_state(name, {"model": model.state_dict(), "optimizer": opt.state_dict(), **entries})
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    reshard(model)
    model_sd, optim_sd = get_state_dict(model, opt)
    meta = {k: v for k, v in entries.items() if k not in ("rng", "cuda_rng")}
    meta_bytes = torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8)  # a tensor, not a pickle
    state = {"model": model_sd, "optim": optim_sd, "rng": entries["rng"], "meta": meta_bytes}
    final, tmp = _dcp_dir(ctx, name), _dcp_dir(ctx, name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier(world_size)
    with _quiet_single_process():
        dcp.save(state, checkpoint_id=str(tmp))
    _barrier(world_size)
    if rank == 0:  # swap in the complete checkpoint: a kill mid-save leaves the previous one intact
        old = _dcp_dir(ctx, name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    _barrier(world_size)


# DCP reads its `.metadata` with pickle and every non-tensor entry (the optimizer's lr, betas, ...)
# with torch.load with weights_only off: either could run code planted in a copied run directory. The
# reader and planner below admit only DCP's own metadata classes and torch's restricted unpickler.
_DCP_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "MetadataIndex",
        "TensorStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
}


def _read_dcp_metadata(stream: Any, path: Path) -> Any:
    import pickle

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
            if not is_dtype and name not in _DCP_CLASSES.get(module, ()):
                raise pickle.UnpicklingError(f"{module}.{name} is not part of a DCP checkpoint")
            return super().find_class(module, name)

    try:
        return Restricted(stream).load()
    except Exception as e:
        raise UserError(
            f"checkpoint {path} cannot be read safely ({type(e).__name__}: it is damaged or holds objects that "
            "could run code when loaded); rerun with --force to redo the run."
        ) from None


def _SafeReader(path: Path) -> Any:  # noqa: N802 (a class built on first use: DCP imports lazily)
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as f:
                metadata = _read_dcp_metadata(f, path)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(path))


def _SafePlanner() -> Any:  # noqa: N802
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._traverse import set_element

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: Any) -> None:
            loaded = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return SafePlanner()


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """DCP warns that it assumes one process when there is no process group: that is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()


def global_batch_accum(saved: dict[str, Any] | None, loop: LoopConfig) -> int:
    """Micro-batches per step on this rank. A resumed run keeps the checkpoint's global batch
    (accum x world size): resumed on a different number of ranks it adjusts `accum`, so every step
    sees the same micro-batches as before and the loss curve continues."""
    _, world_size = world()
    if saved is None or "global_batch" not in saved or saved["global_batch"] == loop.accum * world_size:
        return loop.accum
    total = saved["global_batch"]
    if total % world_size:
        raise UserError(
            f"this run was checkpointed with {total} micro-batches per step (accum x ranks); "
            f"{world_size} ranks cannot split them evenly: resume with a number of ranks that divides {total}."
        )
    return total // world_size


# ---- export -------------------------------------------------------------------------------------


def export(model: nn.Module, directory: str | os.PathLike) -> None:
    """Write `config.json` + `model.safetensors` (the `LanguageModel.save` format) of a possibly
    sharded model. Collective under FSDP: every rank calls it; rank 0 gathers and writes."""
    rank, _ = world()
    if not is_sharded(model):
        if rank == 0:
            model.save(directory)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from repro.models import registry

    reshard(model)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(model, options=options)  # gathered on rank 0 (empty elsewhere)
    if rank == 0:
        with torch.device("meta"):
            plain = registry.family(model.family).model_class(model.config)
        # clone: gathered tensors may be views into one flat buffer, which safetensors refuses to write
        plain.load_state_dict({k: v.clone() for k, v in full.items()}, assign=True)
        plain.save(directory)
