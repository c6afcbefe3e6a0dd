"""The lm-eval model over `EvalModel`, and greedy generation for it.

`ReproLM` is an lm-eval model over `EvalModel`, so every model `load_model` knows (repro checkpoints,
`hf:NAME`, `gguf:FILE`) runs lm-eval tasks. It is registered as lm-eval model "repro"; lm-eval
0.4.13's own CLI does not discover plugins, so `python -m repro.eval.lm_eval_model ARGS` (or the
`repro-lm-eval` command) runs that CLI with the model registered (`--model repro --model_args
path=CHECKPOINT`). lm-eval is an optional extra (`eval`: `pip install lm-eval`); nothing here imports
it at import time.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from repro.errors import UserError
from repro.eval.lmeval_tasks import load_task_manager
from repro.eval.models import EvalModel, check_spec, get_model, hf_step
from repro.eval.scoring import score_requests

INSTALL_HINT = "pip install lm-eval (repro's `eval` extra)"  # no brackets: the CLI prints rich markup

DEFAULT_MAX_LENGTH = 4096  # rolling windows for models without a context limit (MMv2 trains at 4k)


def _cut(text: str, stops: list[str]) -> str:
    for s in stops:
        if s and s in text:
            text = text[: text.index(s)]
    return text


@torch.inference_mode()
def _greedy(model: EvalModel, prompts: list[list[int]], max_new: int, stops: list[str]) -> list[str]:
    """Greedy continuations of equal-length prompts, decoded together, each cut at its first stop
    string; decoding ends once every row has met a stop string or end-of-text. Models with the
    LanguageModel interface decode through their cache, transformers models through
    `past_key_values`; others re-read the sequence each step."""
    net, eot, hf = model._forward, model.tokenizer.eot_id, model.hf_module
    x = torch.tensor(prompts, device=model.device)  # (B, T)
    cache = net.new_cache(len(prompts)) if hasattr(net, "new_cache") else None
    past = None
    if hf is not None:
        logits, past = hf_step(hf, x, logits_to_keep=1)
        logits = logits[:, -1]
    else:
        logits = (net(x, cache) if cache is not None else net(x))[:, -1]  # (B, V)
    new: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for step in range(max_new):
        nxt = logits.argmax(-1)  # (B,)
        for b, tok in enumerate(nxt.tolist()):
            if done[b]:
                continue
            if tok == eot:
                done[b] = True
                continue
            new[b].append(tok)
            done[b] = any(s and s in model.tokenizer.decode(new[b]) for s in stops)
        if all(done) or step == max_new - 1:
            break
        if hf is not None:
            logits, past = hf_step(hf, nxt[:, None], past)  # one new token
            logits = logits[:, -1]
        elif cache is not None:
            logits = net(nxt[:, None], cache)[:, -1]  # one new token through the cache
        else:
            x = torch.cat([x, nxt[:, None]], dim=1)  # (B, T + 1)
            logits = net(x)[:, -1]
    return [_cut(model.tokenizer.decode(ids), stops) for ids in new]


def generate_texts(
    model: EvalModel,
    prompts: list[list[int]],
    max_new: int,
    stops: list[str],
    batch_size: int = 8,
    advance: Any = None,
) -> list[str]:
    """Greedy continuations (without the prompt) cut at the first stop string. Prompts are left-
    truncated so prompt + max_new fits the context; prompts of equal length decode as one batch."""
    limit = model.max_context
    if limit is not None:
        max_new = max(1, min(max_new, limit - 1))
        prompts = [p[-(limit - max_new) :] for p in prompts]
    prompts = [p or [model.tokenizer.eot_id] for p in prompts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_length[len(p)].append(i)
    out = [""] * len(prompts)
    for idx in by_length.values():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            for i, text in zip(chunk, _greedy(model, [prompts[i] for i in chunk], max_new, stops), strict=True):
                out[i] = text
            if advance is not None:
                advance(len(chunk))
    return out


def drop_long_term_memory(model: EvalModel) -> None:
    """Remove long-term memory after training (MMv2 Table 2), through the LanguageModel's own
    `drop_long_term_memory()`; a model without one has no long-term memory to remove."""
    drop = getattr(model._forward, "drop_long_term_memory", None)
    if drop is None:
        raise UserError(
            f"{model.name} has no long-term memory to remove; --no-long-term applies to Memory Mosaics v2 "
            "checkpoints (models whose class defines drop_long_term_memory)."
        )
    drop()


def require_lm_eval() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError(f"lm-evaluation-harness is not installed; install it with {INSTALL_HINT}.")


_LM_CLASS: type | None = None


def lm_class() -> type:
    """The lm-eval model class (defined on first use, so lm-eval stays optional), registered as
    lm-eval model "repro"."""
    global _LM_CLASS
    if _LM_CLASS is not None:
        return _LM_CLASS
    require_lm_eval()
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import model_registry, register_model
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    from repro.track import progress

    class ReproLM(TemplateLM):
        """lm-eval model over EvalModel. `model_args`: path (a repro checkpoint directory,
        hf:NAME or gguf:FILE), device, batch_size, max_length (rolling windows of unbounded
        models), no_long_term (remove MMv2's long-term memory)."""

        def __init__(
            self,
            path: str | None = None,
            pretrained: str | None = None,
            device: str | None = None,
            batch_size: int | str | None = 8,
            max_length: int | None = None,
            no_long_term: bool = False,
            model: EvalModel | None = None,
            template: str = "base",
            **_: Any,  # lm-eval's CLI also passes max_batch_size and others we don't use
        ):
            super().__init__()
            if model is None:
                spec = path or pretrained
                if not spec:
                    raise UserError("the repro lm-eval model needs model_args path=CHECKPOINT (or hf:NAME, gguf:FILE).")
                from repro.runtime import pick_device

                if device and device.startswith("cuda") and not torch.cuda.is_available():
                    device = "cpu"  # lm-eval's CLI asks for cuda:0 unless told otherwise
                model = get_model(spec, str(pick_device(device or "auto")))
            if no_long_term:
                drop_long_term_memory(model)
            self.model = model
            self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8  # "auto" -> 8
            self.max_length = int(max_length or model.max_context or DEFAULT_MAX_LENGTH)
            self._device = model.device

        @property
        def eot_token_id(self) -> int:
            return self.model.tokenizer.eot_id

        @property
        def tokenizer_name(self) -> str:
            return self.model.name

        def chat_template(self, chat_template: bool | str = False) -> str:
            """lm-eval records this string; the template itself lives in the model's tokenizer."""
            return "" if self.model.chat_messages is None else f"{self.model.name} chat template"

        def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
            """`--apply_chat_template` / `--template chat`: the model's own chat template."""
            if self.model.chat_messages is None:
                raise UserError(f"{self.model.name} has no chat template; use --template base.")
            return self.model.chat_messages(chat_history, add_generation_prompt)

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
            return self.model.tokenizer.encode(string)

        def tok_decode(self, tokens: list[int], **kwargs: Any) -> str:
            return self.model.tokenizer.decode(tokens)

        def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list:
            """Prefix-cached: choices sharing a context are scored from one forward over it."""
            with progress(len(requests), "loglikelihood") as bar:
                return score_requests(self.model, [r[1:] for r in requests], bar.advance)

        def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
            """Whole-document log-likelihoods: windows of max_length in which every token is
            predicted exactly once, scored together across documents."""
            pairs, owner = [], []
            for i, req in enumerate(requests):
                windows = get_rolling_token_windows(
                    self.tok_encode(req.args[0]), self.prefix_token_id, self.max_length, context_len=1
                )
                for window in windows:
                    pairs.append(make_disjoint_window(window))
                    owner.append(i)
            totals = [0.0] * len(requests)
            with progress(len(pairs), "rolling loglikelihood") as bar:
                scores = score_requests(self.model, pairs, bar.advance)
            for i, (logp, _) in zip(owner, scores, strict=True):
                totals[i] += logp
            return totals

        def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
            """Greedy generation (sampling settings are ignored) until a stop string, end-of-text or
            max_gen_toks; requests sharing generation settings are batched."""
            groups: dict[str, list[int]] = defaultdict(list)
            settings = []
            for i, req in enumerate(requests):
                kwargs = normalize_gen_kwargs(dict(req.args[1]), default_max_gen_toks=256)
                stops = handle_stop_sequences(kwargs.get("until"), eos=None)
                settings.append((stops, int(kwargs["max_gen_toks"])))
                groups[json.dumps(settings[-1])].append(i)
            out = [""] * len(requests)
            with progress(len(requests), "generate_until") as bar:
                texts = [self._generate(requests, idx, settings[idx[0]], bar.advance) for idx in groups.values()]
            for idx, group_texts in zip(groups.values(), texts, strict=True):
                for i, text in zip(idx, group_texts, strict=True):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
            return out

        def _generate(self, requests: list, idx: list[int], setting: tuple, advance: Any) -> list[str]:
            stops, max_new = setting
            prompts = [self.tok_encode(requests[i].args[0]) for i in idx]
            return generate_texts(self.model, prompts, max_new, stops, self.batch_size, advance)

        def get_model_info(self) -> dict[str, Any]:
            return {"model": self.model.name, "max_length": self.max_length}

    ReproLM.__module__ = __name__  # so "repro.eval.lm_eval_model:ReproLM" names it (lazy registry paths)
    if "repro" not in model_registry:
        register_model("repro")(ReproLM)
    _LM_CLASS = ReproLM
    return ReproLM


def __getattr__(name: str) -> Any:
    """`from repro.eval.lm_eval_model import ReproLM` (and an entry point naming it) define the class."""
    if name == "ReproLM":
        return lm_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def lm_eval_main() -> None:
    """lm-eval's own CLI with the "repro" model registered: `python -m repro.eval.lm_eval_model --model
    repro --model_args path=CHECKPOINT --tasks NAME --include_path DIR`. A bad checkpoint or an
    unknown task is one sentence on stderr and exit code 2, no traceback."""
    try:
        lm_class()
        _check_lm_eval_args(sys.argv[1:])
        from lm_eval.__main__ import cli_evaluate

        cli_evaluate()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _check_lm_eval_args(argv: list[str]) -> None:
    """What lm-eval's CLI would only report with a traceback: our model's path, and task names
    (checked against the shipped/--include_path tasks and lm-eval's own list)."""

    def value(flag: str) -> str | None:
        for i, a in enumerate(argv):
            if a == flag and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(flag + "="):
                return a.split("=", 1)[1]
        return None

    if value("--model") == "repro":
        args = dict(kv.split("=", 1) for kv in (value("--model_args") or "").split(",") if "=" in kv)
        spec = args.get("path") or args.get("pretrained")
        if not spec:
            raise UserError("the repro lm-eval model needs --model_args path=CHECKPOINT (or hf:NAME, gguf:FILE).")
        check_spec(spec)
    if value("--num_fewshot") is not None and not value("--num_fewshot").isdigit():
        raise UserError(f"--num_fewshot {value('--num_fewshot')}: give a number of examples, 0 or more.")
    tasks = value("--tasks")
    if tasks:
        include = value("--include_path")
        load_task_manager([t.strip() for t in tasks.split(",") if t.strip()], Path(include) if include else None)


if __name__ == "__main__":
    lm_eval_main()
