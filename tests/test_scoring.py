"""The one prefix-cached scorer (repro.eval.scoring): for our models (decode cache) and for Hugging
Face models (past_key_values + packed label trie) it gives the log-likelihoods and greedy flags of
plain full forward passes, leaves the cached prefix as it was, and shares the work it should."""

import pytest
import torch

from repro.data.tokenizer import byte_tokenizer
from repro.eval import scoring
from repro.eval.models import EvalModel
from repro.models.registry import build_model

V = 257


def _ours(net) -> EvalModel:
    net.eval()
    return EvalModel("ours", byte_tokenizer(), net.max_context, net, None, torch.device("cpu"), net=net)


def _hf() -> EvalModel:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()

    def forward(ids):
        return model(ids).logits

    return EvalModel("hf", byte_tokenizer(), 256, forward, None, torch.device("cpu"), hf_module=model)


def _models() -> dict:
    torch.manual_seed(0)
    shape = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=V)
    return {
        "gpt2": lambda: _ours(build_model("gpt2", **shape, block_size=256)),
        "llama": lambda: _ours(build_model("llama", **shape)),
        "mosaic_v2": lambda: _ours(build_model("mosaic_v2", **shape, block_size=256, ffn_size=64)),
        "hf": _hf,
    }


def _full(em: EvalModel, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """The specification: one plain forward pass over context + continuation."""
    return em.loglikelihood(ctx, cont)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "mosaic_v2", "hf"])
def test_cached_scores_equal_full_forward_passes(kind):
    em = _models()[kind]()
    prefix, queries = list(range(40, 60)), [[70, 71, 72], [73], [74, 75, 76, 77], []]
    labels = [[90, 91, 92], [90, 91, 93], [90, 94], [95], [90, 91, 92, 96]]  # shared prefixes, one token alone
    scorer = scoring.PrefixScorer(em, pack_tokens=16, batch=2)  # several packed passes and label batches
    scorer.set_prefix(prefix)
    got = scorer.rank_many(queries, labels)
    for q, row in zip(queries, got, strict=True):
        for lab, (logp, n, greedy) in zip(labels, row, strict=True):
            ref, ref_greedy = _full(em, prefix + q, lab)
            assert logp == pytest.approx(ref, abs=1e-4) and n == len(lab) and greedy == ref_greedy
    again = scorer.rank_many(queries, labels)  # the prefix state was left as it was
    assert [s[0] for r in again for s in r] == pytest.approx([s[0] for r in got for s in r], abs=1e-5)
    if kind == "hf":
        assert scorer.cache.get_seq_length() == len(prefix)


def test_the_trie_packs_shared_label_prefixes_once():
    tokens, parents, terms = scoring.pack_trie([1, 2], [[5, 6, 7], [5, 6, 8], [5, 9], [4]])
    assert tokens == [1, 2, 5, 6] and parents == [-1, 0, 1, 2]  # query, then nodes 5 and 6 once
    assert terms[3] == [(1, 4)]  # a one-token label is read off the query's last position


@pytest.mark.parametrize("kind", ["gpt2", "hf"])
def test_lm_eval_requests_sharing_a_context_read_it_once(kind, monkeypatch):
    em = _models()[kind]()
    calls = []
    original = scoring.PrefixScorer.set_prefix
    monkeypatch.setattr(scoring.PrefixScorer, "set_prefix", lambda self, p: calls.append(len(p)) or original(self, p))
    ctx = list(range(30, 50))
    pairs = [(ctx, [60 + k, 61]) for k in range(4)] + [([7, 8], [9])]
    out = scoring.score_requests(em, pairs)
    assert sorted(calls) == [2, 20]  # one forward per distinct context, however many choices
    for (logp, greedy), (c, cont) in zip(out, pairs, strict=True):
        ref, ref_greedy = _full(em, c, cont)
        assert logp == pytest.approx(ref, abs=1e-4) and greedy == ref_greedy


def test_greedy_answers_follow_the_cached_prefix():
    em = _models()["gpt2"]()
    scorer = scoring.PrefixScorer(em)
    scorer.set_prefix(list(range(40, 60)))
    text = scorer.greedy([70, 71], 5, stop_at_newline=False)
    eot = em.tokenizer.eot_id
    ids = em.net.generate(torch.tensor([list(range(40, 60)) + [70, 71]]), 5, stop_tokens=[eot])[0, 22:].tolist()
    assert text == em.tokenizer.decode(ids[: ids.index(eot)] if eot in ids else ids)
