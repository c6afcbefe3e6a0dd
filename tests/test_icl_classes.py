"""icl-classes: the episode generator's invariants, the prompts, and the smoke preset end to end."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from repro import registry, results, runtime
from repro.data import icl_classes as ic

CLEAN = dict(noise_fraction=0.0)  # items equal their prototype, so each item names its class


def _world(seed: int = 0, **kw) -> ic.World:
    return ic.World(ic.WorldConfig(**{**CLEAN, **kw}), seed)


def _demos(world: ic.World, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes (n, D) and label tokens (n, D) of the demonstrations of sequences without a query."""
    cfg = world.cfg
    n = tokens.shape[0]
    body = tokens[:, 1 : 1 + (tokens.shape[1] - 1) // cfg.demo_len() * cfg.demo_len()]
    demos = body.reshape(n, -1, cfg.demo_len())  # (n, D, L + 3)
    items, labels = demos[..., : cfg.item_len] - cfg.item_base, demos[..., cfg.item_len + 1]
    lookup = {tuple(p): c for c, p in enumerate(world.prototypes)}
    classes = np.vectorize(lambda i, j: lookup[tuple(items[i, j])])(*np.indices(labels.shape))
    return classes, labels


def _train_tokens(world: ic.World, index: int, batch: int = 64) -> np.ndarray:
    x, y = ic.train_batch(world, 0, index, batch)
    return np.concatenate([x.numpy(), y[:, -1:].numpy()], axis=1)  # the query's label completes the last demo


def test_anonymous_labels_are_permuted_afresh_in_every_episode():
    world = _world(anonymous_fraction=1.0, iid_fraction=0.0)
    classes, labels = _demos(world, _train_tokens(world, 0))
    anon = world.cfg.anon_base + np.arange(world.cfg.ways)
    assert np.isin(labels, anon).all()
    perms, label_of = set(), {}
    for c, lab in zip(classes, labels, strict=True):
        mapping = dict(zip(c.tolist(), lab.tolist(), strict=True))
        assert all(mapping[k] == v for k, v in zip(c, lab, strict=True))  # fixed within the episode
        assert sorted(mapping.values()) == anon.tolist()  # a bijection onto the K anonymous tokens
        perms.add(tuple(mapping[k] for k in sorted(mapping)))
        for k, v in mapping.items():
            label_of.setdefault(k, set()).add(v)
    assert len(perms) > 12  # of 24 permutations of 4, over 64 episodes
    assert max(len(v) for v in label_of.values()) > 1  # a class changes its label across episodes


def test_semantic_labels_fixed_and_distinct_within_episodes():
    world = _world(anonymous_fraction=0.0, iid_fraction=0.3)
    for index in range(3):
        classes, labels = _demos(world, _train_tokens(world, index))
        np.testing.assert_array_equal(labels, world.labels[classes])  # one token per class, every sequence
        assert ((labels >= world.cfg.label_base) & (labels < world.cfg.item_base)).all()
    bursty = world.episode_classes(np.random.default_rng(0), 500, "train", zipf=True)
    for row in world.labels[bursty]:
        assert len(set(row)) == world.cfg.ways


def test_heldout_and_validation_classes_never_in_training():
    world = _world()
    seen = set()
    for index in range(5):
        classes, _ = _demos(world, _train_tokens(world, index))
        seen |= set(classes.ravel().tolist())
    assert seen <= set(world.sets["train"].tolist())
    assert len(seen) > 100  # the Zipfian tail is drawn too
    for name, pool in (("heldout", "heldout"), ("validation", "validation"), ("train", "train")):
        eps = ic.episode_set(world, name, 50, 4, seed=0)
        assert np.isin(eps.classes, world.sets[pool]).all()
    sets = [set(world.sets[s].tolist()) for s in ("train", "validation", "heldout")]
    assert all(not a & b for a, b in itertools.combinations(sets, 2))
    a, b = (ic.episode_set(world, s, 50, 4, seed=0) for s in ("train", "train-validation"))
    assert not np.array_equal(a.classes, b.classes)  # validation episodes are not the test episodes


def test_items_repeat_rarely_and_stay_near_their_prototype():
    world = ic.World(ic.WorldConfig(), 0)
    rng = np.random.default_rng(1)
    items = world.items(rng, np.full(2000, 7))  # (2000, L) of one class
    same = (items[:1000] == items[1000:]).all(1).mean()
    assert same < 0.05
    kept = (items - world.cfg.item_base == world.prototypes[7]).mean()
    assert kept == pytest.approx(
        1 - world.cfg.noise_fraction + world.cfg.noise_fraction / world.cfg.item_vocab, abs=0.02
    )
    dist = (world.prototypes[:, None] != world.prototypes[None]).sum(-1)
    assert dist[~np.eye(len(dist), dtype=bool)].min() >= world.cfg.min_distance


def test_batches_deterministic_and_as_long_as_the_longest_prompt():
    world = ic.World(ic.WorldConfig(), 3)
    x1, y1 = ic.train_batch(world, 5, 7, 8)
    x2, y2 = ic.train_batch(ic.World(ic.WorldConfig(), 3), 5, 7, 8)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, ic.train_batch(world, 5, 8, 8)[0])
    assert x1.shape[1] == world.cfg.seq_len(world.cfg.train_shots) == world.cfg.train_len
    targets = y1[y1 >= 0]
    assert ((targets >= world.cfg.anon_base) & (targets < world.cfg.item_base)).all()  # labels only
    assert (y1 >= 0).sum(1).eq(world.cfg.train_shots * world.cfg.ways + 1).all()


def test_prompts_rounds_orders_delimiters_and_nesting():
    world = _world(ways=4)
    eps = ic.episode_set(world, "heldout", 20, 8, seed=0)
    for prompt in ic.PROMPTS:
        full, labels, answer = eps.prompt(world, 8, "anonymous", prompt)
        short, _, _ = eps.prompt(world, 3, "anonymous", prompt)
        demo = 3 * world.cfg.ways * world.cfg.demo_len()
        np.testing.assert_array_equal(short[:, : 1 + demo], full[:, : 1 + demo])  # n shots extend n - 1
        np.testing.assert_array_equal(short[:, -world.cfg.item_len - 1 :], full[:, -world.cfg.item_len - 1 :])
        delim = ic.NEWLINE if prompt.startswith("newline") else ic.SPACE
        assert full[0, world.cfg.item_len + 1] == delim and full[0, -1] == delim
        classes, _ = _demos(world, full[:, : -world.cfg.item_len - 1])
        rounds = classes.reshape(20, 8, world.cfg.ways)
        assert all(sorted(r) == sorted(eps.classes[e]) for e in range(20) for r in rounds[e])  # one item per class
        same_order = (rounds == rounds[:, :1]).all()
        assert same_order if prompt.endswith("ordered") else not same_order
        query = tuple(full[0, -world.cfg.item_len - 1 : -1] - world.cfg.item_base)
        assert query == tuple(world.prototypes[eps.classes[0, answer[0]]])
        assert labels[0, answer[0]] == world.cfg.anon_base + eps.anon_perm[0, answer[0]]
    _, sem, _ = eps.prompt(world, 2, "semantic", "space-ordered")
    np.testing.assert_array_equal(sem, world.labels[eps.classes])


def test_smoke_preset_end_to_end_and_report(tmp_path):
    torch.set_num_threads(1)
    assert "icl-classes" in registry.names("experiment")
    exp = registry.get("icl-classes")
    runtime.launch(exp, preset="smoke", out=tmp_path / "runs")
    df = results.collect(tmp_path / "runs", "icl-classes")
    test = df[(df.split == "test") & (df.metric == "accuracy")]
    assert set(test.model) == {"mosaic_v2", "llama", "llama-2x", "mosaic_1", "mosaic_2", "gpt2_1", "gpt2_2"}
    assert test.value.between(0, 1).all()
    cfg = exp.config("smoke")
    cells = len(ic.LABEL_KINDS) * 2 * len(cfg.eval.shots) * len(ic.PROMPTS)  # kinds x sets x shots x prompts
    assert test.groupby("model").size().eq(cells).all()
    tokens = df[(df.metric == "tokens")].set_index("model").value
    assert tokens["llama-2x"] == 2 * tokens["llama"] == 2 * tokens["mosaic_v2"]
    paths = exp.report(df, tmp_path / "report")
    assert {p.name for p in paths} >= {"table.md", "fig_accuracy_vs_shots.png", "fig_margin.png", "fig_budget.png"}
    table = pd.read_csv(tmp_path / "report" / "table.csv")
    assert len(table) == 12 and "verdict" in table.columns
    text = (tmp_path / "report" / "table.md").read_text()
    assert "MM v2" in text and "Wall time per seed" in text  # the preset's cost, with the load beside it
    run = df[df.split == "run"].set_index("metric").value
    assert run["seconds"] > 0 and run["load1"] >= 0
    assert df[(df.split == "train") & (df.metric == "load1")].model.nunique() == test.model.nunique()


def test_budget_match_reads_the_mean_not_an_interval_that_reaches_zero():
    from repro.experiments._icl_classes_report import match_budget

    rows = []
    for seed, noise in enumerate((-0.3, 0.0, 0.3)):  # a wide paired interval around each mean gap
        for model, value in (("mosaic_v2", 0.8), ("llama", 0.5 + noise), ("llama-2x", 0.79 + noise),
                             ("llama-4x", 0.81 + noise)):  # fmt: skip
            rows.append({"model": model, "seed": seed, "set": "heldout", "kind": "anonymous", "shots": 1,
                         "value": value})  # fmt: skip
    acc = pd.DataFrame(rows)
    text, diffs = match_budget(acc, {"llama": 1, "llama-2x": 2, "llama-4x": 4}, "heldout", "anonymous")
    assert diffs[0]["hi"] > 0 and diffs[0]["mean"] < 0  # 1x: 30 points below, its interval reaches 0
    assert text == "4x"
