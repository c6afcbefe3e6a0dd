"""Loss evaluations through the LM interface only (`model.loss(idx, targets, reduction="none")`)."""

from __future__ import annotations

import torch

from repro.models.lm import LanguageModel


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
