"""The three-moons model of Memory Mosaics (v1): one contextual memory layer acting on the raw 6-D
observations, with "complex-linear" maps so that each 2x2 block mixes one moon's (sin, cos) pair as a
complex multiply (the `three-moons` experiment, reference memory-mosaics.md §2).

Not a language model: it predicts the next observation, and retrieves through the same shared
associative memory (`repro.models.memory`) as the language mosaics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from repro.models.layers import merge_heads, split_heads
from repro.models.memory import associative_recall, recall_all
from repro.models.registry import register_model


class ComplexLinear(nn.Module):
    """An n x n complex matrix acting on n complex numbers stored as (re, im) pairs.

    As a real 2n x 2n matrix, block (i, j) is [[a, -b], [b, a]] with a + ib = W[i, j].
    """

    def __init__(self, n: int):
        super().__init__()
        bound = 1 / math.sqrt(2 * n)  # nn.Linear's uniform bound for fan_in = 2n
        self.re = nn.Parameter(torch.empty(n, n).uniform_(-bound, bound))
        self.im = nn.Parameter(torch.empty(n, n).uniform_(-bound, bound))

    def weight(self) -> torch.Tensor:
        n = self.re.shape[0]
        blocks = torch.stack(
            [torch.stack([self.re, -self.im], dim=-1), torch.stack([self.im, self.re], dim=-1)], dim=-2
        )  # (n, n, 2, 2): blocks[i, j] = [[a, -b], [b, a]]
        return blocks.permute(0, 2, 1, 3).reshape(2 * n, 2 * n)

    def magnitude(self) -> torch.Tensor:
        """|W[i, j]| per complex block, (n, n): what the heat maps show."""
        return torch.sqrt(self.re**2 + self.im**2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight().T


@dataclass
class MoonMemoryConfig:
    n_moons: int = 3
    n_head: int = 3  # 1 head with 6-D keys, or 3 heads with 2-D keys: same parameters
    beta: float = 50.0  # fixed bandwidth
    kernel: Literal["dot", "gaussian"] = "dot"  # official code: softmax(beta k.k) on raw keys
    normalize: bool = False


class MoonMemory(nn.Module):
    """y_t = W_z sum_{j<t} softmax_j(beta k_t . k_j) v_j with k_t = W_phi x_t, v_j = W_psi x_{j+1}."""

    def __init__(self, cfg: MoonMemoryConfig):
        super().__init__()
        dim = 2 * cfg.n_moons
        if dim % cfg.n_head:
            raise ValueError(f"n_head={cfg.n_head} must divide the observation size {dim}")
        self.cfg = cfg
        self.w_phi = ComplexLinear(cfg.n_moons)  # keys (= queries)
        self.w_psi = ComplexLinear(cfg.n_moons)  # values, peeking one step ahead
        self.w_z = ComplexLinear(cfg.n_moons)  # output

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return split_heads(x, self.cfg.n_head)  # (B, T, C) -> (B, H, T, d)

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        return self.w_z(merge_heads(y))  # (B, H, T, d) -> (B, T, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T + 1, C) -> predictions of x[:, 1:] (B, T, C). Position 0 has no memory: 0."""
        k = self._heads(self.w_phi(x[:, :-1]))  # (B, H, T, d)
        v = self._heads(self.w_psi(x[:, 1:]))  # (B, H, T, d): pair j stores x_{j+1}
        y = associative_recall(k, k, v, self.cfg.beta, normalize=self.cfg.normalize, kernel=self.cfg.kernel)
        return self._merge(y)

    @torch.no_grad()
    def generate(self, prefix: torch.Tensor, steps: int) -> torch.Tensor:
        """Feed `prefix` (B, c, C), then predict `steps` observations autoregressively (B, steps, C).

        The cache holds keys of every observation so far and the values of completed pairs: pair j's
        value needs x_{j+1}, so each new prediction completes the previous pair.
        """
        k = self._heads(self.w_phi(prefix))  # (B, H, c, d)
        v = self._heads(self.w_psi(prefix[:, 1:]))  # (B, H, c - 1, d)
        outs = []
        for _ in range(steps):
            y = recall_all(
                k[..., -1:, :],
                k[..., :-1, :],
                v,
                self.cfg.beta,
                normalize=self.cfg.normalize,
                kernel=self.cfg.kernel,
            )  # (B, H, 1, d): the newest position reads every earlier pair
            x_next = self._merge(y)  # (B, 1, C)
            outs.append(x_next)
            k = torch.cat([k, self._heads(self.w_phi(x_next))], dim=-2)
            v = torch.cat([v, self._heads(self.w_psi(x_next))], dim=-2)
        return torch.cat(outs, dim=1)


register_model("moon_memory", MoonMemoryConfig, MoonMemory, variants={"debug": {}}, label="three-moons memory")
