"""Persistent-knowledge evaluation through lm-evaluation-harness (MMv2 Table 1 and Table 2).

Memory Mosaics v2 compares models on 19 common benchmarks (Table 1: large transformer 52.2, MMv2
52.2 on average) and shows that removing long-term memory after training barely changes 13 of them
(Table 2: 56.8 -> 56.6, transformer 57.1) while the other 6 drop (42.1 -> 34.9, transformer 41.4).

`ReproLM` is an lm-eval model over `EvalModel`, so every model `load_model` knows (repro checkpoints,
`hf:NAME`, `gguf:FILE`) runs lm-eval tasks. It is registered as lm-eval model "repro"; lm-eval
0.4.13's own CLI does not discover plugins, so `python -m repro.eval.harness ARGS` runs that CLI with
the model registered (`--model repro --model_args path=CHECKPOINT`). `command` is `repro eval
harness`: results go to a run directory and `reports/harness/` puts them beside the paper's numbers.

lm-eval is an optional extra (`eval`: `pip install lm-eval`); nothing here imports it at import time.
Known deviations: the thesis does not say which lm-eval variant, shot count or metric it used per
task (acc vs acc_norm, which squad/math/bbh); `PAPER19` pins our choice. lm-eval has no
race-middle task; ours is lm-eval's `race` config read from the dataset's "middle" subset.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import socket
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import torch
import typer

from repro.errors import UserError
from repro.eval.code_eval import CodeExecutionRefused
from repro.eval.lmeval_local import build_local, check_fewshot, has_local, plan_samples
from repro.eval.models import EvalModel, check_spec, get_model, hf_step, model_label
from repro.eval.scoring import score_requests
from repro.registry import Experiment, register

INSTALL_HINT = "pip install lm-eval (repro's `eval` extra)"  # no brackets: the CLI prints rich markup
SHIPPED_TASKS = Path(__file__).resolve().parent / "harness_tasks"
EXPERIMENT = "harness"
DEFAULT_MAX_LENGTH = 4096  # rolling windows for models without a context limit (MMv2 trains at 4k)


@dataclass(frozen=True)
class Benchmark:
    """One of the paper's 19 tasks: the lm-eval task we run, the metric[,filter] we read, the paper's
    large-model scores (transformer, MMv2; Tables 2/9) and whether it is in Table 2's group of 13."""

    name: str
    task: str
    metric: str
    transformer: float
    mmv2: float
    in_13: bool


PAPER19 = [
    Benchmark("obqa", "openbookqa", "acc_norm", 45.8, 45.4, True),
    Benchmark("arc-easy", "arc_easy", "acc_norm", 77.3, 78.0, True),
    Benchmark("winogrande", "winogrande", "acc", 72.3, 71.2, True),
    Benchmark("arc-challenge", "arc_challenge", "acc_norm", 52.6, 51.8, True),
    Benchmark("piqa", "piqa", "acc_norm", 80.8, 80.4, True),
    Benchmark("boolq", "boolq", "acc", 72.6, 73.1, True),
    Benchmark("hellaswag", "hellaswag", "acc_norm", 79.2, 78.6, True),
    Benchmark("nq", "nq_open", "exact_match,remove_whitespace", 31.9, 30.9, True),
    Benchmark("siqa", "social_iqa", "acc", 49.3, 48.6, True),
    Benchmark("tqa", "triviaqa", "exact_match,remove_whitespace", 61.5, 62.0, True),
    Benchmark("gsm8k", "gsm8k", "exact_match,strict-match", 32.4, 27.4, True),
    Benchmark("mmlu-alt", "mmlu", "acc", 49.0, 48.2, True),
    Benchmark("humaneval+", "humaneval_plus", "pass@1,create_test", 38.3, 43.0, True),
    Benchmark("squad", "squadv2", "f1", 76.3, 78.2, False),
    Benchmark("bbh", "bbh", "exact_match,get-answer", 45.6, 47.8, False),
    Benchmark("math", "minerva_math", "exact_match", 8.7, 8.8, False),
    Benchmark("mbpp", "mbpp", "pass_at_1", 9.8, 9.6, False),
    Benchmark("race-middle", "race_middle", "acc", 62.6, 61.6, False),
    Benchmark("race-high", "race", "acc", 45.6, 46.5, False),
]
TABLE1_AVG = {"transformer": 52.2, "mmv2": 52.2}  # large models, 19 tasks (small: 37.8 vs 38.0)
TABLE2 = {  # averages: transformer, MMv2, MMv2 with long-term memory removed after training
    "13 tasks": (57.1, 56.8, 56.6),
    "other 6": (41.4, 42.1, 34.9),
}


# ---- the token-level work, on EvalModel only (no lm-eval needed) ---------------------------------


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


# ---- the lm-eval model -------------------------------------------------------------------------


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

    ReproLM.__module__ = __name__  # so "repro.eval.harness:ReproLM" names it (lazy registry paths)
    if "repro" not in model_registry:
        register_model("repro")(ReproLM)
    _LM_CLASS = ReproLM
    return ReproLM


def __getattr__(name: str) -> Any:
    """`from repro.eval.harness import ReproLM` (and an entry point naming it) define the class."""
    if name == "ReproLM":
        return lm_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def lm_eval_main() -> None:
    """lm-eval's own CLI with the "repro" model registered: `python -m repro.eval.harness --model
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


# ---- tasks: names, the offline rule ---------------------------------------------------------------


def expand_tasks(spec: str) -> list[str]:
    """`paper19` and/or comma-separated lm-eval task names, in order, without repeats."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        for name in [b.task for b in PAPER19] if part == "paper19" else [part] if part else []:
            if name not in names:
                names.append(name)
    if not names:
        raise UserError("--tasks is empty; give paper19 or lm-eval task names separated by commas.")
    return names


def _local_names(dirs: list[Path]) -> set[str]:
    """Task, group and tag names defined by the YAML files under `dirs` (read as text: the files
    may hold !function tags)."""
    names = set()
    for d in dirs:
        for path in d.rglob("*.yaml"):
            for m in re.finditer(r"^(task|group|tag):\s*['\"]?([\w.+-]+)", path.read_text(), re.M):
                names.add(m.group(2))
    return names


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers (False at once when HF_HUB_OFFLINE/HF_DATASETS_OFFLINE
    is set)."""
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _first_line(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line if len(line) <= 120 else line[:119] + "…"


def _race_middle() -> dict[str, Any]:
    """lm-eval's `race` task (high school) on the dataset's middle-school subset."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(Path(lm_eval.tasks.__file__).parent / "race" / "race.yaml", resolve_func=True)
    return {**cfg, "task": "race_middle", "dataset_name": "middle"}


_TASK_MANAGERS: dict[tuple, Any] = {}


def load_task_manager(names: list[str], include_path: Path | None, data_dir: str | None = None) -> Any:
    """lm-eval's TaskManager over the shipped and --include-path tasks (and the built-in ones when a
    name needs them, or runs from DATA_DIR's copy); an unknown name is one sentence."""
    dirs = [SHIPPED_TASKS, *([include_path] if include_path else [])]
    builtin = [n for n in names if n not in _local_names(dirs)]
    if [n for n in builtin if not has_local(n, data_dir)] and not hub_reachable():
        # datasets and huggingface_hub read these when first imported: then the cache is used
        # and a missing dataset fails at once instead of after a minute of retries
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
            os.environ[var] = "1"
    from lm_eval.tasks import TaskManager

    key = (tuple(str(d) for d in dirs), bool(builtin))
    if key not in _TASK_MANAGERS:  # indexing lm-eval's ~15k task YAMLs takes seconds: once per process
        _TASK_MANAGERS[key] = TaskManager(include_path=list(key[0]), include_defaults=key[1])
    tm = _TASK_MANAGERS[key]
    unknown = [n for n in names if n != "race_middle" and n not in tm.all_tasks]
    if unknown:
        raise UserError(
            f"unknown lm-eval task(s) {', '.join(unknown)}; see `lm-eval ls tasks`, or pass --include-path "
            "with your task YAMLs."
        )
    return tm


@dataclass
class LoadedTasks:
    """What `load_tasks` found: lm-eval's TaskManager, one spec per runnable benchmark (a name, or
    the Task/Group built on local files), the size of each benchmark's leaf tasks, the benchmarks
    that generate text (generate_until), and the benchmarks skipped with the reason (only with a data
    directory: without one, any of them is an error)."""

    tm: Any
    specs: list[Any]
    sizes: dict[str, dict[str, int]]
    skipped: dict[str, str]
    generative: set[str] = field(default_factory=set)


def load_tasks(names: list[str], include_path: Path | None, data_dir: str | None = None) -> LoadedTasks:
    """Each task loaded once here (the data too), so what cannot run is named before any scoring.
    A task with a folder in DATA_DIR/lmeval/ runs from it (lm-eval's own definition, the dataset
    location changed); local tasks (shipped, --include-path) load without the network; other built-in
    ones need the hub, which is probed first so an offline run fails fast, in one sentence, unless
    their data is in the local cache. With a data directory, benchmarks that cannot load are skipped
    (and reported) instead."""
    tm = load_task_manager(names, include_path, data_dir)
    out = LoadedTasks(tm, [], {}, {})
    missing, broken = [], []
    for name in names:
        try:
            if has_local(name, data_dir):
                spec = build_local(tm, name, data_dir)
                loaded = tm.load([spec])
            else:
                spec = _race_middle() if name == "race_middle" else name
                loaded = tm.load([spec])  # fetches (or finds cached) data and metric code now, to name what fails
        except OSError as e:  # ConnectionError, or FileNotFoundError of a hub dataset or `evaluate` metric
            if has_local(name, data_dir):
                broken.append((name, f"needs the hub: {_first_line(e)}"))
            elif not hub_reachable():  # e.g. humaneval_plus: no local copy (its code metric would fail too)
                missing.append(name)
            elif "code_eval" in str(e):  # humaneval/mbpp import evaluate's code_eval metric from the hub
                broken.append((name, "its metric (evaluate's code_eval) comes from the Hugging Face hub"))
            else:
                broken.append((name, _first_line(e)))
            continue
        except CodeExecutionRefused:  # humaneval/mbpp's metric runs the generated programs
            broken.append((name, "scoring runs the model's generated code: add --allow-code-execution"))
            continue
        except ImportError as e:  # e.g. minerva_math needs lm-eval's [math] extra
            broken.append((name, f"missing packages: {e.name or _first_line(e)}"))
            continue
        out.specs.append(spec)
        out.sizes[name] = {t: len(task.eval_docs) for t, task in loaded["tasks"].items()}
        if any(task.OUTPUT_TYPE == "generate_until" for task in loaded["tasks"].values()):
            out.generative.add(name)
    if data_dir is not None and out.specs:
        out.skipped = {n: "no offline data" for n in missing} | dict(broken)
        return out
    if missing:
        raise UserError(
            f"the Hugging Face hub is unreachable and {', '.join(missing)} need data or metric code from it that "
            "is not in the local cache; run once with network access to cache it, evaluate local tasks "
            "(--tasks repro_local, or --include-path DIR with JSONL task YAMLs), or give --data-dir DIR with "
            "DIR/lmeval/<task>/ copies"
            + (f"; and cannot load {'; '.join(f'{n} ({r})' for n, r in broken)}." if broken else ".")
        )
    if broken:
        raise UserError(f"cannot load task(s): {'; '.join(f'{n} ({r})' for n, r in broken)}.")
    return out


# ---- `repro eval harness`: a registered evaluation (run directory, rows, report) --------------------


@dataclass
class HarnessConfig:
    model: str = ""  # a repro checkpoint directory, hf:NAME or gguf:FILE
    tasks: list[str] = field(default_factory=lambda: ["repro_local"])
    limit: int | None = None  # documents per benchmark, a seeded evenly spread subset (None: all)
    # documents per generation benchmark (nq_open, gsm8k, bbh: ~1-20 s a document on a CPU, against
    # ~0.1-1 s to score a multiple-choice one); None: as `limit`. --limit caps both.
    limit_generate: int | None = None
    sample_seed: int = 0  # fixes the --limit subset
    num_fewshot: int | None = None
    no_long_term: bool = False
    template: str = "base"  # base | chat (lm-eval's apply_chat_template with the model's own template)
    batch_size: int = 8
    device: str = "auto"
    include_path: str | None = None
    data_dir: str | None = None  # DIR/lmeval/<task>/ copies of lm-eval's data (LOCAL_DATA), else the hub
    allow_code_execution: bool = False  # humaneval/mbpp run generated code (lm-eval's confirm_run_unsafe_code)


def _slug(text: str, width: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")[:width] or "x"


def result_rows(
    res: dict[str, Any],
    ctx: Any,
    label: str,
    hub: bool,
    docs: dict[str, int] | None = None,
    skipped: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Tidy rows from lm-eval's result dict: every "metric,filter" score and its stderr, the number of
    documents scored (a group: summed over its leaf tasks) and in the full split (`docs_total`), for
    multiple-choice tasks the chance level (mean of 1 / #choices over the scored documents), and one
    `skipped` row (the reason in slice_value) per benchmark that could not run."""

    def row(split: str, metric: str, value: float, **extra: Any) -> dict[str, Any]:
        return ctx.row(model=label, split=split, metric=metric, value=value, step=0, **extra)

    def leaves(name: str) -> list[str]:
        kids = res.get("group_subtasks", {}).get(name)
        return [leaf for k in kids for leaf in leaves(k)] if kids else [name]

    rows = [row("_env", "hub_reachable", float(hub))]
    rows += [row(n, "skipped", 1.0, slice_key="reason", slice_value=why) for n, why in (skipped or {}).items()]
    rows += [row(n, "docs_total", float(k)) for n, k in (docs or {}).items()]
    inner = {t for kids in res.get("group_subtasks", {}).values() for t in kids}  # reported by their group
    scores = {k: v for k, v in {**res.get("groups", {}), **res["results"]}.items() if k not in inner}
    for task, metrics in scores.items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if not filt or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            rows.append(row(task, metric, value, slice_key="filter", slice_value=filt))
        counts = [res.get("n-samples", {}).get(t, {}).get("effective") for t in leaves(task)]
        if counts and None not in counts:
            rows.append(row(task, "n", sum(counts)))
        samples = [s for t in leaves(task) for s in res.get("samples", {}).get(t, [])]
        rows += doc_rows(task, leaves, res, row)
        mc = all(res["configs"].get(t, {}).get("output_type") == "multiple_choice" for t in leaves(task))
        if samples and mc:
            rows.append(row(task, "chance", sum(1 / len(s["arguments"]) for s in samples) / len(samples)))
    return rows


def doc_rows(task: str, leaves: Any, res: dict[str, Any], row: Any) -> list[dict[str, Any]]:
    """Per-document scores of a paper benchmark's table metric (`doc:<metric>` rows, slice_value
    `<leaf>#<doc_id>`), so two models scored on the same documents can be compared pairwise."""
    bench = next((b for b in PAPER19 if b.task == task), None)
    if bench is None:
        return []
    metric, _, filt = bench.metric.partition(",")
    out = []
    for leaf in leaves(task):
        for s in res.get("samples", {}).get(leaf, []):
            value = s.get(metric)
            if (filt and s.get("filter") != filt) or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            out.append(row(task, f"doc:{metric}", value, slice_key="doc", slice_value=f"{leaf}#{s['doc_id']}"))
    return out


@register
class Harness(Experiment):
    """lm-evaluation-harness as a registered evaluation (`repro eval harness`)."""

    name = EXPERIMENT
    paper_ref = "MM v2 Tables 1, 2 and 9 (19 persistent-knowledge benchmarks)"
    claim = "MMv2 matches a transformer on persistent knowledge; removing long-term memory costs 6 of the 19"
    preset_costs = {
        "smoke": "seconds (the shipped offline tasks, 4 documents each)",
        "cpu": "minutes (the shipped offline tasks); --tasks paper19 --data-dir DIR: <=400 documents per "
        "multiple-choice benchmark, <=100 per generation one: SmolLM2-135M ~25 CPU-min for the 9 multiple-choice "
        "tasks, ~110 for nq_open/gsm8k/bbh (bbh most of it), ~15 for humaneval/mbpp (~75 min on 2 cores)",
        "paper": "paper19 on full splits (GPU; hub access or --data-dir)",
    }

    def presets(self) -> dict[str, HarnessConfig]:
        return {
            "smoke": HarnessConfig(limit=4),
            "cpu": HarnessConfig(limit=400, limit_generate=100),
            "paper": HarnessConfig(tasks=expand_tasks("paper19")),
        }

    def variant(self, cfg: HarnessConfig, overrides: list[str] | None = None) -> str:
        from repro.eval.models import run_variant

        # no-ltm first: the report tells the two apart by it, and a long task list is cut short
        parts = ["no-ltm"] if cfg.no_long_term else []
        parts += ["+".join(cfg.tasks) if cfg.tasks != expand_tasks("paper19") else "paper19", cfg.template]
        parts += [f"limit={cfg.limit}"] if cfg.limit is not None else []
        gen = self.generate_limit(cfg)
        parts += [f"gen={gen}"] if gen != cfg.limit else []
        parts += ["local-data"] if cfg.data_dir else []
        parts += [f"k={cfg.num_fewshot}"] if cfg.num_fewshot is not None else []
        return run_variant(cfg.model, parts)

    @staticmethod
    def generate_limit(cfg: HarnessConfig) -> int | None:
        """Documents per generation benchmark: limit_generate, never more than --limit."""
        caps = [v for v in (cfg.limit, cfg.limit_generate) if v is not None]
        return min(caps) if caps else None

    def check(self, cfg: HarnessConfig) -> None:
        from repro.eval.models import LOADED, check_template

        require_lm_eval()
        if not cfg.model:
            raise UserError("harness needs a model: --model CHECKPOINT_DIR, hf:NAME or gguf:FILE.")
        if cfg.num_fewshot is not None and cfg.num_fewshot < 0:
            raise UserError(f"--num-fewshot {cfg.num_fewshot}: give a number of examples, 0 or more.")
        for key, value in (("--limit", cfg.limit), ("--limit-generate", cfg.limit_generate)):
            if value is not None and value < 1:
                raise UserError(f"{key} must be a positive number of documents.")
        if cfg.include_path is not None and not Path(cfg.include_path).is_dir():
            raise UserError(f"--include-path {cfg.include_path} is not a directory.")
        if (cfg.model, cfg.device) not in LOADED:
            check_spec(cfg.model)
            check_template(cfg.model, cfg.template)
        if cfg.data_dir is not None and not Path(cfg.data_dir).is_dir():
            raise UserError(f"--data-dir {cfg.data_dir} is not a directory.")
        expand_tasks(",".join(cfg.tasks))
        self._tasks = self._load(cfg)  # fail fast

    @staticmethod
    def _load(cfg: HarnessConfig) -> LoadedTasks:
        if cfg.allow_code_execution:  # code_eval (evaluate's or ours) runs programs only with it
            os.environ["HF_ALLOW_CODE_EVAL"] = "1"
        loaded = load_tasks(cfg.tasks, Path(cfg.include_path) if cfg.include_path else None, cfg.data_dir)
        for spec in loaded.specs:
            if not isinstance(spec, (str, dict)):  # built on local files
                for task in loaded.tm.load([spec])["tasks"].values():
                    check_fewshot(task, cfg.num_fewshot)
        return loaded

    def run(self, cfg: HarnessConfig, ctx: Any) -> list[dict[str, Any]]:
        import lm_eval
        from lm_eval.utils import handle_non_serializable

        from repro.track import console

        loaded = getattr(self, "_tasks", None) or self._load(cfg)
        self._tasks = None  # built Task objects hold their requests: never reuse them for another run
        gen = self.generate_limit(cfg)
        limits = {n: gen if n in loaded.generative else cfg.limit for n in loaded.sizes}
        samples = plan_samples(loaded.sizes, limits, cfg.sample_seed)
        hub = hub_reachable()
        logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task notices would flood the console
        em = get_model(cfg.model, str(ctx.device))
        if cfg.no_long_term:
            drop_long_term_memory(em)
        if cfg.template == "chat":
            em.wrap("chat")  # refuses a model without a chat template, in one sentence
        for name, reason in loaded.skipped.items():
            console.print(f"[yellow]skipped[/] {name}: {reason}")
        docs = {n: sum(s.values()) for n, s in loaded.sizes.items()}
        picked = {n: sum(len(samples.get(t, range(k))) for t, k in s.items()) for n, s in loaded.sizes.items()}
        console.print(f"[bold]evaluating[/] {em.name} on " + ", ".join(f"{n} ({picked[n]}/{docs[n]})" for n in docs))
        try:
            res = lm_eval.simple_evaluate(
                model=lm_class()(model=em, batch_size=cfg.batch_size),
                tasks=loaded.specs,
                num_fewshot=cfg.num_fewshot,
                samples=samples or None,
                task_manager=loaded.tm,
                confirm_run_unsafe_code=cfg.allow_code_execution,
                bootstrap_iters=1000,
                verbosity="ERROR",
                apply_chat_template=cfg.template == "chat",
            )
        finally:
            if cfg.no_long_term:  # the loaded model is shared within the process
                em.net.drop_long_term_memory(False)
        env_path = ctx.run_dir / "env.json"
        env = json.loads(env_path.read_text()) if env_path.exists() else {}
        env |= {"hf_hub_reachable": hub, "lm_eval": _version("lm-eval"), "torch_threads": torch.get_num_threads()}
        env_path.write_text(json.dumps(env, indent=2))
        kept = {k: v for k, v in res.items() if k != "samples"}
        (ctx.run_dir / "results.json").write_text(json.dumps(kept, indent=2, default=handle_non_serializable))
        label = f"{model_label(cfg.model)} [{cfg.template}]"
        return result_rows(res, ctx, label, hub, docs, loaded.skipped)

    def report(self, df: Any, out_dir: Path) -> list[Path]:
        from repro.eval.harness_report import write_report

        return write_report(df, out_dir)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def command(
    model: str = typer.Option(..., "--model", help="A repro checkpoint directory, hf:NAME or gguf:FILE."),
    tasks: Optional[str] = typer.Option(  # noqa: UP045
        None,
        "--tasks",
        help="paper19 (the paper's 19 benchmarks) and/or lm-eval task names, comma-separated "
        "(default: the preset's; repro_local runs the shipped offline tasks).",
    ),
    limit: Optional[int] = typer.Option(  # noqa: UP045
        None, "--limit", help="At most N documents per benchmark: a seeded subset spread evenly over the split."
    ),
    limit_generate: Optional[int] = typer.Option(  # noqa: UP045
        None,
        "--limit-generate",
        help="At most N documents per generation benchmark (nq_open, gsm8k, bbh...; cpu preset 100), "
        "never more than --limit.",
    ),
    num_fewshot: Optional[int] = typer.Option(  # noqa: UP045
        None, "--num-fewshot", help="Few-shot examples per prompt (default: each task's own)."
    ),
    no_long_term: bool = typer.Option(
        False, "--no-long-term", help="Remove long-term memory after training (MMv2 models), as in Table 2."
    ),
    template: str = typer.Option("base", "--template", help="base | chat (the model's own chat template)."),
    include_path: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--include-path", help="Folder of extra lm-eval task YAMLs (local JSONL tasks run offline)."
    ),
    data_dir: Optional[Path] = typer.Option(  # noqa: UP045
        None,
        "--data-dir",
        help="Folder holding lmeval/<task>/ copies of lm-eval's task data: those tasks run from it "
        "(lm-eval's own prompts and metrics), the others from the hub or are skipped.",
    ),
    allow_code_execution: bool = typer.Option(
        False, "--allow-code-execution", help="Let humaneval/mbpp run the generated code (lm-eval's unsafe code)."
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per generation batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    preset: str = typer.Option("cpu", "--preset", help="smoke | cpu | paper."),
    out: Path = typer.Option(Path("runs"), "--out", help="Root of the run directories."),
    reports: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--reports", help="REPORTS/harness/ is written (default: reports/, or OUT/reports/ for another --out)."
    ),
    force: bool = typer.Option(False, "--force", help="Evaluate again even if the run directory is finished."),
) -> Path:
    """Evaluate a model with lm-evaluation-harness: the paper's Table 1 (with --no-long-term, Table 2).

    Results go to OUT/harness/PRESET/VARIANT/s0/, the report to reports/harness/table.md (OUT/reports/ for
    another --out).

    Built-in tasks need the Hugging Face hub (or its local cache); repro_local and --include-path tasks run offline.
    """
    from repro import registry, results, runtime
    from repro.runtime import pick_device
    from repro.track import console

    require_lm_eval()
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"--num-fewshot {num_fewshot}: give a number of examples, 0 or more.")
    overrides = [f"model={model}", f"template={template}", f"batch_size={batch_size}"]
    overrides.append(f"device={pick_device(device)}")
    optional = {
        "tasks": ",".join(expand_tasks(tasks)) if tasks is not None else None,
        "limit": limit,
        "limit_generate": limit_generate,
        "num_fewshot": num_fewshot,
        "no_long_term": "true" if no_long_term else None,
        "include_path": include_path.resolve() if include_path is not None else None,
        "data_dir": data_dir.resolve() if data_dir is not None else None,
        "allow_code_execution": "true" if allow_code_execution else None,
    }
    overrides += [f"{key}={value}" for key, value in optional.items() if value is not None]
    exp = registry.get(EXPERIMENT)
    run_dir = runtime.launch(exp, preset=preset, overrides=overrides, seed=0, out=out, force=force)
    paths = results.eval_report(exp, out, reports, preset)
    console.print("report: " + ", ".join(str(p) for p in paths))
    return run_dir


if __name__ == "__main__":
    lm_eval_main()
