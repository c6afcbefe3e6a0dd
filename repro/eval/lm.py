"""Loss evaluations through the LM interface only (`model.loss(idx, targets, reduction="none")`)."""

from __future__ import annotations

from typing import Any

import torch

from repro.data.text import TokenWindows
from repro.models.lm import LanguageModel
from repro.runtime import RunContext


@torch.no_grad()
def per_position_loss(model: LanguageModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Mean cross-entropy at each position over windows x, y (N, T) -> (T,).

    With windows that start at document starts, position t is "t tokens into a document": the
    curve shows how fast a model adapts to what it has read so far (the paper's Fig. 8 and the
    out-of-distribution test).
    """
    device = next(model.parameters()).device
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    count = torch.zeros(x.shape[1], dtype=torch.float64)
    was_training = model.training
    model.eval()
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        losses = model.loss(xb, yb, reduction="none").double().cpu()  # (b, T)
        valid = (yb != -1).double().cpu()
        total += (losses * valid).sum(0)
        count += valid.sum(0)
    model.train(was_training)
    return (total / count.clamp(min=1)).float()


def mean_loss(model: LanguageModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 16) -> float:
    """Token-weighted mean cross-entropy over windows x, y (N, T)."""
    return per_position_loss(model, x, y, batch_size).mean().item()


def repeated(spans: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each span (N, L) written twice in a row, as next-token windows x, y of shape (N, 2L - 1)."""
    seq = torch.cat([spans, spans], dim=1)  # (N, 2L)
    return seq[:, :-1], seq[:, 1:]


def copy_test(model: LanguageModel, spans: torch.Tensor, batch_size: int = 16) -> dict[str, float]:
    """The in-context copy test: every span (N, L) is fed twice in a row, and the mean loss on the
    first copy is compared with the mean loss on the second, where each token has been seen once
    already. Both averages cover L - 1 targets: the first copy's tokens 1..L-1 and the second copy's
    tokens 1..L-1 (each copy's first token has no context that predicts it).

    Returns {"first", "second", "gain" = first - second}; a model that copies from its context has a
    large gain, one that only knows the language a gain near zero (uniformly random spans: none).
    """
    L = spans.shape[1]
    if L < 2:
        raise ValueError(f"copy_test needs spans of at least 2 tokens, got {L}")
    curve = per_position_loss(model, *repeated(spans), batch_size=batch_size).double()  # (2L - 1,)
    first, second = curve[: L - 1].mean().item(), curve[L:].mean().item()  # targets 1..L-1 of each copy
    return {"first": first, "second": second, "gain": first - second}


def uniform_spans(n: int, length: int, vocab: int, seed: int, exclude: tuple[int, ...] = ()) -> torch.Tensor:
    """`n` spans of `length` token ids drawn uniformly from [0, vocab) minus `exclude` (e.g. end-of-text),
    seeded: (N, L) int64. Nothing in them can be predicted but a repeat."""
    allowed = torch.tensor([i for i in range(vocab) if i not in set(exclude)])
    gen = torch.Generator().manual_seed(seed)
    return allowed[torch.randint(len(allowed), (n, length), generator=gen)]


def copy_rows(
    ctx: RunContext, model: LanguageModel, name: str, spans: dict[str, torch.Tensor], step: int, batch_size: int = 16
) -> list[dict[str, Any]]:
    """`copy_test` on each named set of spans (the split of its rows), as rows `copy_loss` with slice
    `copy` = 1 | 2 (first, second copy) at `step`; cached in the run's state under the model's name and
    step, so a resumed run does not measure again."""
    key = f"{name}.copy.{step}"
    measured = ctx.load_state(key)
    if measured is None:
        measured = {split: copy_test(model, s, batch_size) for split, s in spans.items() if len(s)}
        ctx.save_state(key, measured)
    return [
        ctx.row(model=name, split=split, metric="copy_loss", value=m[k], step=step, slice_key="copy", slice_value=i)
        for split, m in measured.items()
        for i, k in ((1, "first"), (2, "second"))
    ]


def text_copy_spans(
    text: TokenWindows, n: int, length: int, n_ids: int, seed: int, exclude: tuple[int, ...] = ()
) -> dict[str, torch.Tensor]:
    """The two standard copy tests of a language model: `random` (uniform over ids [0, n_ids) minus
    `exclude`) and `validation` (spans at seeded random offsets of the validation text)."""
    return {
        "random": uniform_spans(n, length, n_ids, seed, exclude),
        "validation": torch.from_numpy(text.random_spans(length, n, seed + 1, within_documents=False)),
    }
