"""model.random_init: the architecture in name_or_path's config.json with seeded random weights (engines/models.py).

A small Qwen2 config.json is written next to the real SmolLM2 tokenizer; the torch learner, the hf engine and the
vLLM engine's materialized checkpoint must hold identical weights for one seed; a directory without config.json is a
ModelLoadError that names the problem. The GPU test runs the vllm engine on such a model: sleep, a weight update
while asleep (as the colocated pipeline does after training), wake, and the engine's log-probs follow the new weights.

    python -m pytest tests/test_models_random_init.py -q
"""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from engines.models import ModelLoadError, load_model, load_tokenizer
from runtime.config import ConfigError, ModelConfig, load_config

SMALL_QWEN2 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """config.json of a small Qwen2 + the SmolLM2 tokenizer, no weight files."""
    from transformers import Qwen2Config
    d = str(tmp_path_factory.mktemp("random_init_model"))
    tok = load_tokenizer(ModelConfig())
    tok.save_pretrained(d)
    Qwen2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, **SMALL_QWEN2).save_pretrained(d)
    assert not [f for f in os.listdir(d) if f.endswith((".safetensors", ".bin"))]
    return d


def _cfg(model_dir: str, *extra: str):
    return load_config(overrides=[f"model.name_or_path={model_dir}", "model.random_init=true", *extra])


def _same(a: dict, b: dict) -> bool:
    keys = set(a) & set(b)
    return bool(keys) and all(torch.equal(a[k].float(), b[k].float()) for k in keys)


def test_seeded_and_shaped_by_config(model_dir):
    cfg = _cfg(model_dir)
    m1, m2, m3 = load_model(cfg.model, seed=3), load_model(cfg.model, seed=3), load_model(cfg.model, seed=4)
    assert type(m1).__name__ == "Qwen2ForCausalLM"
    assert m1.config.hidden_size == 64 and m1.config.num_hidden_layers == 2
    assert m1.get_input_embeddings().weight.shape[0] == len(load_tokenizer(cfg.model))
    assert _same(m1.state_dict(), m2.state_dict())
    assert not _same(m1.state_dict(), m3.state_dict())


def test_learner_and_hf_engine_hold_identical_weights(model_dir):
    from engines.base import SamplingParams, make_engine
    from learners.torch_learner import TorchLearner
    cfg = _cfg(model_dir, "run.seed=7")
    learner = TorchLearner(cfg)
    engine = make_engine(cfg.model, cfg.rollout, seed=cfg.run.seed)
    ls = learner.state_dict_cpu()
    es = {k: v for k, v in engine.model.state_dict().items()}
    assert set(ls) == set(es)
    assert _same(ls, es)
    gen = engine.generate([[1, 2, 3]], SamplingParams(temperature=1.0, max_new_tokens=4, seed=0))[0]
    assert len(gen.token_ids) == 4 and all(0 <= t < engine.model.config.vocab_size for t in gen.token_ids)


def test_vllm_checkpoint_materialized_with_the_same_weights(model_dir):
    """The vllm engine reads a transformers checkpoint written from the same seeded init (CPU part; no vLLM)."""
    from transformers import AutoModelForCausalLM
    from engines.vllm_engine import materialize_checkpoint
    cfg = _cfg(model_dir)
    path, tmp = materialize_checkpoint(cfg.model, seed=5)
    try:
        assert tmp == path and os.path.exists(os.path.join(path, "config.json"))
        saved = AutoModelForCausalLM.from_pretrained(path).state_dict()
        assert _same(saved, load_model(cfg.model, seed=5).state_dict())
        assert load_tokenizer(ModelConfig(name_or_path=path)).chat_template
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_directory_without_config_is_a_clear_error(model_dir, tmp_path):
    for f in os.listdir(model_dir):
        if f != "config.json":
            shutil.copy(os.path.join(model_dir, f), tmp_path / f)
    cfg = _cfg(str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"model.random_init: no usable config.json"):
        load_model(cfg.model, seed=0)


def test_random_init_excludes_tiny_random(model_dir):
    with pytest.raises(ConfigError, match="model.random_init"):
        _cfg(model_dir, "model.tiny_random=true")


@pytest.mark.gpu
def test_vllm_random_init_update_while_asleep(model_dir):
    """Colocated order: sleep -> load_weights (asleep) -> wake_up -> generate under the new weights."""
    pytest.importorskip("vllm")
    from engines.base import SamplingParams, make_engine
    from rlcore.losses import token_logprobs

    def forward_logprobs(model, prompt_ids, token_ids, temperature):
        ids = torch.tensor([prompt_ids + token_ids])
        with torch.no_grad():
            logits = model(ids).logits[:, len(prompt_ids) - 1:-1]                     # [1, T, V]
        return token_logprobs(logits, torch.tensor([token_ids]), temperature)[0]     # [T]
    cfg = _cfg(model_dir, "model.dtype=bfloat16", "rollout.engine=vllm", "rollout.gpus_per_worker=1",
               "rollout.gpu_memory_utilization=0.2", "rollout.max_context_tokens=256", "rollout.max_new_tokens=16",
               "rollout.vllm_enforce_eager=true")
    eng = make_engine(cfg.model, cfg.rollout, seed=0)
    new = load_model(cfg.model, seed=1)
    prompts = [[1 + i, 100 + i, 200 + i] for i in range(4)]
    p = SamplingParams(temperature=1.0, max_new_tokens=16, seed=0)
    eng.sleep(1)
    eng.load_weights({k: v.clone() for k, v in new.state_dict().items()})
    eng.wake_up()
    gens = eng.generate(prompts, p)
    ref = new.float()
    d = max((torch.tensor(g.logprobs) - forward_logprobs(ref, g.prompt_ids, g.token_ids, 1.0)).abs().max().item()
            for g in gens)
    assert d < 0.1
    eng.sleep(1)
    eng.wake_up()
    assert [g.token_ids for g in eng.generate(prompts, p)] == [g.token_ids for g in gens]
    eng.close()
