"""Architecture facts the resource planner needs, without loading (or downloading) any weights.

`model_shape(model_cfg)` answers from, in this order:
  1. `model.tiny_random=true`: the tiny random Llama that engines/models.py builds (its shape is imported from there);
  2. a local directory with a `config.json` (read as JSON; nothing else is opened);
  3. a built-in table of common decoder architectures, matched on the last path component of the name
     (`Qwen/Qwen2.5-7B-Instruct` -> qwen2.5-7b), because the hub is often unreachable where the planner runs.
Anything else raises `UnknownModelError` with the names the table knows; the trainer's start-up check reports that
and skips the memory check rather than failing a run it cannot judge.

Parameter counts are computed from the shape (Llama/Qwen2 layout: attention q/k/v/o, optional q/k/v bias, SwiGLU
MLP with three matrices, two RMSNorms per layer, embeddings, untied lm_head). For Qwen2.5-0.5B this gives
494,032,768, exactly what transformers counts.

    python -c "from planner.model_shape import shape_by_name; print(shape_by_name('Qwen/QwQ-32B'))"
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Optional


class UnknownModelError(ValueError):
    """The planner cannot tell the model's architecture; the message says what it knows."""


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_embeddings: bool
    qkv_bias: bool = False
    max_position_embeddings: int = 32768
    num_params_override: Optional[int] = None   # a count taken from a loaded model wins over the formula

    # -------------------------------------------------------------------------------------------- derived counts
    @property
    def params_per_layer(self) -> int:
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h                 # q, k, v, o projections
        if self.qkv_bias:
            attn += q + 2 * kv
        mlp = 3 * h * self.intermediate_size              # gate, up, down (SwiGLU)
        return attn + mlp + 2 * h                         # + input and post-attention RMSNorm

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        if self.num_params_override is not None:
            return self.num_params_override
        head = 0 if self.tie_embeddings else self.embedding_params
        return self.num_layers * self.params_per_layer + self.embedding_params + head + self.hidden_size

    @property
    def largest_module_params(self) -> int:
        """Parameters of the largest single module (what ZeRO-3 must gather at once): embedding or one MLP matrix."""
        return max(self.embedding_params, self.hidden_size * self.intermediate_size)

    def kv_bytes_per_token(self, bytes_per_element: float) -> float:
        """K and V of one token over all layers: 2 * layers * kv_heads * head_dim * bytes."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_element


def _llama(name, h, i, layers, heads, kv, vocab, tied, bias=False, max_pos=32768) -> ModelShape:
    return ModelShape(name, h, i, layers, heads, kv, h // heads, vocab, tied, bias, max_pos)


# Published config.json values (hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings).
BUILTIN_SHAPES: dict[str, ModelShape] = {s.name: s for s in [
    _llama("qwen2.5-0.5b", 896, 4864, 24, 14, 2, 151936, True, bias=True),
    _llama("qwen2.5-1.5b", 1536, 8960, 28, 12, 2, 151936, True, bias=True),
    _llama("qwen2.5-7b", 3584, 18944, 28, 28, 4, 152064, False, bias=True, max_pos=131072),
    _llama("qwen2.5-32b", 5120, 27648, 64, 40, 8, 152064, False, bias=True, max_pos=131072),
    _llama("qwq-32b", 5120, 27648, 64, 40, 8, 152064, False, bias=True, max_pos=40960),
    _llama("llama-3-8b", 4096, 14336, 32, 32, 8, 128256, False, max_pos=8192),
    _llama("llama-3.1-8b", 4096, 14336, 32, 32, 8, 128256, False, max_pos=131072),
    _llama("smollm2-135m", 576, 1536, 30, 9, 3, 49152, True, max_pos=8192),
]}

# Name variants -> table key. Instruct/chat suffixes and organisation prefixes are stripped before lookup.
_ALIASES = {
    "builtin:smollm2-135m": "smollm2-135m",
    "qwen2-0.5b": "qwen2.5-0.5b", "qwen2-1.5b": "qwen2.5-1.5b",
    "qwen2.5-coder-1.5b": "qwen2.5-1.5b", "qwen2.5-coder-7b": "qwen2.5-7b",   # same config.json shapes
    "meta-llama-3-8b": "llama-3-8b", "meta-llama-3.1-8b": "llama-3.1-8b", "llama-3.1-8b": "llama-3.1-8b",
}
_SUFFIXES = ("-instruct", "-chat", "-it", "-base", "-preview")


def _normalize(name: str) -> str:
    key = name.strip().rstrip("/").lower()
    if key in _ALIASES:
        return _ALIASES[key]
    key = key.rsplit("/", 1)[-1]
    for suffix in _SUFFIXES:
        if key.endswith(suffix):
            key = key[: -len(suffix)]
    return _ALIASES.get(key, key)


def shape_by_name(name: str) -> ModelShape:
    """The built-in shape of `name` (hub name or short name); UnknownModelError lists the known ones."""
    key = _normalize(name)
    if key in BUILTIN_SHAPES:
        return BUILTIN_SHAPES[key]
    raise UnknownModelError(
        f"model.name_or_path={name!r}: unknown architecture; give a local directory with a config.json, or one of "
        f"the built-in shapes: {', '.join(sorted(BUILTIN_SHAPES))}")


def shape_from_config_dict(cfg: dict, name: str = "config.json") -> ModelShape:
    """A shape from a Hugging Face config.json (Llama / Qwen2 / Mistral style keys)."""
    text = cfg.get("text_config", cfg)                    # multimodal wrappers keep the LM under text_config
    try:
        h, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
        return ModelShape(
            name=name, hidden_size=h, intermediate_size=int(text["intermediate_size"]),
            num_layers=int(text["num_hidden_layers"]), num_heads=heads,
            num_kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or h // heads), vocab_size=int(text["vocab_size"]),
            tie_embeddings=bool(text.get("tie_word_embeddings", False)),
            qkv_bias=bool(text.get("attention_bias", text.get("model_type") == "qwen2")),
            max_position_embeddings=int(text.get("max_position_embeddings") or 32768))
    except KeyError as e:
        raise UnknownModelError(f"{name}: config.json lacks {e.args[0]!r}, which the planner needs") from None


def tiny_random_shape(vocab_size: int = 49152) -> ModelShape:
    """The tiny random Llama of engines/models.py over the SmolLM2 tokenizer (49,152 tokens)."""
    from engines.models import TINY_RANDOM_SHAPE as t
    return _llama("tiny-random", t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"],
                  t["num_attention_heads"], t["num_key_value_heads"], vocab_size, True,
                  max_pos=t["max_position_embeddings"])


def model_shape(model_cfg, num_params: Optional[int] = None) -> ModelShape:
    """Shape of a runtime.config.ModelConfig (see the module docstring for the lookup order).

    num_params: an exact count (e.g. from a loaded model) that replaces the formula's."""
    if model_cfg.tiny_random:
        shape = tiny_random_shape()
    elif os.path.isfile(os.path.join(model_cfg.name_or_path, "config.json")):
        path = os.path.join(model_cfg.name_or_path, "config.json")
        try:
            with open(path) as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError) as e:
            raise UnknownModelError(f"{path}: could not be read as JSON: {e}") from None
        shape = shape_from_config_dict(data, name=os.path.basename(model_cfg.name_or_path.rstrip("/")))
    else:
        shape = shape_by_name(model_cfg.name_or_path)
    return replace(shape, num_params_override=num_params) if num_params is not None else shape
