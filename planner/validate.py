"""The planner's predictions for the GPU validation cases of benchmarks/planner_validate.py, without a GPU.

The benchmark measures these cases on a GPU and the test (tests/test_planner.py) checks these predictions against
the recorded measurements, so both use exactly this code. What each case runs (see the benchmark):
  torch_fp32 / _ckpt / torch_bf16   fp32 weights, torch AdamW, all 1024 positions' logits through the reference loss
                                    rlcore.losses.token_logprobs; fp32 compute -> SDPA math kernel (GQA), bf16 ->
                                    autocast + flash; gradients kept between steps (zero_grad(set_to_none=False))
  zero3 / zero3_offload             DeepSpeed ZeRO-3, world size 1, bf16, gradient checkpointing, same loss
  hf_generate_c8 / _c32             transformers generate, 512 prompt + 256 new tokens, bf16

    python -c "from planner.validate import predict_all; print(predict_all())"
"""
from __future__ import annotations

from planner import memory as M
from planner.model_shape import ModelShape, shape_by_name

SHAPE = shape_by_name("qwen2.5-0.5b")
MICRO_BATCH, PROMPT, RESPONSE = 2, 768, 256          # training: 2 samples of 1024 tokens
GEN_PROMPT, GEN_NEW = 512, 256


def predict_torch(checkpointing: bool, bf16: bool, shape: ModelShape = SHAPE) -> dict:
    """Peak bytes of the torch cases: fp32 states + max(activations + reference-loss logits + autocast weight
    casts, AdamW's foreach temporary)."""
    seq = PROMPT + RESPONSE
    tokens = MICRO_BATCH * seq
    e = 2 if bf16 else 4
    st = M.model_state_bytes(shape.num_params, shape.largest_module_params, 0, 1, "fp32")
    act = M.activation_bytes(shape, tokens, e, checkpointing, autocast=bf16, seq_len=seq)
    logits = M.logits_bytes(shape, tokens, e, "reference")
    casts = shape.num_params * 2 if bf16 else 0.0
    extra = max(act + logits + casts, shape.num_params * 4)
    return {"predicted": st.gpu_total + extra, "states": st.gpu_total, "activations": act, "logits": logits,
            "autocast_casts": casts}


def predict_zero3(offload: bool, shape: ModelShape = SHAPE) -> dict:
    """Peak bytes of the ZeRO-3 cases (world size 1, bf16, checkpointing, reference loss on bf16 logits)."""
    seq = PROMPT + RESPONSE
    tokens = MICRO_BATCH * seq
    st = M.model_state_bytes(shape.num_params, shape.largest_module_params, 3, 1, "bf16", offload_optimizer=offload)
    act = M.activation_bytes(shape, tokens, 2, True, seq_len=seq)
    logits = M.logits_bytes(shape, tokens, 2, "reference")
    return {"predicted": st.gpu_total + act + logits, "states": st.gpu_total, "activations": act, "logits": logits}


def predict_generate(sequences: int, shape: ModelShape = SHAPE) -> dict:
    g = M.hf_generate_bytes(shape, sequences, GEN_PROMPT, GEN_NEW, 2)
    return {"predicted": g["weights"] + g["kv"] + g["transient"], **g}


CASES = {
    "torch_fp32": lambda: predict_torch(False, False),
    "torch_fp32_ckpt": lambda: predict_torch(True, False),
    "torch_bf16": lambda: predict_torch(False, True),
    "hf_generate_c8": lambda: predict_generate(8),
    "hf_generate_c32": lambda: predict_generate(32),
    "zero3": lambda: predict_zero3(False),
    "zero3_offload": lambda: predict_zero3(True),
}


def predict_all() -> dict:
    """{case: predicted bytes} for every case of the benchmark that has a planner prediction."""
    return {name: fn()["predicted"] for name, fn in CASES.items()}
