"""The `paper` presets' data path without the network (issue 17): CIFAR-10/100 and PACS "through the
hub" are small generated stand-ins served by a fake `datasets.load_dataset`, and DomainBed's own folder
layout is generated on disk; the transfer experiments then run on them end to end."""

import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from vision_fixtures import class_images, write_cifar_pickles

from repro import registry, runtime
from repro.data import domainbed
from repro.errors import UserError
from repro.experiments._transfer import TransferData, load_task

PACS = domainbed.DOMAINBED["PACS"].domains


def _hub_dataset(n_class: int, per_class: int, image_col: str, label_col: str, seed: int, size: int = 32):
    labels = np.repeat(np.arange(n_class), per_class)
    imgs = class_images(labels % 10, size, 3, seed)
    features = datasets.Features({image_col: datasets.Image(), label_col: datasets.Value("int64")})
    rows = {image_col: [Image.fromarray(i) for i in imgs], label_col: labels.tolist()}
    return datasets.Dataset.from_dict(rows, features=features)


def _pacs_hub(per: int = 3):
    labels = np.tile(np.arange(7), per * 4)
    domains = np.repeat(PACS, 7 * per).tolist()
    imgs = class_images(labels, 40, 3, 5)
    features = datasets.Features(
        {"image": datasets.Image(), "domain": datasets.Value("string"), "label": datasets.Value("int64")}
    )
    rows = {"image": [Image.fromarray(i) for i in imgs], "domain": domains, "label": labels.tolist()}
    return datasets.Dataset.from_dict(rows, features=features)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """`datasets.load_dataset` for the three hub ids the paper presets use, and nothing else."""
    torch.set_num_threads(1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    served = {
        ("uoft-cs/cifar10", "train"): _hub_dataset(10, 6, "img", "label", 0),
        ("uoft-cs/cifar10", "test"): _hub_dataset(10, 3, "img", "label", 1),
        ("uoft-cs/cifar100", "train"): _hub_dataset(100, 2, "img", "fine_label", 2),
        ("uoft-cs/cifar100", "test"): _hub_dataset(100, 1, "img", "fine_label", 3),
        ("flwrlabs/pacs", "train"): _pacs_hub(),
    }
    calls = []

    def load_dataset(hub_id, split=None, **kwargs):
        calls.append((hub_id, split))
        if (hub_id, split) not in served:
            raise FileNotFoundError(hub_id)
        return served[(hub_id, split)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_cifar10_to_cifar100_task_through_the_hub(fake_hub, tmp_path):
    data = load_task("cifar10>cifar100", TransferData(cache_dir=str(tmp_path / "cache")))  # the paper task
    assert data.source_train.n_class == 10 and data.target_train.n_class == 100
    assert data.source_train.x.shape == (60, 3, 32, 32) and len(data.target_test.y) == 100
    assert {c[0] for c in fake_hub} == {"uoft-cs/cifar10", "uoft-cs/cifar100"}
    # the decoded arrays are cached: a second load does not ask the hub again
    n = len(fake_hub)
    load_task("cifar10>cifar100", TransferData(cache_dir=str(tmp_path / "cache")))
    assert len(fake_hub) == n


@pytest.mark.parametrize("name", ["wd-transfer", "rich-ensemble"])
def test_transfer_experiments_run_on_hub_cifar100(name, fake_hub, tmp_path):
    overrides = ["tasks=cifar10:0-1>cifar100:0-4", f"data.cache_dir={tmp_path / 'cache'}"]
    run_dir = runtime.launch(registry.get(name), preset="smoke", overrides=overrides, out=tmp_path, wandb=False)
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]
    assert any(r["split"] == "target" and r["metric"] == "probe_acc" for r in rows)


def _pacs_folder(root, per: int = 3, size: int = 24):
    for d, dom in enumerate(PACS):
        for c, cls in enumerate(("dog", "horse")):
            folder = root / "PACS" / dom / cls
            folder.mkdir(parents=True)
            for i, img in enumerate(class_images(np.full(per, c + 2 * d), size, 3, d)):
                Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


def test_domainbed_folder_layout_and_cache(tmp_path, monkeypatch):
    root = _pacs_folder(tmp_path / "dbdata")
    cache = str(tmp_path / "cache")
    out = domainbed.load_domainbed("PACS", str(root), cache, image_size=16)
    assert list(out) == list(PACS)
    images, labels = out["sketch"]
    assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8 and sorted(set(labels)) == [0, 1]
    monkeypatch.setattr(domainbed, "_read_folder", lambda *a: (_ for _ in ()).throw(AssertionError("read again")))
    again = domainbed.load_domainbed("PACS", str(root / "PACS"), cache, image_size=16)  # the folder itself works too
    assert np.array_equal(again["sketch"][0], images)


def test_domainbed_hub_copy_and_one_sentence_errors(fake_hub, tmp_path):
    out = domainbed.load_domainbed("PACS", None, str(tmp_path / "cache"), image_size=16)
    assert [len(v[1]) for v in out.values()] == [21] * 4 and ("flwrlabs/pacs", "train") in fake_hub
    with pytest.raises(UserError, match="data.hub_id"):
        domainbed.load_domainbed("VLCS", None, None)
    with pytest.raises(UserError, match="could not be loaded"):
        domainbed.load_domainbed("OfficeHome", None, None, hub_id="someone/office-home")
    with pytest.raises(UserError, match="holds no PACS"):
        domainbed.load_domainbed("PACS", str(tmp_path), None)


def test_very_large_dropout_on_a_domainbed_target(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    cifar = write_cifar_pickles(tmp_path / "cifar10")
    root = _pacs_folder(tmp_path / "dbdata", per=5)
    overrides = [
        f"data.path={cifar}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "target=PACS",
        "domains=",  # all four PACS domains
        "test_domains=sketch",
        "image_size=16",
        f"domainbed_path={root}",
    ]
    exp = registry.get("very-large-dropout")
    run_dir = runtime.launch(exp, preset="smoke", overrides=overrides, out=tmp_path / "runs", wandb=False)
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]
    test_rows = [r for r in rows if r["split"] == "ood_test" and r["metric"] == "acc"]
    assert test_rows and all(r["slice_value"].startswith("sketch|") for r in test_rows)
    assert exp.config("paper").target == "PACS"
