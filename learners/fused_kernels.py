"""Fused model kernels for the learner: liger-kernel's Triton RMSNorm, SwiGLU MLP and rotary embedding patched into an
already-built transformers model (`learner.fused_kernels`).

Why: on a 0.5B Qwen2 at 4k tokens about 45% of the learner's GPU time went to unfused element-wise work inside the
model (RMSNorm's fp32 upcasts, SiLU * up, rotary, dtype copies); liger's kernels do each in one pass.

How: liger's `apply_liger_kernel_to_<family>(model=...)` for the model's `config.model_type`, with cross_entropy and
fused_linear_cross_entropy off (the learner's log-prob path, learners/logprobs.py, needs the logits and stays ours).
On an instance it rebinds the `forward` of the existing RMSNorm and MLP modules (their parameters are untouched, so
ZeRO-3's partitioned parameters and hooks keep working) and replaces the family module's `apply_rotary_pos_emb`,
which the attention forward looks up at call time; it also swaps the family's RMSNorm / MLP classes, so models built
later in the same process (the KL reference) are built with liger's classes (same parameters, same names).

Modes: "none" never touches anything; "liger" patches or raises LearnerError saying why not (no CUDA, liger-kernel
or Triton not importable, model family not supported, nothing patched); "auto" = "liger" on a CUDA device when that
works, else the model is left exactly as it was (always on CPU: CPU behaviour never changes).

Limits: patching is per process and cannot be undone (the family module keeps liger's functions); numerics are
liger's (bf16 RMSNorm in "llama" casting mode = transformers' own order of casts). Checked on a GPU against the
unpatched model by `python3 benchmarks/learner_mfu.py --cases liger_check`.

    python -m pytest tests/test_learner_fused.py -q
"""
from __future__ import annotations

import inspect
import torch

from learners.base import LearnerError

MODES = ("auto", "liger", "none")
_LIGER_KWARGS = dict(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)


def apply_fused_kernels(model, mode: str, device) -> str:
    """Patch `model` per `mode` (see the module doc) and return what was applied, e.g.
    "liger (rms_norm 49, swiglu 24, rope)", "none" or "none (auto: <why not>)". `device` is where the model runs."""
    if mode not in MODES:
        raise LearnerError(f"learner.fused_kernels: must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "none":
        return "none"
    dev = torch.device(device)
    if mode == "auto" and (dev.type != "cuda" or not torch.cuda.is_available()):
        return "none (auto: not on a CUDA device)"          # nothing imported, nothing touched
    try:
        return _apply_liger(model, dev)
    except LearnerError as e:
        if mode == "liger":
            raise
        return f"none (auto: {e})"


def _apply_liger(model, dev: torch.device) -> str:
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise LearnerError(f"learner.fused_kernels=liger needs a CUDA device (the model runs on {dev}); "
                           "use learner.fused_kernels=auto or none")
    try:
        from liger_kernel.transformers import monkey_patch
        from liger_kernel.transformers.rope import liger_rotary_pos_emb
    except Exception as e:                          # not installed, no Triton, or a transformers it does not support
        raise LearnerError(f"learner.fused_kernels=liger: cannot import liger_kernel ({type(e).__name__}: {e}); "
                           "install the gpu extra (pip install -e '.[gpu]')") from e
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    fn = monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if fn is None:
        raise LearnerError(f"learner.fused_kernels=liger: liger-kernel has no kernels for model type {model_type!r}")
    params = inspect.signature(fn).parameters
    fn(model=model, **{k: v for k, v in _LIGER_KWARGS.items() if k in params})
    counts = patched_modules(model)
    family = inspect.getmodule(type(model))
    rope = getattr(family, "apply_rotary_pos_emb", None) is liger_rotary_pos_emb
    if not counts and not rope:
        raise LearnerError(f"learner.fused_kernels=liger: liger-kernel patched nothing in {type(model).__name__}")
    parts = [f"{k} {v}" for k, v in sorted(counts.items())] + (["rope"] if rope else [])
    return f"liger ({', '.join(parts)})"


def patched_modules(model) -> dict[str, int]:
    """How many modules of `model` run a liger forward, by kind ("rms_norm", "swiglu"); {} for an untouched model."""
    out: dict[str, int] = {}
    for m in model.modules():
        name = m._get_name()                      # liger rebinds it on the modules it patches
        if not name.startswith("Liger"):
            continue
        kind = "rms_norm" if "RMSNorm" in name else "swiglu" if "SwiGLU" in name else name
        out[kind] = out.get(kind, 0) + 1
    return out
