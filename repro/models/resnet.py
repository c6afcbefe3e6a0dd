"""ResNets and the ColoredMNIST MLP for the rich-features experiments (thesis part 1).

- `ResNet`: the CIFAR-style ResNet18 of the RRL code (`src/resnet_cifar.py`): 3x3 stem, no max-pool,
  four stages of two BasicBlocks at widths w, 2w, 4w, 8w, global average pool, 8w features. w = 64
  is the usual ResNet18 (11.2 M parameters); the cpu presets use w = 8 (0.18 M).
- `matched_width(w, n)`: the "wide" network whose backbone has as many parameters as n concatenated
  width-w networks (the CAT paper compares CAT4 with ResNet50w2 this way; widening by k multiplies
  the parameters by about k^2).
- `Towers`: n backbones whose pooled features are concatenated into one linear head. Trained in one
  episode it is the "n x ResNet (joint)" baseline; built from n separately trained networks it is CATn.
- `ColoredMLP`: the RFC / IRM ColoredMNIST model, 392 -> 390 -> 390 (ReLU) features + a linear head.

Every model has `features(x)` (the representation a probe reads) and `forward(x)` (logits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from repro.models.registry import register_model


@dataclass
class ResNetConfig:
    width: int = 64  # base width w: stage widths are w, 2w, 4w, 8w
    n_class: int = 10
    in_channels: int = 3
    blocks: tuple[int, ...] = (2, 2, 2, 2)  # ResNet18
    dropout: float = 0.0  # on the pooled features only (very large dropout)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class FrozenBNMixin:
    """`freeze_bn = True` keeps every BatchNorm in eval mode (running statistics fixed) even under
    `model.train()`, as DomainBed and the very-large-dropout code do when fine-tuning."""

    freeze_bn: bool = False

    def train(self, mode: bool = True):  # type: ignore[override]
        super().train(mode)  # type: ignore[misc]
        if self.freeze_bn:
            for m in self.modules():  # type: ignore[attr-defined]
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


class ResNet(FrozenBNMixin, nn.Module):
    """CIFAR ResNet18 with a width multiplier."""

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.conv1 = nn.Conv2d(cfg.in_channels, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        stages, c_in = [], w
        for i, n in enumerate(cfg.blocks):
            c_out = w * 2**i
            blocks = [
                BasicBlock(c_in if j == 0 else c_out, c_out, (1 if i == 0 else 2) if j == 0 else 1) for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.n_features = c_in
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(self.n_features, cfg.n_class)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, 8w) pooled features."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.stages(out)  # (B, 8w, H/8, W/8)
        return out.mean(dim=(2, 3))  # global average pool (the 4x4 pool at 32 px)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


class Towers(FrozenBNMixin, nn.Module):
    """n backbones, features concatenated, one shared linear head.

    Trained from scratch in one episode it is the jointly trained "n x ResNet" baseline; built with
    `from_members` out of n separately trained networks it is CATn.
    """

    def __init__(self, towers: Sequence[ResNet], n_class: int, dropout: float = 0.0):
        super().__init__()
        self.towers = nn.ModuleList(towers)
        self.n_features = sum(t.n_features for t in towers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.n_features, n_class)

    @classmethod
    def build(cls, n: int, cfg: ResNetConfig) -> Towers:
        return cls([ResNet(cfg) for _ in range(n)], cfg.n_class, cfg.dropout)

    @classmethod
    def from_members(cls, members: Sequence[ResNet]) -> Towers:
        """CATn of trained members, head initialised at their logit average (RRL's `cat_weights`):
        the concatenated head [W_1 ... W_n] / n gives sum_i W_i f_i / n = the mean of the members' logits."""
        n_class = members[0].head.out_features
        cat = cls(list(members), n_class)
        with torch.no_grad():
            cat.head.weight.copy_(torch.cat([m.head.weight for m in members], dim=1) / len(members))
            cat.head.bias.copy_(torch.stack([m.head.bias for m in members]).mean(0))
        return cat

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([t.features(x) for t in self.towers], dim=1)  # (B, n * 8w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def backbone_params(model: nn.Module) -> int:
    """Parameters without the classifier(s) (how the CAT paper matches sizes); a CATn's unused member
    heads do not count either."""
    return sum(p.numel() for name, p in model.named_parameters() if "head" not in name.split("."))


def resnet_backbone_params(width: int, in_channels: int = 3, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> int:
    return backbone_params(ResNet(ResNetConfig(width=width, in_channels=in_channels, blocks=blocks)))


def matched_width(width: int, n: int, in_channels: int = 3) -> int:
    """The integer base width whose single ResNet is closest in backbone parameters to n width-w ones."""
    target = n * resnet_backbone_params(width, in_channels)
    guess = round(width * math.sqrt(n))
    candidates = range(max(1, guess - 2), guess + 3)
    return min(candidates, key=lambda w: abs(resnet_backbone_params(w, in_channels) - target))


class ColoredMLP(nn.Module):
    """RFC's ColoredMNIST model: `MLP` featurizer 392 -> h -> h (ReLU) and `TopMLP` linear head to
    `n_out` logits (1 for the binary task; one per round in Bonsai's synthesis). Xavier-uniform
    weights and zero biases, as in the IRM / RFC code."""

    def __init__(self, hidden: int = 390, input_dim: int = 2 * 14 * 14, n_out: int = 1):
        super().__init__()
        self.input_dim = input_dim
        self.lin1 = nn.Linear(input_dim, hidden)
        self.lin2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, n_out)
        for lin in (self.lin1, self.lin2, self.head):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.n_features = hidden

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = x.reshape(x.shape[0], self.input_dim)  # (B, 2, 14, 14) -> (B, 392)
        return F.relu(self.lin2(F.relu(self.lin1(out))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def l2(self) -> torch.Tensor:
        """Sum of squared parameters, the RFC code's explicit penalty (all weights and biases)."""
        return sum(p.pow(2).sum() for p in self.parameters())  # type: ignore[return-value]


class LinearProbe(nn.Module):
    """RRL's `RegLog`: BatchNorm1d on the (frozen) features, then a linear layer; head init N(0, 0.01^2)."""

    def __init__(self, n_features: int, n_class: int, batch_norm: bool = True):
        super().__init__()
        self.bn = nn.BatchNorm1d(n_features) if batch_norm else nn.Identity()
        self.head = nn.Linear(n_features, n_class)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(feats))


# The image backbone of the rich-features experiments (the paper's ResNet18 at width 64; our cpu presets
# use narrower ones), registered like the language models: build_model("resnet", width=8, n_class=5).
register_model(
    "resnet", ResNetConfig, ResNet, variants={"debug": {"width": 8}, "paper": {"width": 64}}, label="ResNet-18"
)
