"""learner.fused_kernels: "auto" leaves a CPU model exactly as it was (nothing imported, no module rebound, same
outputs), "liger" without CUDA fails with a message naming the field, a bad value is a config error; on a GPU with
liger-kernel importable (-m gpu), liger's kernels patch a Qwen2 and give the unpatched model's logits and gradients.

    python -m pytest tests/test_learner_fused.py -q
    PYTHONPATH=.benchextra/site python -m pytest tests/test_learner_fused.py -q -m gpu
"""
from __future__ import annotations

import sys

import pytest
import torch

from learners.base import LearnerError
from learners.fused_kernels import apply_fused_kernels, patched_modules
from learners.torch_learner import TorchLearner
from runtime.config import ConfigError
from test_learner import make_cfg, make_samples
from test_learning_check import tiny_model


def _forwards(model) -> dict:
    return {name: m.__dict__.get("forward") for name, m in model.named_modules()}


def test_auto_leaves_a_cpu_model_untouched():
    from transformers.models.llama import modeling_llama
    rope, norm_cls, mlp_cls = (modeling_llama.apply_rotary_pos_emb, modeling_llama.LlamaRMSNorm,
                               modeling_llama.LlamaMLP)
    had_liger = "liger_kernel" in sys.modules
    model = tiny_model(0)
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    before = model(input_ids=ids).logits
    assert apply_fused_kernels(model, "auto", "cpu").startswith("none")
    assert apply_fused_kernels(model, "none", "cpu") == "none"
    assert patched_modules(model) == {}
    assert all(f is None for f in _forwards(model).values())           # no instance forward was rebound
    assert (modeling_llama.apply_rotary_pos_emb, modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP) == \
        (rope, norm_cls, mlp_cls)
    assert ("liger_kernel" in sys.modules) == had_liger                # auto on CPU does not even import it
    assert torch.equal(model(input_ids=ids).logits, before)


def test_liger_without_cuda_fails_with_a_clear_message():
    with pytest.raises(LearnerError, match=r"learner.fused_kernels=liger needs a CUDA device"):
        apply_fused_kernels(tiny_model(0), "liger", "cpu")
    with pytest.raises(LearnerError, match="learner.fused_kernels"):
        apply_fused_kernels(tiny_model(0), "fast", "cpu")
    with pytest.raises(LearnerError, match="needs a CUDA device"):
        TorchLearner(make_cfg(**{"learner.fused_kernels": "liger"}), device="cpu", model=tiny_model(0), pad_id=0)
    with pytest.raises(ConfigError, match="learner.fused_kernels"):
        make_cfg(**{"learner.fused_kernels": "fast"})


def test_torch_learner_on_cpu_reports_no_fused_kernels():
    ln = TorchLearner(make_cfg(), device="cpu", model=tiny_model(0), pad_id=0)     # learner.fused_kernels=auto
    assert "fused_kernels=none" in repr(ln) and patched_modules(ln.model) == {}
    m = ln.train_batch(make_samples(ln.model, n=3), gradient_steps=1)
    assert m["fused_kernels_liger"] == 0.0


@pytest.mark.gpu
def test_liger_on_gpu_matches_the_unpatched_qwen2():
    pytest.importorskip("liger_kernel")
    import copy
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2 import modeling_qwen2 as mq
    qcfg = Qwen2Config(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       tie_word_embeddings=True)
    torch.manual_seed(0)
    plain = Qwen2ForCausalLM(qcfg).to("cuda", torch.bfloat16)
    fused = copy.deepcopy(plain)
    ids = torch.randint(0, 512, (2, 200), device="cuda")

    def run(m):
        logits = m(input_ids=ids, use_cache=False).logits.float()
        logits.square().mean().backward()
        return logits, [p.grad.float() for p in m.parameters()]

    ref = run(plain)                                   # before patching: liger swaps the family's rotary function
    saved = (mq.apply_rotary_pos_emb, mq.Qwen2RMSNorm, mq.Qwen2MLP)
    try:
        applied = apply_fused_kernels(fused, "liger", "cuda")
        assert applied.startswith("liger") and "rope" in applied
        assert patched_modules(fused) == {"rms_norm": 5, "swiglu": 2}
        got = run(fused)
    finally:
        mq.apply_rotary_pos_emb, mq.Qwen2RMSNorm, mq.Qwen2MLP = saved
    rel = lambda a, b: float((a - b).norm() / b.norm().clamp(min=1e-12))  # noqa: E731
    assert rel(got[0], ref[0]) < 2e-2
    for a, b in zip(got[1], ref[1]):
        assert rel(a, b) < 5e-2
