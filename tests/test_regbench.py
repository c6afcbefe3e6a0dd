"""RegBench: generator invariants, metrics against hand-computed cases, and the smoke preset end to end."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from repro import registry, results, runtime
from repro.data import regbench as rb
from repro.eval.regbench import ngram_probs, ngram_probs_original, score


@pytest.fixture(scope="module")
def splits():
    return rb.make_splits(seed=3, n_train=40, n_val=10, n_test=30)


def _distinguishable(delta: np.ndarray, p: int, q: int) -> bool:
    """Some string is defined from p and not from q, or the reverse (all states accept): a search
    over state pairs, independent of the partition refinement under test."""
    seen, stack = {(p, q)}, [(p, q)]
    while stack:
        a, b = stack.pop()
        for v in range(rb.V):
            na, nb = delta[a, v], delta[b, v]
            if (na < 0) != (nb < 0):
                return True
            if na >= 0 and (na, nb) not in seen:
                seen.add((na, nb))
                stack.append((na, nb))
    return False


def _table(delta: np.ndarray) -> np.ndarray:
    return delta[(delta >= 0).any(1)]  # drop the -1 padding rows


def test_splits_disjoint_deterministic_and_fixed_test_set(splits):
    keys = {name: {_table(d).tobytes() for d in s.delta} for name, s in splits.items()}
    assert len(keys["train"]) == 40 and len(keys["validation"]) == 10 and len(keys["test"]) == 30
    for a, b in itertools.combinations(keys, 2):
        assert not keys[a] & keys[b], f"{a} and {b} share a language"
    again = rb.make_splits(seed=3, n_train=10, n_val=10, n_test=30)
    for name in ("test", "validation"):  # the same automata and sequences whatever N
        assert all(np.array_equal(x, y) for x, y in zip(again[name].ids, splits[name].ids, strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(again["train"].ids, splits["train"].ids[:10], strict=True))
    other = rb.make_splits(seed=4, n_train=10, n_val=10, n_test=30)
    assert not any(np.array_equal(x, y) for x, y in zip(other["test"].ids, splits["test"].ids, strict=True))


def test_automata_minimal_trimmed_and_in_range(splits):
    for split in splits.values():
        for delta in split.delta:
            table = _table(delta)
            n = len(table)
            assert 1 <= n <= rb.MAX_STATES
            out = (table >= 0).sum(1)
            assert out.min() >= 1 and out.max() <= 3  # no dead ends after trimming
            assert (table[:, [rb.PAD, rb.SEP]] < 0).all()  # only letters label edges
            reach, frontier = {0}, [0]
            while frontier:
                for t in table[frontier.pop()]:
                    if t >= 0 and t not in reach:
                        reach.add(int(t))
                        frontier.append(int(t))
            assert reach == set(range(n))
            assert all(_distinguishable(table, p, q) for p, q in itertools.combinations(range(n), 2))


def test_minimize_merges_equivalent_states_and_drops_unreachable():
    delta = np.full((5, rb.V), -1)
    delta[0, 1], delta[0, 2] = 1, 2  # 0 -a-> 1, 0 -b-> 2
    delta[1, 3], delta[2, 3] = 0, 0  # 1 and 2 both go back on c: equivalent
    delta[3, 1], delta[4, 2] = 4, 3  # 3 and 4 are unreachable
    out = rb.minimize(delta)
    expected = np.full((2, rb.V), -1)
    expected[0, 1], expected[0, 2], expected[1, 3] = 1, 1, 0
    np.testing.assert_array_equal(out, expected)


def test_every_string_valid_and_lengths_in_range(splits):
    for split in splits.values():
        for ids, states, delta in zip(split.ids, split.states, split.delta, strict=True):
            assert ids.min() >= 1 and ids.max() <= rb.SEP and ids[0] != rb.SEP and ids[-1] != rb.SEP
            strings = np.split(ids, np.nonzero(ids == rb.SEP)[0])
            strings = [s[s != rb.SEP] for s in strings]
            assert rb.STRINGS[0] <= len(strings) <= rb.STRINGS[1]
            for s in strings:
                assert rb.STRING_LENGTH[0] <= len(s) <= rb.STRING_LENGTH[1]
                state = 0
                for v in s:
                    state = delta[state, v]
                    assert state >= 0, "an undefined transition in a generated string"
            x = torch.from_numpy(ids[None])
            tracked = rb.track_states(x, torch.from_numpy(delta[None]))[0].numpy()
            np.testing.assert_array_equal(tracked, states)


def _toy():
    """Automaton 0 -a-> 1, 0 -b-> 0, 1 -c-> 0; inputs `a c | b a` with targets `c | b a c`."""
    delta = torch.full((1, 2, rb.V), -1)
    delta[0, 0, 1], delta[0, 0, 2], delta[0, 1, 3] = 1, 0, 0
    ids = torch.tensor([[1, 3, rb.SEP, 2, 1, 3]])
    x, y = ids[:, :-1], ids[:, 1:].clone()
    y[y == rb.SEP] = -1
    return x, y, delta


def test_metrics_perfect_uniform_and_separator_predictors():
    x, y, delta = _toy()
    valid = rb.valid_next(rb.track_states(x, delta), delta)  # V(s_t): {c}, {a,b}, {a,b}, {a,b}, {c}
    assert valid.sum(-1).tolist() == [[1, 2, 2, 2, 1]]
    perfect = valid.float() / valid.sum(-1, keepdim=True)
    t = score(perfect, x, y, delta)
    assert t.accuracy == 1.0 and t.mean_tvd == pytest.approx(0.0) and (t.symbols, t.positions) == (4, 5)
    uniform = torch.full((1, 5, rb.V), 1 / rb.V)
    t = score(uniform, x, y, delta)  # closed form: TVD_t = 1 - |V(s_t)| / 20; argmax ties pick `.`
    assert t.mean_tvd == pytest.approx(np.mean([1 - k / rb.V for k in (1, 2, 2, 2, 1)]))
    assert t.accuracy == 0.0
    sep = torch.nn.functional.one_hot(torch.full((1, 5), rb.SEP), rb.V).float()
    t = score(sep, x, y, delta)
    assert t.accuracy == 0.0 and t.mean_tvd == pytest.approx(1.0)


def test_uniform_predictor_closed_form_on_generated_data(splits):
    test = splits["test"]
    x, y, delta = test.batch(np.arange(len(test)))
    t = score(torch.full((*x.shape, rb.V), 1 / rb.V), x, y, delta)
    # |V(s_t)| at every input position (the inputs are ids[:-1]) from the generator's own states
    sizes = np.concatenate([(test.delta[i][s[:-1]] >= 0).sum(1) for i, s in enumerate(test.states)])
    assert t.positions == len(sizes)
    assert t.mean_tvd == pytest.approx(np.mean(1 - sizes / rb.V), rel=1e-5)


def test_ngram_hand_case():
    a, b, c = 1, 2, 3
    x = torch.tensor([[a, b, rb.SEP, a, b, rb.SEP, a, c, a]])
    uni, bi = ngram_probs(x, 1), ngram_probs(x, 2)
    assert torch.allclose(uni[0, 0, 1:19], torch.full((18,), 1 / 18))  # nothing seen yet: uniform letters
    assert bi[0, 6, b] == 1.0  # after `|a`: `a` was followed by `b` twice
    assert bi[0, 2].tolist() == uni[0, 2].tolist()  # at `|`: string start never seen followed: back off
    assert uni[0, 2, a] == 0.0 and uni[0, 2, b] == 1.0  # continuations seen so far: just b (`|` not counted)
    assert bi[0, 3, b] == 1.0  # second string, after `a`: b
    assert bi[0, 8, b] == pytest.approx(2 / 3) and bi[0, 8, c] == pytest.approx(1 / 3)
    assert (bi[..., rb.SEP] == 0).all() and torch.allclose(bi.sum(-1), torch.ones(1, 9))


def _dists(probs: torch.Tensor) -> list[dict[int, float]]:
    return [{v: round(float(p), 6) for v, p in enumerate(row) if p > 0} for row in probs[0]]


def test_original_backoff_hand_cases():
    """berlino/seq_icl ngram.py's back-off, worked by hand (and matched to upstream's own code on 10
    generated sequences per order, max |diff| 3e-8: reports/LOG.md 2026-12-06)."""
    a, b, c, sep = 1, 2, 3, rb.SEP
    x = torch.tensor([[a, b, sep, a, b, sep, a, c, a]])
    got = _dists(ngram_probs_original(x, 2))
    half, third, sixth = 0.5, round(1 / 3, 6), round(1 / 6, 6)
    assert got[0] == {a: 1.0}  # `a` never followed yet: all mass backs off to the letters read
    assert got[1] == {a: half, b: half}  # `b` never followed: unigram over the letters read, renormalised
    # at `|`: `_` (string start) occurred twice (the current string counts) and was followed by `a` once:
    # a 1/2; the other half backs off to the unigram level and goes to `b`
    assert got[2] == {a: half, b: half}
    assert got[3] == {a: half, b: half}  # after `a`: `ab` once out of two `a` (one is the current)
    assert got[5] == {a: round(2 / 3, 6), b: third}  # `_` three times, followed by `a` twice
    assert got[6] == {a: third, b: round(2 / 3, 6)}  # `ab` twice out of three `a`
    assert got[7] == {a: half, b: third, c: sixth}  # unigram counts a 3, b 2, c 1 (the first `a` included)
    assert got[8] == {a: 0.25, b: half, c: 0.25}  # `ab` 2, `ac` 1 out of four `a`; `a` gets the rest
    # every letter read already seen after the context: the left-over mass is dropped (sums below one)
    assert _dists(ngram_probs_original(torch.tensor([[a, a, a]]), 2)) == [{a: 1.0}, {a: half}, {a: round(2 / 3, 6)}]
    assert _dists(ngram_probs_original(torch.tensor([[a, sep, b, sep, a, sep]]), 3))[5] == {a: half, b: 0.25}
    # trigram: string-start padding `__`, backing off twice to the unigram level
    got = _dists(ngram_probs_original(torch.tensor([[a, b, sep, a, c]]), 3))
    assert got == [{a: 1.0}, {a: half, b: half}, {a: half, b: half}, {a: half, b: half}, {a: half, b: 0.25, c: 0.25}]
    # the simple back-off differs: after `a` at position 8 it never predicts `a` (unseen after `a`)
    simple = _dists(ngram_probs(x, 2))
    assert simple[8] == {b: round(2 / 3, 6), c: third}
    padded = ngram_probs_original(torch.tensor([[a, b, 0, 0]]), 2)  # padding positions stay empty
    assert padded[0, 2:].sum() == 0 and padded[0, 1, a] == 0.5


def test_parameter_parity_at_the_paper_shape():
    from repro.experiments.regbench import FAMILIES, ModelShape, build, non_embedding_params

    counts = {f: non_embedding_params(build(f, ModelShape())) for f in FAMILIES}
    assert build("mosaic", ModelShape()).num_params() == 396_528  # the official count (regbench.md §6)
    assert max(counts.values()) / min(counts.values()) < 1.01


def test_smoke_preset_end_to_end(tmp_path):
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds contention on a shared machine
    exp = registry.get("regbench")
    runtime.launch(exp, preset="smoke", out=tmp_path / "runs")
    df = results.collect(tmp_path / "runs", "regbench")
    test = df[(df.split == "test") & (df.slice_key == "n_train")]
    assert set(test.model) == {"mosaic", "gpt2", "mosaic_v2", "llama"}
    assert set(test.slice_value.astype(int)) == {4, 8}
    assert test[test.metric.isin(["accuracy", "tvd"])].value.between(0, 1).all()
    ngram = df[df.model.str.endswith("-gram")]
    assert len(ngram) == 8 and ngram.value.between(0, 1).all()
    paths = exp.report(df, tmp_path / "report")
    assert {p.name for p in paths} >= {"table.md", "fig_regbench.png"}
    table = pd.read_csv(tmp_path / "report" / "table.csv")
    assert len(table) == 8 and "ours acc" in table.columns
