"""The MixGRPO policy update: per-group multi-reward advantages and the clipped ratio loss over window steps.

Reuses rlcore: `multi_reward_advantages` (each reward normalized within its prompt group, weighted, clipped) and
`clipped_policy_loss` (normalization "token_mean", one "token" per (sample, window step), eps_low = eps_high = clip).
No KL, as in the paper. The batch is split into `optimizer_steps` contiguous parts, one AdamW step each; inside a part
the forward/backward runs per chunk of `chunk_rows` rows and per window step (gradient accumulation), in exactly the
composition the sampler used, so the first part sees ratio == 1 to the last bit.

Negative controls (`control`), used by the tests to show the learning is real:
  "flip" negate advantages; "shuffle" permute them across the batch; "global" normalize over the whole batch instead
  of per prompt group; "detach" cut the gradient of the new log-prob (no parameter may change).
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from flowrl.sampler import Rollout, SamplerSettings, cond_index, step_logprob
from rlcore.losses import clipped_policy_loss
from rlcore.rewards import multi_reward_advantages

CONTROLS = (None, "flip", "shuffle", "global", "detach")


def group_advantages_multi(rewards: Mapping[str, Sequence[float]], weights: Mapping[str, float], group_size: int,
                           clip: float, control: Optional[str] = None, seed: int = 0) -> np.ndarray:
    """Advantages [N] of a prompt-major batch (rows p*G .. p*G+G-1 = prompt p), one normalization per group."""
    n = len(next(iter(rewards.values())))
    if control == "global":
        return np.asarray(multi_reward_advantages(rewards, weights, clip=clip))
    adv = np.zeros(n)
    for a in range(0, n, group_size):
        part = {k: list(v[a:a + group_size]) for k, v in rewards.items()}
        adv[a:a + group_size] = multi_reward_advantages(part, weights, clip=clip)
    if control == "flip":
        adv = -adv
    elif control == "shuffle":
        adv = adv[np.random.default_rng(seed).permutation(n)]
    return adv


class FlowTrainer:
    """AdamW on the flow model; `train(rollout, advantages)` runs one iteration's optimizer steps."""

    def __init__(self, model: torch.nn.Module, st: SamplerSettings, lr: float, weight_decay: float, clip_eps: float,
                 optimizer_steps: int, max_grad_norm: float = 1.0, wrap: Optional[Callable] = None):
        self.model, self.st, self.clip_eps = model, st, clip_eps
        self.optimizer_steps, self.max_grad_norm = optimizer_steps, max_grad_norm
        self.call = wrap(model) if wrap else model        # e.g. bf16 autocast; the sampler uses the same wrapper
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def train(self, ro: Rollout, advantages: torch.Tensor, control: Optional[str] = None) -> dict:
        n, k = ro.logp_old.shape
        if k == 0:
            return {"loss": 0.0, "clip_fraction": 0.0, "grad_norm": 0.0, "ratio_dev_first": 0.0}
        part = n // self.optimizer_steps
        chunk = self.st.chunk_rows if self.st.chunk_rows > 0 else part
        if n % self.optimizer_steps or part % chunk:
            raise ValueError(f"batch of {n} rows does not split into flow.optimizer_steps_per_iter="
                             f"{self.optimizer_steps} parts of whole chunks of {chunk} rows")
        self.model.train()
        dev = ro.x_steps.device
        adv = advantages.to(dev, torch.float32)
        losses, clips, norms, ratio_dev_first = [], [], [], 0.0
        for p in range(self.optimizer_steps):
            self.opt.zero_grad(set_to_none=True)
            total = 0.0
            for a in range(p * part, (p + 1) * part, chunk):
                idx = torch.arange(a, a + chunk)
                cond = cond_index(ro.cond, idx)
                for j, step in enumerate(ro.train_steps):
                    logp = step_logprob(self.call, ro.x_steps[a:a + chunk, j], ro.x_next[a:a + chunk, j], step, cond,
                                        self.st)                                              # [c]
                    if control == "detach":
                        logp = logp.detach()
                    out = clipped_policy_loss(logp[:, None], ro.logp_old[a:a + chunk, j, None].to(dev),
                                              adv[a:a + chunk], torch.ones_like(logp[:, None]),
                                              self.clip_eps, self.clip_eps, normalization="token_mean")
                    scaled = out.loss * (chunk / (part * k))        # token mean over the whole part
                    if scaled.requires_grad:                       # no gradient path (detach control): no update
                        scaled.backward()
                    total += float(scaled.detach())
                    clips.append(out.clip_fraction)
                    if p == 0:
                        ratio_dev_first = max(ratio_dev_first, abs(out.ratio_max - 1), abs(out.ratio_min - 1))
            grads = [q.grad for q in self.model.parameters() if q.grad is not None]
            if grads:
                norms.append(float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)))
                self.opt.step()
            losses.append(total)
        return {"loss": float(np.mean(losses)), "clip_fraction": float(np.mean(clips)),
                "grad_norm": float(np.mean(norms)) if norms else 0.0, "ratio_dev_first": ratio_dev_first}


def autocast_wrapper(precision: str, device_type: str) -> Callable:
    """Wrap a model so calls run under bf16 autocast (fp32 master weights) when precision == 'bf16'."""
    def wrap(model: Callable) -> Callable:
        if precision != "bf16":
            return model

        def call(x, s, cond):
            with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
                return model(x, s, cond).float()
        return call
    return wrap
