"""Prefix-cached, batched log-likelihood scoring: the one implementation behind ICL label ranking and
lm-eval's `loglikelihood` requests.

The shared context (an ICL prompt's instruction and demonstrations, an lm-eval document's context)
is read once; every continuation is then scored from the cached state:
  - Hugging Face models (`hf:`/`gguf:`): the prefix goes into a `past_key_values` cache; queries and
    their continuations, as a token trie (shared label prefixes once), are packed side by side into
    one sequence on top of it under a tree attention mask (a token sees the prefix and its own
    ancestors), and the cache is cropped back afterwards;
  - our models (the LanguageModel interface): the prefix goes into the model's decode cache; a query
    is read from a shallow copy of it, and the continuations, right-padded, from that state expanded
    to a batch (the caches only ever grow by concatenation, so copies share the prefix's tensors).
Everything runs under `torch.inference_mode`. A score is (sum of log-probabilities, number of
tokens, whether greedy decoding would produce the continuation).
"""

from __future__ import annotations

import copy
import dataclasses
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from repro.eval.models import hf_step

Score = tuple[float, int, bool]  # (log P(continuation | context), its tokens, greedy?)
Terms = list[list[tuple[int, int]]]  # per continuation: (position whose logits predict the token, token)


def pack_trie(query: list[int], conts: list[list[int]]) -> tuple[list[int], list[int], Terms]:
    """The query as a chain, then the continuations as a token trie (shared prefixes once; a
    continuation's last token needs no node, only its parent's logits). Returns tokens, parents
    (-1: the cached prefix) and each continuation's terms (position -1: the prefix's last logits)."""
    tokens, parents = list(query), list(range(-1, len(query) - 1))
    nodes: dict[tuple[int, int], int] = {}
    terms = []
    for cont in conts:
        prev, mine = len(query) - 1, []
        for i, tok in enumerate(cont):
            mine.append((prev, tok))
            if i < len(cont) - 1:
                if (prev, tok) not in nodes:
                    nodes[prev, tok] = len(tokens)
                    tokens.append(tok)
                    parents.append(prev)
                prev = nodes[prev, tok]
        terms.append(mine)
    return tokens, parents, terms


def _fork(obj: Any, batch: int | None = None) -> Any:
    """A copy of a decode cache whose tensors are shared (expanded to `batch` rows when given):
    new container objects, so the forward pass's reassignments never touch the original."""
    if isinstance(obj, torch.Tensor):
        return obj.expand(batch, *obj.shape[1:]) if batch is not None and obj.shape[0] == 1 else obj
    if isinstance(obj, list):
        return [_fork(x, batch) for x in obj]
    if dataclasses.is_dataclass(obj):
        out = copy.copy(obj)
        for f in dataclasses.fields(obj):
            setattr(out, f.name, _fork(getattr(obj, f.name), batch))
        if batch is not None and hasattr(out, "batch_size"):
            out.batch_size = batch
        return out
    return obj


class PrefixScorer:
    """Score continuations after a cached prefix, for any EvalModel (see module docstring)."""

    def __init__(self, em: Any, pack_tokens: int = 768, batch: int = 16):
        self.em, self.pack_tokens, self.batch = em, pack_tokens, batch
        self.hf = em.hf_module
        self.plain = self.hf is None and em.net is None  # a bare forward (test doubles): no cache to keep
        self.prefix: list[int] = []
        self.cache: Any = None
        self.P = 0
        self.last_logp: torch.Tensor | None = None  # (V,) log-probabilities after the prefix

    # -- the prefix ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def set_prefix(self, prefix: list[int]) -> None:
        if not prefix:
            raise ValueError("a prefix needs at least one token (lm-eval gives end-of-text for an empty context)")
        ids = torch.tensor([prefix], device=self.em.device)
        self.prefix = list(prefix)
        if self.plain:
            logits = self.em._forward(ids)[0, -1]
        elif self.hf is not None:
            logits, self.cache = hf_step(self.hf, ids, logits_to_keep=1)
            logits = logits[0, -1]
        else:
            self.cache = self.em.net.new_cache(1)
            logits = self.em.net(ids, self.cache)[0, -1]
        self.P, self.last_logp = len(prefix), F.log_softmax(logits.float(), dim=-1)

    # -- scoring ---------------------------------------------------------------------------------------

    def score(self, query: list[int], conts: list[list[int]]) -> list[Score]:
        """Each continuation after prefix + query."""
        return self.rank_many([query], conts)[0]

    @torch.inference_mode()
    def rank_many(self, queries: list[list[int]], conts: list[list[int]]) -> list[list[Score]]:
        """For every query (read after the prefix), every continuation's score."""
        if self.hf is not None:
            return self._hf_many(queries, conts)
        if self.plain:
            return [self._plain(q, conts) for q in queries]
        return [self._ours(q, conts) for q in queries]

    def _collect(self, terms: list[tuple[int, int]], logp: Callable[[int], torch.Tensor]) -> Score:
        total, greedy = 0.0, True
        for pos, tok in terms:
            row = logp(pos)
            total += row[tok].item()
            greedy = greedy and int(row.argmax()) == tok
        return total, len(terms), greedy

    def _ours(self, query: list[int], conts: list[list[int]]) -> list[Score]:
        net, dev = self.em.net, self.em.device
        state, last = self.cache, self.last_logp
        if query:
            state = _fork(self.cache)
            q_logp = F.log_softmax(net(torch.tensor([query], device=dev), state)[0].float(), dim=-1)  # (Q, V)
            last = q_logp[-1]
        out: list[Score] = []
        for lo in range(0, len(conts), self.batch):
            chunk = conts[lo : lo + self.batch]
            width = max(len(c) for c in chunk) - 1
            logp = None
            if width > 0:  # every token but each continuation's last is read, right-padded
                x = torch.full((len(chunk), width), self.em.tokenizer.eot_id, dtype=torch.long)  # (B, W)
                for b, c in enumerate(chunk):
                    x[b, : len(c) - 1] = torch.tensor(c[:-1])
                logp = F.log_softmax(net(x.to(dev), _fork(state, len(chunk))).float(), dim=-1)  # (B, W, V)
            for b, c in enumerate(chunk):
                terms = [(i - 1, t) for i, t in enumerate(c)]
                rows = logp[b] if logp is not None else None
                out.append(self._collect(terms, lambda pos, rows=rows: last if pos < 0 else rows[pos]))
        return out

    def _plain(self, query: list[int], conts: list[list[int]]) -> list[Score]:
        """A model with only a forward: prefix + query + continuation re-read per continuation batch
        (right-padded: padding after a row's last token changes no logit that is read)."""
        ctx = self.prefix + query
        out: list[Score] = []
        for lo in range(0, len(conts), self.batch):
            chunk = conts[lo : lo + self.batch]
            T = len(ctx) + max(map(len, chunk)) - 1
            x = torch.full((len(chunk), T), self.em.tokenizer.eot_id, dtype=torch.long)  # (B, T)
            for b, c in enumerate(chunk):
                x[b, : len(ctx) + len(c) - 1] = torch.tensor((ctx + c)[:-1])
            logp = F.log_softmax(self.em._forward(x.to(self.em.device)).float(), dim=-1)  # (B, T, V)
            for b, c in enumerate(chunk):
                terms = [(len(ctx) - 1 + i, t) for i, t in enumerate(c)]
                rows = logp[b]
                out.append(self._collect(terms, lambda pos, rows=rows: rows[pos]))
        return out

    def _hf_run(self, tokens: list[int], parents: list[int], keep: list[int]) -> torch.Tensor:
        """Log-probabilities (len(keep), V) at positions `keep` of the packed tree `tokens`."""
        N, P = len(tokens), self.P
        depth = [0] * N
        allowed = torch.zeros(N, P + N, dtype=torch.bool)
        allowed[:, :P] = True
        for i, p in enumerate(parents):
            depth[i] = depth[p] + 1 if p >= 0 else 0
            allowed[i, P + i] = True
            if p >= 0:
                allowed[i, P : P + N] |= allowed[p, P : P + N]  # a node sees its ancestors
        dtype, dev = self.hf.dtype, self.hf.device
        mask = torch.zeros(1, 1, N, P + N, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        logits, _ = hf_step(
            self.hf,
            torch.tensor([tokens], device=dev),
            self.cache,
            attention_mask=mask.to(dev),
            position_ids=torch.tensor([[P + d for d in depth]], device=dev),
            logits_to_keep=torch.tensor(keep, device=dev),  # the LM head only where it is read
        )
        self.cache.crop(-N)  # back to the prefix alone (transformers crops by a negative count)
        return F.log_softmax(logits[0].float(), dim=-1)

    def _hf_many(self, queries: list[list[int]], conts: list[list[int]]) -> list[list[Score]]:
        scores: list[list[Score]] = []
        tokens: list[int] = []
        parents: list[int] = []
        packed: list[Terms] = []

        def flush() -> None:
            keep = sorted({pos for terms in packed for t in terms for pos, _ in t if pos >= 0})
            row = {pos: r for r, pos in enumerate(keep)}
            logp = self._hf_run(tokens, parents, keep) if keep else None
            for terms in packed:
                scores.append(
                    [self._collect(t, lambda pos: self.last_logp if pos < 0 else logp[row[pos]]) for t in terms]
                )
            tokens.clear(), parents.clear(), packed.clear()

        for q in queries:
            tk, pa, terms = pack_trie(q, conts)
            if tokens and len(tokens) + len(tk) > self.pack_tokens:
                flush()
            off = len(tokens)
            tokens += tk
            parents += [p + off if p >= 0 else -1 for p in pa]
            packed.append([[(pos + off if pos >= 0 else -1, tok) for pos, tok in t] for t in terms])
        if packed:
            flush()
        return scores

    # -- greedy answers (ICL's `generate` scoring) ----------------------------------------------------

    @torch.inference_mode()
    def greedy(self, query: list[int], max_new: int, stop_at_newline: bool = True) -> str:
        """Greedy continuation of prefix + query, up to max_new tokens, end-of-text or (by default)
        the end of the first non-empty line."""
        tok, eot = self.em.tokenizer, self.em.tokenizer.eot_id
        new: list[int] = []
        if self.hf is not None:
            for _ in range(max_new):
                seq = query + new
                if not seq:
                    nxt = int(self.last_logp.argmax())
                else:
                    nxt = int(self._hf_run(seq, list(range(-1, len(seq) - 1)), [len(seq) - 1])[0].argmax())
                if nxt == eot:
                    break
                new.append(nxt)
                if stop_at_newline and "\n" in tok.decode(new).lstrip():
                    break
            return tok.decode(new)
        if self.plain:
            return self.em.generate(self.prefix + query, max_new)
        state, logits = _fork(self.cache), self.last_logp
        if query:
            logits = self.em.net(torch.tensor([query], device=self.em.device), state)[0, -1]
        for _ in range(max_new):
            nxt = int(logits.argmax())
            if nxt == eot:
                break
            new.append(nxt)
            if stop_at_newline and "\n" in tok.decode(new).lstrip():
                break
            if self.em.fits(self.P + len(query) + len(new) + 1):
                logits = self.em.net(torch.tensor([[nxt]], device=self.em.device), state)[0, -1]
            else:
                break
        return tok.decode(new)


def score_requests(em: Any, pairs: list[tuple[list[int], list[int]]], advance: Any = None) -> list[tuple[float, bool]]:
    """lm-eval's loglikelihood requests: (log P(continuation | context), greedy?) for each pair.

    Requests sharing a context (a multiple-choice question's choices) are scored from one forward
    over it. A pair longer than the model's context keeps its nearest context tokens."""
    scorer = PrefixScorer(em)
    limit = em.max_context
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, (ctx, cont) in enumerate(pairs):
        if limit is not None and len(cont) > limit:
            from repro.errors import UserError

            raise UserError(f"a {len(cont)}-token continuation exceeds {em.name}'s {limit}-token context.")
        groups[tuple(ctx)].append(i)
    out: list[tuple[float, bool] | None] = [None] * len(pairs)
    # longest contexts first: the slow ones show up early in the progress bar's estimate
    for ctx, idx in sorted(groups.items(), key=lambda kv: -len(kv[0])):
        conts = [pairs[i][1] for i in idx]
        longest = max(len(c) for c in conts)
        keep = list(ctx)
        if limit is not None and len(keep) + longest - 1 > limit:
            keep = keep[-(limit - longest + 1) :]  # the nearest context that leaves room for every choice
        scorer.set_prefix(keep or [em.tokenizer.eot_id])
        for i, (logp, _, greedy) in zip(idx, scorer.score([], conts), strict=True):
            out[i] = (logp, greedy)
        if advance is not None:
            advance(len(idx))
    return out  # type: ignore[return-value]
