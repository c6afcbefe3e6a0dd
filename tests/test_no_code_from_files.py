"""No file the suite reads can run code (issue 26): resume state, FSDP checkpoints and CIFAR batches.

Each test plants a pickle whose `__reduce__` would create a marker file when unpickled, in the place a
copied or shared run directory (or a `--data-dir`) could hold it, and shows the marker never appears
while the reader refuses the file in one sentence."""

from __future__ import annotations

import io
import math
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from repro import statefile
from repro.data import vision
from repro.errors import UserError
from repro.runtime import RunContext
from repro.track import Tracker
from repro.train import distributed
from repro.train.optim import LoopConfig

sys.path.insert(0, str(Path(__file__).parent))
from fault_toy import FaultToy  # noqa: E402
from vision_fixtures import write_cifar_pickles  # noqa: E402

from repro import runtime  # noqa: E402


class Planted:
    """Unpickling this runs `touch MARKER` (what an attacker's file would do with a real command)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_the_planted_pickle_does_run_under_plain_pickle(tmp_path):
    """The control: the payload the other tests plant is live."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Planted(marker)))
    assert marker.exists()


def test_state_files_keep_every_kind_of_value_exactly(tmp_path):
    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight  # tied weights share storage: stored once, loaded equal
    opt = torch.optim.AdamW(model.parameters())
    model(torch.tensor([1, 2])).sum().backward()
    opt.step()
    value = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "losses": [0.5, math.nan, math.inf, -math.inf],
        "rng": torch.get_rng_state(),
        "view": torch.arange(10)[2:8:2],
        4096: (np.int64(3), np.float32(0.25), np.bool_(True), np.arange(6).reshape(2, 3)),
        ("a", 1): [True, None, "text", 2**70],
    }
    statefile.save(value, tmp_path / "s.safetensors")
    back = statefile.load(tmp_path / "s.safetensors")
    assert list(back) == list(value)
    for k, v in value["model"].items():
        assert torch.equal(back["model"][k], v)
    assert back["optimizer"]["param_groups"] == value["optimizer"]["param_groups"]  # betas stay a tuple
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], value["optimizer"]["state"][0]["exp_avg"])
    assert back["losses"][0] == 0.5 and math.isnan(back["losses"][1]) and back["losses"][2:] == [math.inf, -math.inf]
    assert torch.equal(back["rng"], value["rng"]) and back["view"].tolist() == [2, 4, 6]
    ints, f32, flag, array = back[4096]
    assert (type(ints), type(f32), type(flag)) == (np.int64, np.float32, np.bool_) and f32 == 0.25
    assert np.array_equal(array, value[4096][3])
    assert back[("a", 1)] == [True, None, "text", 2**70]
    with pytest.raises(TypeError, match="cannot save a Planted"):
        statefile.save({"x": Planted(tmp_path / "m")}, tmp_path / "t.safetensors")


def _finished_toy(out: Path) -> Path:
    return runtime.launch(FaultToy(), preset="smoke", overrides=["steps=10"], out=out, wandb=False)


def test_a_planted_legacy_pt_state_does_not_run_and_is_one_sentence(tmp_path):
    run_dir = _finished_toy(tmp_path)
    (run_dir / "rows.jsonl").unlink()  # as if killed before the end
    (run_dir / "state" / "toy.train.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({"step": 3, "payload": Planted(marker)}, run_dir / "state" / "toy.train.pt")
    with pytest.raises(UserError, match=r"cannot be read safely .* rerun with --force") as err:
        _finished_toy(tmp_path)
    assert not marker.exists()
    assert len(str(err.value).splitlines()) == 1


def test_a_legacy_pt_state_that_loads_safely_still_resumes(tmp_path):
    run_dir = _finished_toy(tmp_path)
    rows = (run_dir / "rows.jsonl").read_text()
    state = run_dir / "state" / "toy.train.safetensors"
    torch.save(statefile.load(state), state.with_suffix(".pt"))  # what an older version wrote
    state.unlink()
    (run_dir / "rows.jsonl").unlink()
    _finished_toy(tmp_path)
    assert (run_dir / "rows.jsonl").read_text() == rows  # resumed at its last step: the same rows


def test_a_damaged_state_file_is_one_sentence(tmp_path):
    run_dir = _finished_toy(tmp_path)
    (run_dir / "rows.jsonl").unlink()
    (run_dir / "state" / "toy.train.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(UserError, match="cannot be read .* delete it to redo that stage"):
        _finished_toy(tmp_path)


def test_a_planted_fsdp_checkpoint_does_not_run(tmp_path):
    """DCP itself unpickles `.metadata` and every non-tensor entry; ours admits DCP's classes only."""
    ctx = RunContext("x", "smoke", "default", 0, tmp_path, torch.device("cpu"), Tracker(tmp_path, "x", {}, False))
    loop = LoopConfig(strategy="fsdp")
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    marker = tmp_path / "ran"
    opt.param_groups[0]["note"] = Planted(marker)  # a non-tensor entry: DCP stores it as a pickle
    distributed.save_state(ctx, "m.train", model, opt, loop, {"step": 1, "rng": torch.get_rng_state()})
    assert not marker.exists()
    with pytest.raises(UserError, match="cannot be read safely"):
        distributed.load_state(ctx, "m.train", model, opt, loop)
    assert not marker.exists()
    opt.param_groups[0]["note"] = "plain"
    distributed.save_state(ctx, "m.train", model, opt, loop, {"step": 2, "rng": torch.get_rng_state()})
    assert distributed.load_state(ctx, "m.train", model, opt, loop)["step"] == 2  # a clean one loads
    metadata = tmp_path / "state" / "m.train.dcp" / ".metadata"
    metadata.write_bytes(pickle.dumps(Planted(marker)))
    with pytest.raises(UserError, match="cannot be read safely"):
        distributed.load_state(ctx, "m.train", model, opt, loop)
    assert not marker.exists()
    ctx.tracker.close()


def test_a_planted_cifar_batch_does_not_run_and_is_one_sentence(tmp_path):
    root = write_cifar_pickles(tmp_path / "c10", per_class_train=1, per_class_test=1)
    marker = tmp_path / "ran"
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({b"data": Planted(marker), b"labels": [0]}))
    with pytest.raises(UserError, match="is not a CIFAR python batch .*replace it"):
        vision.load_images("cifar10", "test", str(root), cache_dir=None)
    assert not marker.exists()
    batch.write_bytes(pickle.dumps({b"data": np.array([Planted(marker)], dtype=object), b"labels": [0]}))
    with pytest.raises(UserError, match="is not a CIFAR python batch"):
        vision.load_images("cifar10", "test", str(root), cache_dir=None)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_still_read(tmp_path, protocol):
    """The official batches are Python 2 pickles (protocol 2); copies re-saved by Python 3 differ."""
    data = np.random.default_rng(0).integers(0, 256, (4, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [0, 1, 2, 3], b"data": data}
    batch[b"filenames"] = [b"a.png", b"b.png", b"c.png", b"d.png"]
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    images, labels = vision.read_cifar_pickles([path])
    assert np.array_equal(images, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)) and labels.tolist() == [0, 1, 2, 3]
    assert isinstance(vision._CifarUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load(), dict)
