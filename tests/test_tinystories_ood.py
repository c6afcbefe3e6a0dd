"""tinystories-ood end to end on generated text: rows, checkpoints that load for evaluation, the
report, and a killed run that resumes on the same loss curve."""

import random

import numpy as np
import pandas as pd
import pytest
import torch

from repro import registry, results, runtime
from repro.data.text import TokenWindows
from repro.eval.models import load_model

NAMES = ["Lily", "Tom", "Sam", "Mia", "Ben"]
THINGS = ["ball", "cat", "tree", "cake", "boat"]


def _stories(n: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b = rng.choice(NAMES), rng.choice(THINGS)
        lines.append(f"Once upon a time, {a} had a {b}. {a} loved the {b} very much. The end.")
    return "\n".join(lines) + "\n"


def _wiki(n: int) -> str:
    return "".join(f" = Topic {i} = \n\n The topic number {i} is a subject of study .\n\n" for i in range(n))


def _essays(n: int) -> str:
    return "".join(
        f"Essay {i}. Startups grow when founders make what users want, {i} times over.\n\n" for i in range(n)
    )


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "train.txt").write_text(_stories(300, 0))
    (root / "valid.txt").write_text(_stories(60, 1))
    (root / "wiki.txt").write_text(_wiki(40))
    (root / "essays.txt").write_text(_essays(30))
    return root


def _overrides(corpus):
    return [
        f"data.path={corpus}",
        f"data.cache_dir={corpus.parent / 'cache'}",
        "ood.datasets=",  # no named corpus: the test must not look for local copies or the hub
        f"ood.paths={corpus / 'wiki.txt'},{corpus / 'essays.txt'}",
    ]


def test_smoke_run_report_and_checkpoints(corpus, tmp_path):
    exp = registry.get("tinystories-ood")
    run_dir = runtime.launch(exp, preset="smoke", overrides=_overrides(corpus), out=tmp_path / "runs")
    df = results.collect(tmp_path / "runs", "tinystories-ood")
    assert set(df.model) == {"gpt2-L1", "mosaic-L1", "gpt2-L2", "mosaic-L2"}
    val = df[(df.split == "validation") & (df.metric == "loss")]
    assert len(val) >= 4 * 3 and val.value.between(0.1, 10).all()  # evaluated every 10 of 30 steps
    for text in ("wiki", "essays"):  # one value per position of the 32-token window, per model and text
        for metric in ("position_loss", "position_loss_random"):  # document starts; random offsets inside
            assert len(df[(df.metric == metric) & (df.split == f"ood:{text}")]) == 4 * 32
    copies = df[df.metric == "copy_loss"]  # first and second copy, per model and copy test
    assert set(copies.split) == {"random", "validation", "ood:wiki", "ood:essays"} and len(copies) == 4 * 4 * 2
    paths = exp.report(df, tmp_path / "report")
    figures = {"fig_loss_vs_blocks.png", "fig_loss_curves.png", "fig_position_loss.png", "fig_ood_position_loss.png"}
    figures |= {"fig_ood_position_loss_docstart.png", "fig_copy.png"}
    assert {p.name for p in paths} >= {"table.md", *figures}
    table = pd.read_csv(tmp_path / "report" / "table.csv")
    assert table.claim.str.startswith("(c) OOD").sum() == 2 * 2  # two texts x two depths
    assert table.claim.str.startswith("(d) copy test").sum() == 4 * 2  # four copy tests x two depths
    assert table.claim.str.startswith("(a)").sum() == 2
    assert "Document-start windows" in (tmp_path / "report" / "table.md").read_text()
    for name in ("gpt2-L1", "mosaic-L2"):  # a checkpoint loads without the run, with its tokenizer
        model = load_model(str(run_dir / "checkpoints" / name))
        text = model.generate(model.tokenizer.encode("Once upon a time,"), 8)
        assert isinstance(text, str)


def test_killed_run_resumes_on_the_same_curve(corpus, tmp_path, monkeypatch):
    exp = registry.get("tinystories-ood")
    overrides = [*_overrides(corpus), "depths=1", "families=mosaic"]
    runtime.launch(exp, preset="smoke", overrides=overrides, out=tmp_path / "clean")

    real_batch = TokenWindows.batch

    def killed_at_17(self, step, *args, **kwargs):
        if step == 17:
            raise KeyboardInterrupt
        return real_batch(self, step, *args, **kwargs)

    monkeypatch.setattr(TokenWindows, "batch", killed_at_17)
    with pytest.raises(KeyboardInterrupt):
        runtime.launch(exp, preset="smoke", overrides=overrides, out=tmp_path / "killed")
    monkeypatch.setattr(TokenWindows, "batch", real_batch)
    runtime.launch(exp, preset="smoke", overrides=overrides, out=tmp_path / "killed")  # resumes at step 10

    def curve(root):
        df = results.collect(root, "tinystories-ood")
        return df[(df.split == "train") & (df.metric == "loss")].sort_values("step").value.to_numpy()

    clean, resumed = curve(tmp_path / "clean"), curve(tmp_path / "killed")
    assert len(clean) == len(resumed) > 3
    assert resumed == pytest.approx(clean, rel=1e-5)


def test_paired_verdicts_and_sweep_split():
    from repro.experiments._tinystories_report import paired, split_sweep, verdict

    d, h, n = paired([-0.10, -0.12, -0.11])
    assert n == 3 and d == pytest.approx(-0.11) and h == pytest.approx(4.303 * 0.01 / 3**0.5, rel=1e-3)
    assert verdict(d, h, n, "lower").startswith("reproduced: same direction, beyond noise")
    assert verdict(d, h, n, "higher").startswith("not reproduced: opposite direction, beyond noise")
    assert verdict(*paired([0.2, -0.1, 0.05]), "lower").startswith("opposite direction, within noise")
    assert verdict(*paired([-0.2, 0.1, -0.05]), "not higher").startswith("same direction, within noise")
    variants = [
        "default",
        "depths=4-0a1b2c",
        "depths=1+families=mosaic+model.head_scale=inv_sqrt_width-3f00aa",
        "depths=1+steps=200-77aa00",
    ]
    df = pd.DataFrame({"variant": variants, "seed": [0, 0, 0, 0]})
    main, ablation, others = split_sweep(df)
    assert list(main.variant) == variants[:2] and list(ablation.variant) == variants[2:3]
    assert list(others.variant) == variants[3:]


def test_slope_is_the_log_position_coefficient():
    from repro.experiments._tinystories_report import slope

    t = np.arange(64)
    curves = np.stack([5.0 - 0.3 * np.log(t + 1.0), 7.0 + 0.0 * t, 6.0 + 0.1 * np.log(t + 1.0)])
    curves[:, :8] = 99.0  # the first positions are not part of the fit
    assert slope(curves) == pytest.approx([-0.3, 0.0, 0.1], abs=1e-12)


class _Recaller(torch.nn.Module):
    """Loss 0 where the target already appeared in the input so far, 1 elsewhere: a perfect copier."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def loss(self, x, y, reduction="none"):
        seen = (x[:, None, :] == y[:, :, None]) & torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
        return 1.0 - seen.any(-1).float()  # (B, T): [t] looks at x[:, : t + 1]


def test_copy_test_counts_each_copy_after_its_first_token():
    from repro.eval.lm import copy_test, repeated, uniform_spans

    spans = torch.stack([torch.randperm(50)[:10] for _ in range(6)])  # distinct tokens within a span
    x, y = repeated(spans)
    assert x.shape == (6, 19) and torch.equal(y[:, 9:], spans) and torch.equal(x[:, :10], spans)
    assert copy_test(_Recaller(), spans, batch_size=4) == {"first": 1.0, "second": 0.0, "gain": 1.0}
    drawn = uniform_spans(8, 16, 20, seed=3, exclude=(0, 19))
    assert drawn.shape == (8, 16) and not ((drawn == 0) | (drawn == 19)).any()
    assert torch.equal(drawn, uniform_spans(8, 16, 20, seed=3, exclude=(0, 19)))


def test_ood_paths_take_any_text_file(tmp_path):
    from repro.data.tokenizer import get_tokenizer
    from repro.experiments.tinystories_ood import OODConfig, ood_texts

    (tmp_path / "plays.md").write_text("ACT I. Enter the king.\n\nKING: Who goes there?\n\nACT II. Exit all.\n")
    (tmp_path / "news").write_text("Markets rose today after the report.\n\nThe bank held its rate.\n")
    tok = get_tokenizer("byte", [], 256, str(tmp_path / "cache"))
    cfg = OODConfig(paths=(str(tmp_path / "plays.md"), str(tmp_path / "news")))
    texts = ood_texts(cfg, tok, str(tmp_path / "cache"))
    assert set(texts) == {"plays", "news"} and texts["plays"].meta["documents"] == 3
    assert tok.decode(texts["news"].tokens[: texts["news"].doc_starts[1] - 1]) == "Markets rose today after the report."
