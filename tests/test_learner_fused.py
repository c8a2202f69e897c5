"""learner.fused_kernels: "auto" leaves a CPU model exactly as it was (nothing imported, no module rebound, same
outputs), "liger" without CUDA fails with a message naming the field, a bad value is a config error; on a GPU with
liger-kernel importable (-m gpu), liger's kernels patch a Qwen2 and give the unpatched model's logits and gradients.
Patching one model leaves every other model of its family as transformers builds it: the family's classes are put
back and its rotary function dispatches to liger's kernel only inside a patched model's decoder layers on CUDA (CPU
test of that containment with a stand-in family; on a GPU, a CPU and a CUDA model built after patching run plain).

    python -m pytest tests/test_learner_fused.py -q
    PYTHONPATH=.benchextra/site python -m pytest tests/test_learner_fused.py -q -m gpu
"""
from __future__ import annotations

import sys
import types

import pytest
import torch

from learners.base import LearnerError
from learners import fused_kernels as fk
from learners.fused_kernels import apply_fused_kernels, patched_modules
from learners.torch_learner import TorchLearner
from runtime.config import ConfigError
from test_learner import make_cfg, make_samples, single_rank_env
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


class _Q:
    """Stands for a query tensor: the dispatcher only asks whether it is on CUDA."""
    def __init__(self, cuda: bool):
        self.is_cuda = cuda


def test_family_patch_is_contained_to_the_patched_model():
    family = types.ModuleType("stand_in_modeling")

    class Norm:
        pass

    def plain(q, k, cos, sin, *a, **kw):
        return "plain"

    def fused(q, k, cos, sin, *a, **kw):
        return "fused"
    family.Norm, family.apply_rotary_pos_emb = Norm, plain
    before = dict(vars(family))
    family.Norm, family.apply_rotary_pos_emb = type("LigerNorm", (), {}), fused       # what liger's patch does
    assert fk._contain_family_patch(family, before, fused)
    assert family.Norm is Norm                                       # models built later get the family's class
    rope = family.apply_rotary_pos_emb
    assert rope(_Q(True), None, None, None) == "plain"               # outside a patched decoder layer
    layer = torch.nn.Linear(2, 2)
    seen = []
    layer.forward = types.MethodType(lambda self, x: seen.append(rope(_Q(True), None, None, None)) or x, layer)
    fk._run_with_fused_rotary(layer)
    fk._run_with_fused_rotary(layer)                                 # idempotent: one flag-setting wrapper
    layer(torch.zeros(2))
    assert seen == ["fused"] and rope(_Q(True), None, None, None) == "plain"
    cpu_seen = []
    layer2 = torch.nn.Linear(2, 2)
    layer2.forward = types.MethodType(lambda self, x: cpu_seen.append(rope(_Q(False), None, None, None)) or x, layer2)
    fk._run_with_fused_rotary(layer2)
    layer2(torch.zeros(2))
    assert cpu_seen == ["plain"]                                     # CPU tensors never reach Triton
    before2 = dict(vars(family))                                     # a second model of the family (the KL reference)
    family.apply_rotary_pos_emb = fused
    assert fk._contain_family_patch(family, before2, fused) and family.apply_rotary_pos_emb is rope
    assert fk.fused_rotary_active(family)


@pytest.mark.gpu
def test_models_built_after_patching_run_plain():
    """The 2-rank GPU test built its CPU reference model after the learner had patched the family: liger's RMSNorm
    then ran on CPU tensors and Triton refused them. Now only the patched instance changes."""
    pytest.importorskip("liger_kernel")
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2 import modeling_qwen2 as mq
    qcfg = Qwen2Config(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       tie_word_embeddings=True)
    ids = torch.randint(0, 512, (2, 64))

    def build(device):
        torch.manual_seed(0)
        return Qwen2ForCausalLM(qcfg).to(device, torch.bfloat16 if device == "cuda" else torch.float32)
    with torch.no_grad():
        ref_gpu = build("cuda")(input_ids=ids.cuda()).logits
        ref_cpu = build("cpu")(input_ids=ids).logits
    saved = (mq.apply_rotary_pos_emb, mq.Qwen2RMSNorm, mq.Qwen2MLP)
    try:
        patched = build("cuda")
        assert apply_fused_kernels(patched, "liger", "cuda").startswith("liger")
        assert (mq.Qwen2RMSNorm, mq.Qwen2MLP) == saved[1:] and fk.fused_rotary_active(mq)
        with torch.no_grad():
            later_gpu, later_cpu = build("cuda"), build("cpu")
            assert patched_modules(later_gpu) == {} and patched_modules(later_cpu) == {}
            assert torch.equal(later_gpu(input_ids=ids.cuda()).logits, ref_gpu)     # plain kernels, bit for bit
            assert torch.equal(later_cpu(input_ids=ids).logits, ref_cpu)
            out = patched(input_ids=ids.cuda()).logits
        assert float((out.float() - ref_gpu.float()).norm() / ref_gpu.float().norm()) < 2e-2
    finally:
        mq.apply_rotary_pos_emb, mq.Qwen2RMSNorm, mq.Qwen2MLP = saved


@pytest.mark.gpu
def test_deepspeed_liger_with_partitioned_parameters_one_rank():
    """ZeRO-3 with every parameter partitioned and gathered per pass (persistence threshold 0: what several ranks
    do, on one GPU), liger's kernels and the fused AdamW: ratio 1 before the first update, two optimizer steps, and
    a CPU model built afterwards in the same process (as the 2-rank test does) still runs."""
    pytest.importorskip("deepspeed")
    pytest.importorskip("liger_kernel")
    from learners.deepspeed_learner import DeepSpeedLearner
    single_rank_env()
    cfg = make_cfg(**{"learner.backend": "deepspeed", "learner.gpus_per_rank": 1, "learner.zero_stage": 3,
                      "learner.fused_kernels": "liger", "algo.gradient_steps_per_batch": 2, "learner.lr": 1e-3,
                      "learner.fused_optimizer": True})
    ds = DeepSpeedLearner(cfg, model_factory=lambda: tiny_model(0), pad_id=0,
                          zero_overrides={"stage3_param_persistence_threshold": 0})
    assert ds.fused_kernels.startswith("liger") and "rope" in ds.fused_kernels
    assert not any(getattr(p, "ds_persist", True) for p in ds.engine.module.parameters())   # all partitioned
    samples = make_samples(tiny_model(0))                            # a CPU model built after the patch
    lps = ds.logprobs(samples)
    assert max(abs(x - y) for s, lp in zip(samples, lps) for x, y in zip(s.sampling_logprobs, lp)) < 5e-2
    m = ds.train_batch(samples, 2)
    assert ds.step == 2 and m["grad_norm"] > 0 and m["fused_kernels_liger"] == 1.0
    assert ds.engine.optimizer.optimizer.defaults.get("fused")                # torch's fused AdamW under ZeRO-3
