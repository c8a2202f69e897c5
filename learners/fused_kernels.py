"""Fused model kernels for the learner: liger-kernel's Triton RMSNorm, SwiGLU MLP and rotary embedding patched into an
already-built transformers model (`learner.fused_kernels`).

Why: on a 0.5B Qwen2 at 4k tokens about 45% of the learner's GPU time went to unfused element-wise work inside the
model (RMSNorm's fp32 upcasts, SiLU * up, rotary, dtype copies); liger's kernels do each in one pass.

How: liger's `apply_liger_kernel_to_<family>(model=...)` for the model's `config.model_type`, with cross_entropy and
fused_linear_cross_entropy off (the learner's log-prob path, learners/logprobs.py, needs the logits and stays ours).
On an instance it rebinds the `forward` of the existing RMSNorm and MLP modules (their parameters are untouched, so
ZeRO-3's partitioned parameters and hooks keep working). It also changes the family module for the whole process:
its RMSNorm / MLP classes become liger's and its `apply_rotary_pos_emb` (looked up by the attention forward at call
time) becomes liger's Triton rotary. Left like that, every model of the family built later in the process would run
liger's kernels -- a CPU model then fails inside Triton ("Pointer argument ... cannot be accessed from Triton (cpu
tensor?)": what the 2-rank GPU test hit when it built its CPU reference model after the learner). So after patching,
the family's classes are put back, and `apply_rotary_pos_emb` becomes a dispatcher that takes liger's rotary only
inside a patched model's decoder layers (a context flag their forward sets, also when gradient checkpointing
recomputes them) on CUDA tensors, and the family's own function everywhere else. Only the patched instance changes.

Modes: "none" never touches anything; "liger" patches or raises LearnerError saying why not (no CUDA, liger-kernel
or Triton not importable, model family not supported, nothing patched); "auto" = "liger" on a CUDA device when that
works, else the model is left exactly as it was (always on CPU: CPU behaviour never changes).

Limits: a patched instance cannot be unpatched; the family module keeps the rotary dispatcher; numerics are
liger's (bf16 RMSNorm in "llama" casting mode = transformers' own order of casts). Checked on a GPU against the
unpatched model by `python3 benchmarks/learner_mfu.py --cases liger_check`.

    python -m pytest tests/test_learner_fused.py -q
"""
from __future__ import annotations

import contextvars
import functools
import inspect
import types

import torch

from learners.base import LearnerError, decoder_layers

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
    family = inspect.getmodule(type(model))
    before = dict(vars(family)) if family is not None else {}
    fn(model=model, **{k: v for k, v in _LIGER_KWARGS.items() if k in params})
    rope = _contain_family_patch(family, before, liger_rotary_pos_emb)
    layers = decoder_layers(model)
    rope = rope and bool(layers)                  # the flag is set by decoder layers; none found: rotary stays plain
    for layer in layers if rope else ():
        _run_with_fused_rotary(layer)
    counts = patched_modules(model)
    if not counts and not rope:
        raise LearnerError(f"learner.fused_kernels=liger: liger-kernel patched nothing in {type(model).__name__}")
    parts = [f"{k} {v}" for k, v in sorted(counts.items())] + (["rope"] if rope else [])
    return f"liger ({', '.join(parts)})"


# Set while a patched model's decoder layer runs: the family's rotary dispatcher then takes liger's kernel.
_FUSED_ROTARY = contextvars.ContextVar("sandbox_rl_fused_rotary", default=False)


def _contain_family_patch(family, before: dict, liger_rope) -> bool:
    """Undo what liger changed in the family module for other models (see the module doc): classes back to the
    originals, the rotary function replaced by a dispatcher. Returns whether the rotary is fused for patched models."""
    if family is None:
        return False
    for name, old in before.items():
        new = getattr(family, name, old)
        if new is old or name == "apply_rotary_pos_emb":
            continue
        setattr(family, name, old)                       # e.g. Qwen2RMSNorm / Qwen2MLP back to transformers' classes
    current, prior = getattr(family, "apply_rotary_pos_emb", None), before.get("apply_rotary_pos_emb")
    if current is None or prior is None:
        return False
    if getattr(prior, "_fused_rotary_dispatch", None) is not None:      # a model of the family was patched before
        setattr(family, "apply_rotary_pos_emb", prior)
        return True
    if current is not liger_rope:                        # liger did not replace it: nothing to dispatch
        return False
    setattr(family, "apply_rotary_pos_emb", _rotary_dispatch(prior, liger_rope))
    return True


def _rotary_dispatch(plain, fused):
    @functools.wraps(plain)
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        if _FUSED_ROTARY.get() and q.is_cuda:
            return fused(q, k, cos, sin, *args, **kwargs)
        return plain(q, k, cos, sin, *args, **kwargs)
    apply_rotary_pos_emb._fused_rotary_dispatch = (plain, fused)
    return apply_rotary_pos_emb


def _run_with_fused_rotary(layer) -> None:
    """Make `layer.forward` set the fused-rotary flag while it runs (an instance attribute: module hooks, gradient
    checkpointing's recompute and torch.compile all go through it)."""
    if getattr(layer, "_fused_rotary_layer", False):
        return
    inner = layer.forward

    def forward(self, *args, **kwargs):
        token = _FUSED_ROTARY.set(True)
        try:
            return inner(*args, **kwargs)
        finally:
            _FUSED_ROTARY.reset(token)
    layer.forward = types.MethodType(forward, layer)
    layer._fused_rotary_layer = True


def fused_rotary_active(family) -> bool:
    """Whether `family` (a transformers modeling module) has the rotary dispatcher installed."""
    return getattr(getattr(family, "apply_rotary_pos_emb", None), "_fused_rotary_dispatch", None) is not None


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
