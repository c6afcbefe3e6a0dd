"""The one interface every language model exposes, and the checkpoint format.

Evaluations (per-position loss, RULER, ICL, lm-eval) only call what is defined here, so they work for
every family: `forward(idx, cache=None) -> logits`, `loss`, `new_cache` + `generate` (incremental
decoding: the prompt is read once, then one token per step through the cache) and `save`.

A checkpoint is a directory holding `config.json` (the config dataclass plus a "family" key) and
`model.safetensors`, written by `save`; the model registry loads it (`repro.models.registry.load`:
the family names the class), so this module never needs the registry.

`next_token_loss(model, batch)` is the one training loss of every language model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal

import safetensors.torch
import torch
import torch.nn as nn
import torch.nn.functional as F

from repro.config import to_dict
from repro.errors import UserError
from repro.files import atomic_write, write_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, reduction: Literal["mean", "none"] = "mean"
) -> torch.Tensor:
    """Next-token cross-entropy of logits (B, T, V) against targets (B, T), in float32; targets of -1
    are ignored. reduction="none" gives the (B, T) per-position losses (0 where ignored)."""
    B, T, V = logits.shape
    flat_logits, flat_targets = logits.reshape(B * T, V).float(), targets.reshape(B * T)  # (BT, V), (BT,)
    ce = F.cross_entropy(flat_logits, flat_targets, ignore_index=-1, reduction=reduction)
    return ce.view(B, T) if reduction == "none" else ce  # (BT,) -> (B, T) per position


def next_token_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The training loss of every language model: mean next-token cross-entropy of batch (x, y).

    Calls model(x), not model.loss, so DDP, FSDP and torch.compile wrappers apply."""
    x, y = batch
    return cross_entropy(model(x), y)


@dataclasses.dataclass
class DecodeCache:
    """What a model remembers between incremental forward calls; each family subclasses it."""

    batch_size: int
    length: int = 0  # tokens read so far


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, cache: DecodeCache | None, *args: Any) -> torch.Tensor:
    """x (B, T, C) through each block as block(x, *args, its layer's cache); with a cache (one that
    has `.layers`), the T tokens are counted as read."""
    for i, block in enumerate(blocks):
        x = block(x, *args, None if cache is None else cache.layers[i])  # type: ignore[attr-defined]
    if cache is not None:
        cache.length += x.shape[1]
    return x


class LanguageModel(nn.Module):
    """Base class: subclasses define `forward` and `new_cache`; `repro.models.registry.register_model`
    sets their `family` and `config_class`."""

    family: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    def forward(self, idx: torch.Tensor, cache: DecodeCache | None = None) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, V). With a cache, idx holds only the new tokens;
        the cache is updated in place and the logits are those of the new tokens."""
        raise NotImplementedError

    def new_cache(self, batch_size: int) -> DecodeCache:
        """An empty decoding state for `batch_size` sequences."""
        raise NotImplementedError

    @property
    def max_context(self) -> int | None:
        """The longest sequence the model can read (learned positions), or None when unbounded."""
        return None

    def drop_long_term_memory(self, drop: bool = True) -> None:
        """Remove (or, with drop=False, restore) the long-term memory at inference: the Memory
        Mosaics v2 ablation (its Tables 2, 9, 10). Families without one refuse."""
        raise UserError(f"a {self.family} model has no long-term memory to drop; only mosaic_v2 has one.")

    def loss(
        self, idx: torch.Tensor, targets: torch.Tensor, reduction: Literal["mean", "none"] = "mean"
    ) -> torch.Tensor:
        """Cross-entropy of next-token predictions; targets of -1 are ignored.

        reduction="none" gives the (B, T) per-position losses (0 where ignored), from which the
        per-position loss curves are drawn.
        """
        return cross_entropy(self(idx), targets, reduction)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        stop_tokens: Iterable[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue idx (B, T) by up to max_new_tokens tokens; returns (B, T + n).

        The prompt is read in one forward call, then each new token is fed alone through the
        cache, so a step costs what one position costs, never the whole prefix again.
        temperature=0 is greedy decoding. A row that emits one of `stop_tokens` is finished: its
        later positions repeat that token, and generation ends once every row is finished.
        Runs in eval mode (no dropout) and restores the previous mode.
        """
        B, T = idx.shape
        limit = self.max_context
        if limit is not None and T + max_new_tokens - 1 > limit:  # the last token needs no forward
            raise UserError(
                f"a {T}-token prompt plus {max_new_tokens} new tokens exceeds this {self.family} "
                f"model's {limit}-token context; shorten the prompt or ask for fewer tokens."
            )
        was_training = self.training
        self.eval()
        try:
            stops = torch.tensor(sorted(set(stop_tokens or ())), dtype=idx.dtype, device=idx.device)
            done = torch.zeros(B, dtype=torch.bool, device=idx.device)
            fill = torch.zeros(B, dtype=idx.dtype, device=idx.device)  # the stop token of finished rows
            cache = self.new_cache(B)
            logits = self(idx, cache)[:, -1]  # (B, V)
            out = [idx]
            for step in range(max_new_tokens):
                nxt = sample(logits, temperature, top_k, generator)  # (B,)
                nxt = torch.where(done, fill, nxt)
                stopped = torch.isin(nxt, stops) & ~done
                fill, done = torch.where(stopped, nxt, fill), done | stopped
                out.append(nxt[:, None])
                if bool(done.all()) or step == max_new_tokens - 1:
                    break
                logits = self(nxt[:, None], cache)[:, -1]  # (B, V): one new token through the cache
            return torch.cat(out, dim=1)
        finally:
            self.train(was_training)

    def num_params(self) -> int:
        """Number of parameters; tied tensors count once (nn.Module.parameters deduplicates)."""
        return sum(p.numel() for p in self.parameters())

    def save(self, directory: str | os.PathLike) -> Path:
        """Write config.json and model.safetensors into `directory` (created if needed).

        Each file is written under a temporary name and then renamed, so an interrupted save never
        leaves a half-written checkpoint under the real names. Tied weights are stored once.
        """
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"family": self.family, **to_dict(self.config)}
        atomic_write(
            path / WEIGHTS_FILE,
            lambda tmp: safetensors.torch.save_model(self, str(tmp), metadata={"family": self.family}),
        )
        write_json(path / CONFIG_FILE, meta)
        return path


def check_safetensors(path: Path) -> None:
    """Refuse a truncated or garbled safetensors file in one sentence, before reading any tensor.

    The format is an 8-byte little-endian header length, a JSON header giving each tensor's byte
    range, then the data: the file must be exactly as long as the header says."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        header = f.read(n) if 0 < n <= size - 8 else b""
    try:
        tensors = json.loads(header) if header else None
    except (ValueError, UnicodeDecodeError):
        tensors = None
    if not isinstance(tensors, dict):
        raise UserError(f"{path} is not a safetensors file (its header is unreadable); save the checkpoint again.")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in tensors.items() if k != "__metadata__"), default=0)
    except (KeyError, IndexError, TypeError, ValueError):
        raise UserError(f"{path} has a garbled safetensors header; save the checkpoint again.") from None
    expected = 8 + n + end
    if size != expected:
        raise UserError(
            f"{path} is truncated or damaged ({size} bytes, its header promises {expected}); save the checkpoint again."
        )


def sample(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from logits (B, V): argmax at temperature 0, else sample from
    softmax(logits / temperature) restricted to the top_k most likely tokens. Returns (B,)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
