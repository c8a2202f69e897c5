"""Policy-gradient losses (pure torch functions; shape comments on every tensor op).

`clipped_policy_loss` serves both pipelines:
  - kernel GRPO: "tokens" are response tokens, masks mark real tokens, normalization "constant" (Dr. GRPO: the
    token-summed loss of each sequence is divided by one constant, the max response length, never by its own length);
  - MixGRPO: "tokens" are the window's denoising steps (one log-prob per step, averaged over latent elements),
    normalization "token_mean" (mean over samples and window steps).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class LossOutput:
    loss: torch.Tensor            # scalar, differentiable
    clip_fraction: float          # share of valid tokens where the clipped branch was taken
    ratio_mean: float
    ratio_max: float
    ratio_min: float
    kl: float                     # mean k3 KL over valid tokens (0 when no reference given)


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum()


def k3_kl(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref) per token: exp(d) - d - 1 with d = logp_ref - logp (>= 0)."""
    d = logp_ref - logp                                   # [B, L]
    return torch.exp(d) - d - 1.0


def clipped_policy_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, eps_low: float, eps_high: float,
                        normalization: str = "constant", constant_length: Optional[float] = None,
                        num_sequences: Optional[float] = None,
                        logp_ref: Optional[torch.Tensor] = None, kl_coef: float = 0.0) -> LossOutput:
    """GRPO/PPO clipped surrogate with clip-higher, token level.

    logp_new:   [B, L] log-probs of the taken tokens under the policy being trained (requires grad)
    logp_old:   [B, L] log-probs under the sampling policy (no grad)
    advantages: [B] one advantage per sequence (broadcast over its tokens) or [B, L]
    mask:       [B, L] 1 for response tokens that count, 0 for padding
    normalization:
      "constant"      sum over tokens / (num_sequences * constant_length)   (Dr. GRPO)
      "token_mean"    sum over tokens / number of valid tokens
      "sequence_mean" mean over sequences of each sequence's token mean    (original GRPO)
    num_sequences: the number of sequences the loss is averaged over with "constant" normalization (defaults to B;
      when a batch is split into micro-batches, pass the full batch size so the micro-batch losses add up exactly).
    """
    mask = mask.to(logp_new.dtype)                                   # [B, L]
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logp_new)         # [B] -> [B, L]
    log_ratio = (logp_new - logp_old.detach()) * mask                # [B, L]
    ratio = torch.exp(log_ratio)                                     # [B, L]
    unclipped = -advantages * ratio                                  # [B, L]
    clipped = -advantages * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    per_token = torch.maximum(unclipped, clipped)                    # [B, L]
    kl_tok = None
    if logp_ref is not None and kl_coef > 0:
        kl_tok = k3_kl(logp_new, logp_ref.detach())                  # [B, L]
        per_token = per_token + kl_coef * kl_tok

    n_valid = mask.sum().clamp(min=1.0)
    if normalization == "constant":
        if constant_length is None:
            raise ValueError("normalization='constant' needs constant_length (e.g. max_new_tokens)")
        b = float(num_sequences if num_sequences is not None else logp_new.shape[0])
        loss = masked_sum(per_token, mask) / (b * float(constant_length))
    elif normalization == "token_mean":
        loss = masked_sum(per_token, mask) / n_valid
    elif normalization == "sequence_mean":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)    # [B]
        loss = per_seq.mean()
    else:
        raise ValueError(f"unknown normalization {normalization!r}")

    with torch.no_grad():
        valid = mask > 0
        r = ratio[valid]
        took_clip = (clipped > unclipped)[valid]
        return LossOutput(
            loss=loss,
            clip_fraction=float(took_clip.float().mean()) if r.numel() else 0.0,
            ratio_mean=float(r.mean()) if r.numel() else 1.0,
            ratio_max=float(r.max()) if r.numel() else 1.0,
            ratio_min=float(r.min()) if r.numel() else 1.0,
            kl=float(kl_tok[valid].mean()) if kl_tok is not None and r.numel() else 0.0,
        )


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob of each target token. logits [B, L, V] (already aligned: logits[:, t] predicts targets[:, t]),
    targets [B, L] -> [B, L]. Temperature matches the sampler's so ratios start at exactly 1."""
    logits = logits.float() / temperature                             # [B, L, V]
    logz = torch.logsumexp(logits, dim=-1)                            # [B, L]
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)   # [B, L]
    return picked - logz


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-token entropy [B, L] from logits [B, L, V]."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)    # [B, L, V]
    return -(logp.exp() * logp).sum(-1)
