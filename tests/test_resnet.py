"""ResNet shapes, the equal-parameter pairing of wide vs concatenated networks, CAT's head init, the
ColoredMNIST MLP, frozen BatchNorm, the optimizer additions and the linear probe on a separable fixture."""

import pytest
import torch

from repro.models.resnet import (
    ColoredMLP,
    ResNet,
    ResNetConfig,
    Towers,
    backbone_params,
    matched_width,
    resnet_backbone_params,
)
from repro.runtime import RunContext
from repro.track import Tracker
from repro.train.optim import OptimConfig, build_optimizer, lr_at
from repro.train.probe import ProbeConfig, probe_accuracy


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny tensors; on 2 shared cores a second thread only spins


@pytest.mark.parametrize("width", [8, 16, 32, 64])
def test_resnet_shapes(width):
    model = ResNet(ResNetConfig(width=width, n_class=7)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model.features(x).shape == (2, 8 * width) and model(x).shape == (2, 7)


def test_resnet18_parameter_counts():
    assert resnet_backbone_params(64) == 11_168_832  # the usual CIFAR ResNet18 without its classifier
    assert resnet_backbone_params(8) == 175_752  # ~0.18 M, the cpu presets' width (reference §4.1)


@pytest.mark.parametrize(("width", "n"), [(8, 2), (8, 4), (16, 4), (64, 4)])
def test_wide_network_matches_n_concatenated_networks(width, n):
    wide = matched_width(width, n)
    target = n * resnet_backbone_params(width)
    assert abs(resnet_backbone_params(wide) - target) / target < 0.06
    towers = Towers.build(n, ResNetConfig(width=width))
    assert backbone_params(towers) == target  # CATn / n x ResNet: exactly n members
    if n == 4:
        assert wide == 2 * width  # widening by 2 multiplies the parameters by ~4


def test_towers_concatenate_features_and_cat_head_is_the_logit_average():
    torch.manual_seed(0)
    members = [ResNet(ResNetConfig(width=4, n_class=3)).eval() for _ in range(3)]
    cat = Towers.from_members(members).eval()
    x = torch.randn(5, 3, 32, 32)
    feats = cat.features(x)
    assert feats.shape == (5, 3 * 32)
    assert torch.allclose(feats[:, 32:64], members[1].features(x))
    mean_logits = torch.stack([m(x) for m in members]).mean(0)
    assert torch.allclose(cat(x), mean_logits, atol=1e-5)
    joint = Towers.build(2, ResNetConfig(width=4, n_class=3))
    assert joint(x).shape == (5, 3) and joint.features(x).shape == (5, 64)


def test_frozen_batchnorm_stays_in_eval_mode():
    model = ResNet(ResNetConfig(width=4, n_class=2))
    model.freeze_bn = True
    model.train()
    assert model.training and not model.bn1.training
    before = model.bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32) + 3)
    assert torch.equal(before, model.bn1.running_mean)


def test_colored_mlp_shapes_and_init():
    model = ColoredMLP(hidden=390)
    x = torch.rand(4, 2, 14, 14)
    assert model.features(x).shape == (4, 390) and model(x).shape == (4, 1)
    assert sum(p.numel() for p in model.parameters()) == 392 * 390 + 390 + 390 * 390 + 390 + 390 + 1
    assert torch.all(model.lin1.bias == 0) and ColoredMLP(64, n_out=2)(x).shape == (4, 2)


def test_sgd_and_multistep_schedule():
    cfg = OptimConfig(
        optimizer="sgd", lr=0.1, nesterov=True, schedule="multistep", milestones=(0.5, 0.75), weight_decay=5e-4
    )
    opt = build_optimizer(torch.nn.Linear(3, 2), cfg)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"]
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]  # no decay on the bias by default
    assert [round(lr_at(s, 100, cfg), 6) for s in (0, 49, 50, 74, 75, 99)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    everything = build_optimizer(torch.nn.Linear(3, 2), OptimConfig(optimizer="sgd", weight_decay=1e-4, decay_all=True))
    assert [g["weight_decay"] for g in everything.param_groups] == [1e-4, 1e-4]
    assert isinstance(build_optimizer(torch.nn.Linear(3, 2), OptimConfig()), torch.optim.AdamW)  # default unchanged


def test_linear_probe_learns_a_linearly_separable_fixture(tmp_path):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, 3, generator=gen)

    def sample(n):
        x = torch.randn(n, 16, generator=gen) * 2 + 1
        return x, (x @ w).argmax(1)  # three classes split by hyperplanes

    (x_tr, y_tr), (x_te, y_te) = sample(600), sample(300)
    tracker = Tracker(tmp_path, "probe", {}, use_wandb=False)
    ctx = RunContext("probe-test", "smoke", "default", 0, tmp_path, torch.device("cpu"), tracker)
    cfg = ProbeConfig(epochs=20, batch_size=64, lr=0.1, weight_decays=(1e-4, 1e-2))
    out = probe_accuracy(x_tr, y_tr, x_te, y_te, 3, cfg, ctx, "sep", seed=0)
    tracker.close()
    assert out["test_acc"] > 0.93 and out["weight_decay"] in (1e-4, 1e-2)
    assert ctx.load_state("sep.probe") == out  # cached for a resumed run
