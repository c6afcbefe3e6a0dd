"""The three-moons sky (Memory Mosaics, three-moons figure; official `ThreeMoons/planets.py`).

Three moons circle at periods p1, p2, p3 (time units); an observation is the 6-vector
(sin a1, cos a1, sin a2, cos a2, sin a3, cos a3) with a_i = 2 pi t / p_i + 0.3, without noise.
The sky recurs only after the full period LCM(p1, p2, p3); each moon recurs after its own period.

Period triples come from {0.5, 1, ..., 3.5}; the 9 with the smallest full period are used, 8 for
training and 1 held out. Which LCM-6 triples make the cut depends on numpy's sort tie-breaking in
the official code, so the split is pinned here: it is the one numpy 2.4's default sort gives.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

PERIOD_CHOICES = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5)
TRAIN_TRIPLES = (
    (0.5, 1.0, 2.0),
    (0.5, 1.0, 1.5),
    (0.5, 1.0, 3.0),
    (0.5, 1.5, 3.0),
    (1.0, 1.5, 3.0),
    (0.5, 1.0, 2.5),
    (1.0, 1.5, 2.0),
    (0.5, 1.5, 2.0),
)
HELDOUT_TRIPLE = (1.0, 2.0, 3.0)
FIGURE_TRAIN_TRIPLE = (0.5, 1.0, 2.5)  # the training triple the official figure shows
PHASE = 0.3


def full_period(triple: tuple[float, ...]) -> float:
    """LCM of the periods at 0.1 precision (as the official code computes it)."""
    lcm = 1
    for p in triple:
        lcm = math.lcm(lcm, round(p * 10))
    return lcm / 10


def smallest_lcm_triples(count: int = 9) -> list[tuple[tuple[float, ...], float]]:
    """All 35 triples sorted by full period (ties kept in combination order), first `count`."""
    triples = list(itertools.combinations(PERIOD_CHOICES, 3))
    return sorted(((t, full_period(t)) for t in triples), key=lambda x: x[1])[:count]


@dataclass(frozen=True)
class Sky:
    """Time grid: `block_size` steps hold `min_periods` repeats of the longest full period (6)."""

    block_size: int = 800
    min_periods: int = 3
    grid_points: int = 10_000
    max_full_period: float = 6.0

    @property
    def steps_per_unit(self) -> float:
        return self.block_size / self.max_full_period / self.min_periods  # 44.4 at block 800

    def period_steps(self, triple: tuple[float, ...]) -> tuple[list[float], float]:
        """Each moon's period and the full period, in observation steps."""
        return [p * self.steps_per_unit for p in triple], full_period(triple) * self.steps_per_unit

    def observe(self, periods: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
        """periods (B, 3) in time units, starts (B,) grid indices -> observations (B, length, 6)."""
        t = (starts[:, None] + torch.arange(length)[None, :]).double() / self.steps_per_unit  # (B, L)
        angle = 2 * math.pi * t[:, :, None] / periods[:, None, :].double() + PHASE  # (B, L, 3)
        obs = torch.stack([angle.sin(), angle.cos()], dim=-1)  # (B, L, 3, 2)
        return obs.flatten(2).float()  # (B, L, 6): sin1, cos1, sin2, cos2, sin3, cos3

    def sample(
        self, triples: tuple[tuple[float, ...], ...], batch: int, length: int, gen: torch.Generator
    ) -> torch.Tensor:
        """`batch` windows of `length` steps, each from a random triple and a random start."""
        pick = torch.randint(len(triples), (batch,), generator=gen)
        periods = torch.tensor(triples, dtype=torch.float64)[pick]  # (B, 3)
        starts = torch.randint(self.grid_points - 2 * self.block_size - 1, (batch,), generator=gen)
        return self.observe(periods, starts, length)
