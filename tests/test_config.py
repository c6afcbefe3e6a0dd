from dataclasses import dataclass, field
from typing import Literal

import pytest

from repro import config as cfglib
from repro.errors import UserError


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10
    name: str = "x"


@dataclass
class Outer:
    heads: tuple[int, ...] = (1, 3)
    kind: Literal["dot", "gaussian"] = "dot"
    flag: bool = False
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_overrides_parse_each_type():
    cfg = cfglib.apply_overrides(
        Outer(),
        [
            "heads=2,6",
            "kind=gaussian",
            "flag=true",
            "limit=7",
            "inner.lr=0.5",
            "inner.steps=3",
            "inner.name=a=b",
        ],
    )
    assert cfg.heads == (2, 6) and cfg.kind == "gaussian" and cfg.flag is True and cfg.limit == 7
    assert cfg.inner == Inner(lr=0.5, steps=3, name="a=b")
    assert cfglib.apply_overrides(Outer(limit=3), ["limit=none"]).limit is None


def test_overrides_do_not_mutate_the_preset():
    base = Outer()
    cfglib.apply_overrides(base, ["inner.steps=99"])
    assert base.inner.steps == 10


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("inner.steps=1.5", "--set inner.steps=1.5: expected an integer."),
        ("inner.lr=fast", "--set inner.lr=fast: expected a number."),
        ("flag=maybe", "--set flag=maybe: expected true or false."),
        ("kind=cosine", "--set kind=cosine: expected one of 'dot', 'gaussian'."),
        ("heads=a,b", "--set heads=a,b: expected a comma-separated list of integers."),
    ],
)
def test_wrong_type_names_key_and_type(override, message):
    with pytest.raises(UserError) as err:
        cfglib.apply_overrides(Outer(), [override])
    assert str(err.value) == message


def test_unknown_keys_list_the_known_ones():
    with pytest.raises(UserError, match=r"unknown key 'stepz' under 'inner'; known keys: lr, name, steps"):
        cfglib.apply_overrides(Outer(), ["inner.stepz=3"])
    with pytest.raises(UserError, match="unknown key 'nope'"):
        cfglib.apply_overrides(Outer(), ["nope=1"])
    with pytest.raises(UserError, match="is a group"):
        cfglib.apply_overrides(Outer(), ["inner=3"])
    with pytest.raises(UserError, match="key=value"):
        cfglib.apply_overrides(Outer(), ["inner.steps"])


def test_yaml_round_trip(tmp_path):
    cfg = cfglib.apply_overrides(Outer(), ["heads=3", "inner.lr=0.1"])
    cfglib.dump_yaml(cfg, tmp_path / "c.yaml")
    back = cfglib.from_dict(Outer, cfglib.load_yaml(tmp_path / "c.yaml"))
    assert back == cfg


def test_data_dir_reaches_every_dataset_config_of_an_experiment():
    """`repro run --data-dir DIR` is passed through the config: launch fills each `data_dir` field."""
    from repro import registry
    from repro.config import fill_field

    cfg = registry.get("tinystories-ood").config("smoke")
    filled = fill_field(cfg, "data_dir", "/data")
    assert filled.data.data_dir == filled.ood.data_dir == "/data"
    assert cfg.data.data_dir is None  # a copy: the preset is untouched
    assert filled.model == cfg.model and filled.data.dataset == cfg.data.dataset
