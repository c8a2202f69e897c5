"""Token log-probs and entropies straight from the model's logits, without fp32 copies of the [B, K, V] tensor.

With a 152k vocabulary one 4k-token sequence has 1.2 GB of bf16 logits. The plain formula
(`logits.float() / T`, logsumexp, gather; autograd keeps the fp32 copies for backward) writes and re-reads several
2.3 GB fp32 tensors per sequence and keeps two of them alive until backward. Here:

  forward:  one pass over the logits per row: online max / sum-exp / sum-exp*x give log Z, the target's log-prob and
            the entropy; only log Z [B, K] is kept for backward (besides the logits the model already returned);
  backward: one pass: d logp / d x = (onehot(target) - softmax(x / T)) / T, written straight into a gradient of the
            logits' dtype.

On CUDA with Triton both passes are one Triton kernel each (one program per row, reads bf16 once). Elsewhere (CPU
tests, no Triton) the same autograd function runs in torch over chunks of rows, so no fp32 [K, V] tensor ever
exists whole. The entropy is a metric: it carries no gradient.

    python -m pytest tests/test_learner.py -q -k logprob          # torch path vs the rlcore reference, on CPU
    python -m pytest tests/test_learner.py -q -m gpu -k logprob   # Triton path vs the torch path, on a GPU
"""
from __future__ import annotations

import os
from typing import Optional

import torch

CHUNK_ELEMENTS = 1 << 26          # torch path: rows per chunk so that one fp32 chunk is ~256 MB
_triton_state: dict = {}          # "ok": bool once Triton was tried; "error": why it is off


def token_logprobs_entropy(logits: torch.Tensor, targets: torch.Tensor,
                           temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, K+1, V] (the last position predicts nothing here and gets a zero gradient), targets [B, K] ->
    (log-prob of each target at `temperature` [B, K] fp32, differentiable; entropy [B, K] fp32, no gradient)."""
    if logits.dim() != 3 or targets.dim() != 2 or logits.shape[0] != targets.shape[0] \
            or logits.shape[1] != targets.shape[1] + 1:
        raise ValueError(f"logits {tuple(logits.shape)} must be [B, K+1, V] for targets {tuple(targets.shape)} [B, K]")
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    return _FusedLogprobs.apply(logits, targets.contiguous(), float(temperature), _use_triton(logits))


def triton_error() -> Optional[str]:
    """Why the Triton path is off (None when it is on or was not tried yet)."""
    return _triton_state.get("error")


def _use_triton(logits: torch.Tensor) -> bool:
    if not logits.is_cuda or os.environ.get("SANDBOX_RL_NO_TRITON_LOGPROBS") == "1":
        return False
    if "ok" not in _triton_state:
        try:
            from learners import logprobs_triton  # noqa: F401  (imports triton)
            _triton_state["ok"] = True
        except Exception as e:                       # no Triton: the torch path is correct, only slower
            _triton_state.update(ok=False, error=f"{type(e).__name__}: {e}")
            print(f"[learner] Triton log-prob kernels unavailable ({_triton_state['error']}); using the torch path",
                  flush=True)
    return _triton_state["ok"]


class _FusedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, temperature, use_triton):
        if use_triton:
            from learners.logprobs_triton import forward as fwd
        else:
            fwd = _torch_forward
        logp, ent, lse = fwd(logits, targets, temperature)           # [B, K] x3, fp32
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        ctx.use_triton = use_triton
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        logits, targets, lse = ctx.saved_tensors
        if ctx.use_triton:
            from learners.logprobs_triton import backward as bwd
        else:
            bwd = _torch_backward
        g = g_logp.float().contiguous() if g_logp is not None else torch.zeros_like(lse)   # [B, K]
        return bwd(logits, targets, lse, g, ctx.temperature), None, None, None


def _row_chunks(K: int, V: int):
    step = max(1, CHUNK_ELEMENTS // max(V, 1))
    for s in range(0, K, step):
        yield s, min(K, s + step)


@torch.no_grad()
def _torch_forward(logits, targets, temperature):
    B, K = targets.shape
    logp = torch.empty((B, K), dtype=torch.float32, device=logits.device)
    ent = torch.empty_like(logp)
    lse = torch.empty_like(logp)
    for b in range(B):
        for s, e in _row_chunks(K, logits.shape[-1]):
            x = logits[b, s:e].float() / temperature                              # [c, V]
            z = torch.logsumexp(x, dim=-1)                                        # [c]
            logp[b, s:e] = x.gather(-1, targets[b, s:e, None]).squeeze(-1) - z
            lq = x - z[:, None]                                                   # [c, V] log-probs
            ent[b, s:e] = -(torch.exp(lq) * lq).sum(-1)
            lse[b, s:e] = z
    return logp, ent, lse


@torch.no_grad()
def _torch_backward(logits, targets, lse, g, temperature):
    B, K = targets.shape
    grad = torch.empty_like(logits)                                               # [B, K+1, V]
    grad[:, K:].zero_()
    for b in range(B):
        for s, e in _row_chunks(K, logits.shape[-1]):
            x = logits[b, s:e].float() / temperature                              # [c, V]
            gp = -torch.exp(x - lse[b, s:e, None]) * g[b, s:e, None]              # [c, V] = -g * softmax
            gp.scatter_add_(-1, targets[b, s:e, None], g[b, s:e, None])           # + g at the target
            grad[b, s:e] = (gp / temperature).to(grad.dtype)
    return grad
