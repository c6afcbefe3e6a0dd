"""The shared backbone cache (issue 17): a second run loads what the first trained (same weights,
logged as a hit), a different recipe or different data misses, a tampered entry misses, the three
transfer experiments' cpu presets resolve to the same member-0 backbone, and `repro cache list|clear`."""

import json

import pytest
import torch
from typer.testing import CliRunner
from vision_fixtures import write_cifar_pickles

from repro import registry, runtime
from repro.cache import ModelCache, spec_hash
from repro.cli import app
from repro.experiments._transfer import cpu_backbone, member_seed


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.delenv("REPRO_CACHE_DIR", raising=False)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_cifar_pickles(tmp_path_factory.mktemp("data") / "cifar10")


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]


def _launch(name, cifar, out, cache, extra=()):
    overrides = [f"data.path={cifar}", "data.cache_dir=none", f"pretrain.cache_dir={cache}", *extra]
    return runtime.launch(registry.get(name), preset="smoke", overrides=overrides, out=out, wandb=False)


def test_second_run_loads_the_cached_backbones(cifar, tmp_path, capsys):
    cache = tmp_path / "cache"
    first = _rows(_launch("wd-transfer", cifar, tmp_path / "a", cache))
    hits = [r for r in first if r["metric"] == "cache_hit"]
    assert hits and all(r["value"] == 0 for r in hits)
    entries = ModelCache(cache).entries()
    assert len(entries) == len(hits)  # wd=0, wd=5e-4 and the 2x-epochs convergence backbone
    for e in entries:
        folder = cache / "backbones" / e["hash"]
        assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "curve.jsonl", "meta.json"}
        curve = [json.loads(line) for line in (folder / "curve.jsonl").read_text().splitlines()]
        assert curve and {"step", "loss", "lr"} <= set(curve[0])
    capsys.readouterr()

    second_dir = _launch("wd-transfer", cifar, tmp_path / "b", cache)  # another run root, the same cache
    second = _rows(second_dir)
    assert all(r["value"] == 1 for r in second if r["metric"] == "cache_hit")
    assert "backbone cache hit" in capsys.readouterr().err
    logged = [json.loads(line) for line in (second_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(v == 1.0 for rec in logged for k, v in rec.items() if k.endswith("/cache_hit"))

    def accs(rows):
        return sorted((r["model"], r["metric"], r["value"]) for r in rows if r["metric"].startswith("test_acc"))

    assert accs(second) == accs(first)  # the very same weights
    # the original training time travels with the entry (what a hit saves)
    saved = [r["value"] for r in second if r["metric"] == "train_s"]
    assert saved == [r["value"] for r in first if r["metric"] == "train_s"]


def test_other_recipe_or_data_misses_and_a_tampered_entry_is_not_trusted(cifar, tmp_path):
    cache = tmp_path / "cache"
    _launch("very-large-dropout", cifar, tmp_path / "a", cache)
    (first,) = ModelCache(cache).entries()
    n = 1
    for extra in (["pretrain.epochs=2"], ["data.train_per_class=12"], ["pretrain.optim.weight_decay=0.001"]):
        rows = _rows(_launch("very-large-dropout", cifar, tmp_path / "b" / extra[0], cache, extra))
        assert [r["value"] for r in rows if r["metric"] == "cache_hit"] == [0.0], extra
    assert len(ModelCache(cache).entries()) == n + 3
    # an entry whose stored spec no longer matches its hash is a miss, not a silent reuse
    config = cache / "backbones" / first["hash"] / "config.json"
    spec = json.loads(config.read_text())
    spec["spec"]["seed"] = 12345
    config.write_text(json.dumps(spec))
    rows = _rows(_launch("very-large-dropout", cifar, tmp_path / "c", cache))
    assert [r["value"] for r in rows if r["metric"] == "cache_hit"] == [0.0]


def test_spec_hash_is_order_free_and_value_sensitive():
    a = {"arch": {"width": 8, "blocks": (2, 2)}, "seed": 1}
    b = {"seed": 1, "arch": {"blocks": [2, 2], "width": 8}}
    assert spec_hash(a) == spec_hash(b)
    assert spec_hash(a) != spec_hash({**a, "seed": 2})


def test_cpu_presets_share_one_member0_backbone():
    """wd-transfer (task 0, wd 5e-4), rich-ensemble (member 0) and very-large-dropout pretrain the same
    network at the cpu preset: same recipe, same source data, same seed rule -> one cache entry."""
    wd, re_, vld = (registry.get(n).config("cpu") for n in ("wd-transfer", "rich-ensemble", "very-large-dropout"))
    assert wd.pretrain == re_.pretrain == vld.pretrain == cpu_backbone()
    assert 5e-4 in wd.weight_decays and cpu_backbone().optim.weight_decay == 5e-4
    assert wd.tasks[0].split(">")[0] == re_.tasks[0].split(">")[0] == vld.source == "cifar10:0-4"
    assert wd.data == re_.data == vld.data
    assert member_seed(3) == member_seed(3, 0) != member_seed(3, 1)


def test_cache_cli_lists_and_clears(cifar, tmp_path):
    cache = tmp_path / "cache"
    _launch("very-large-dropout", cifar, tmp_path / "runs", cache)
    runner = CliRunner()
    listed = runner.invoke(app, ["cache", "list", "--cache-dir", str(cache)])
    assert listed.exit_code == 0, listed.output
    (entry,) = ModelCache(cache).entries()
    assert entry["hash"] in " ".join(listed.output.split()).replace(" ", "") or entry["hash"][:8] in listed.output
    bad = runner.invoke(app, ["cache", "clear", "0123456789abcdef", "--cache-dir", str(cache)])
    assert bad.exit_code == 2 and "no cached backbone" in bad.output
    cleared = runner.invoke(app, ["cache", "clear", "--yes", "--cache-dir", str(cache)])
    assert cleared.exit_code == 0 and "removed 1" in cleared.output
    assert ModelCache(cache).entries() == []


# ---- content-addressed means checked (issue 26) -------------------------------------------------


def _entry(cache_dir, seed: int = 0):
    """A small entry written through ModelCache.save: its spec, its folder and the model."""
    store = ModelCache(cache_dir)
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    spec = {"arch": {"width": 4}, "data": {"dataset": "toy"}, "recipe": {"epochs": 1}, "seed": seed}
    folder = store.save(spec, model, [{"step": 0, "loss": 1.0, "lr": 0.1}], {"test_acc": 0.5, "train_s": 3.0})
    return store, spec, folder, model


def _flip_a_bit(path, offset: int = -3):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda f: _flip_a_bit(f / "model.safetensors"), "model.safetensors whose sha256 differs"),
        (lambda f: _flip_a_bit(f / "curve.jsonl", 2), "curve.jsonl whose sha256 differs"),
        (lambda f: (f / "meta.json").unlink(), "lacks meta.json"),
        (lambda f: (f / "config.json").write_text("{damaged"), "unreadable config.json"),
        (lambda f: (f / "config.json").write_text("[1, 2]"), "unreadable config.json"),
        (lambda f: (f / "config.json").write_text(json.dumps({"spec": {"seed": 9}})), "not the one its name"),
        (
            lambda f: (f / "config.json").write_text(
                json.dumps({k: v for k, v in json.loads((f / "config.json").read_text()).items() if k != "sha256"})
            ),
            "written before entries recorded",
        ),
    ],
)
def test_a_damaged_entry_is_detected_said_and_removed(tmp_path, capsys, damage, problem):
    store, spec, folder, model = _entry(tmp_path)
    fresh = torch.nn.Linear(4, 3)
    assert store.load(spec, fresh)["test_acc"] == 0.5 and torch.equal(fresh.weight, model.weight)
    damage(folder)
    (entry,) = store.entries()  # listed, damaged or not
    assert problem in entry["problem"]
    capsys.readouterr()
    assert store.load(spec, torch.nn.Linear(4, 3)) is None  # a miss: the caller trains again
    err = capsys.readouterr().err
    assert str(folder) in "".join(err.split())  # the console may wrap a long path
    err = " ".join(err.split())
    assert problem in err and "removed and trained again" in err
    assert not folder.exists()
    _entry(tmp_path)  # the retrained entry is sound again
    assert store.problem(folder, spec) is None


def test_cache_list_and_clear_work_on_damaged_entries(tmp_path):
    store, _, folder, _ = _entry(tmp_path)
    _, _, sound, _ = _entry(tmp_path, seed=1)
    (folder / "config.json").write_text("{not json")
    (tmp_path / "backbones" / ".0123456789abcdef.99999999.deadbeef.tmp").mkdir()  # a killed writer's folder
    runner = CliRunner()
    listed = runner.invoke(app, ["cache", "list", "--cache-dir", str(tmp_path)])
    text = " ".join(listed.output.split())
    assert listed.exit_code == 0 and "Traceback" not in listed.output, listed.output
    assert "damaged" in text and "1 damaged" in text and "2 entries" in text
    cleared = runner.invoke(app, ["cache", "clear", folder.name, "--cache-dir", str(tmp_path)])
    assert cleared.exit_code == 0 and "removed 1" in cleared.output, cleared.output
    assert [e["hash"] for e in store.entries()] == [sound.name]
    (sound / "config.json").write_text("[]")
    cleared = runner.invoke(app, ["cache", "clear", "--yes", "--cache-dir", str(tmp_path)])
    assert cleared.exit_code == 0 and "removed 1" in cleared.output, cleared.output
    assert list((tmp_path / "backbones").iterdir()) == []  # the temporary folder went too


def test_a_killed_writers_folder_is_removed_by_the_next_save(tmp_path):
    debris = tmp_path / "backbones" / ".0123456789abcdef.99999999.deadbeef.tmp"  # PID 99999999 is not running
    debris.mkdir(parents=True)
    (debris / "model.safetensors").write_bytes(b"half")
    _entry(tmp_path)
    assert not debris.exists()


def test_a_flipped_bit_in_a_cached_backbone_is_retrained_not_used(cifar, tmp_path, capsys):
    """The issue's case: a bit flipped in a cached backbone's weights changed the results silently."""
    cache = tmp_path / "cache"
    first = _rows(_launch("very-large-dropout", cifar, tmp_path / "a", cache))
    (entry,) = ModelCache(cache).entries()
    _flip_a_bit(cache / "backbones" / entry["hash"] / "model.safetensors", -100)
    capsys.readouterr()
    second = _rows(_launch("very-large-dropout", cifar, tmp_path / "b", cache))
    assert "sha256 differs" in " ".join(capsys.readouterr().err.split())
    assert [r["value"] for r in second if r["metric"] == "cache_hit"] == [0.0]

    def accs(rows):
        return sorted((r["model"], r["metric"], r["value"]) for r in rows if "acc" in r["metric"])

    assert accs(second) == accs(first)  # retrained: the same weights as the first run, not the damaged ones
    assert ModelCache(cache).entries()[0]["problem"] is None
