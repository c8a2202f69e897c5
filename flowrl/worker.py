"""What a sampler and a reward worker do, without Ray (the actors in actors/flow.py are thin shells over these).

The controller runs the same classes in-process when `flow.use_actors` is false; that is the single-process
reference the Ray version must match metric for metric.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from flowrl import rewards as rw
from flowrl.bundle import FlowBundle, build_bundle
from flowrl.grpo import autocast_wrapper
from flowrl.sampler import Rollout, SamplePlan, SamplerSettings, cond_cat, sample_rollout
from flowrl.schedule import timesteps


def sampler_settings(flow_cfg, chunk_rows: int) -> SamplerSettings:
    return SamplerSettings(sigmas=timesteps(flow_cfg.num_steps, flow_cfg.shift), shift=flow_cfg.shift,
                           eta=flow_cfg.eta, sde_form=flow_cfg.sde_form, group_size=flow_cfg.group_size,
                           chunk_rows=chunk_rows)


class SamplerCore:
    """Holds one copy of the flow model; samples rollouts for a list of prompts under a given weight version."""

    def __init__(self, flow_cfg, bundle: Optional[FlowBundle] = None):
        self.cfg = flow_cfg
        self.bundle = bundle if bundle is not None else build_bundle(flow_cfg, flow_cfg.device)
        self.weight_version = 0
        self.call = autocast_wrapper(flow_cfg.precision, torch.device(self.bundle.device).type)(self.bundle.model)

    def load_weights(self, state: dict, version: int) -> None:
        self.bundle.model.load_state_dict(state)
        self.weight_version = version

    @torch.no_grad()
    def sample(self, plan: SamplePlan, prompt_idx: Sequence[int], seeds: Sequence[int], chunk_rows: int,
               share_prefix: bool = True) -> tuple[Rollout, torch.Tensor]:
        """Rollout of len(prompt_idx) prompts x G, and the decoded clean samples (reward inputs)."""
        b = self.bundle
        b.model.eval()
        cond = b.make_cond([b.prompts[i] for i in prompt_idx])
        ro = sample_rollout(self.call, cond, seeds, b.latent_shape, plan, sampler_settings(self.cfg, chunk_rows),
                            device=b.device, dtype=b.dtype, share_prefix=share_prefix)
        ro.stats["weight_version"] = self.weight_version
        return ro, b.decode(ro.x_final)


class RewardCore:
    """Scores decoded samples with every weighted reward."""

    def __init__(self, names: Sequence[str], custom: Optional[dict] = None):
        self.names, self.custom = list(names), custom
        for n in self.names:                 # fail at start-up, not in the middle of a run
            if not (custom and n in custom):
                rw.get_reward(n)

    def score(self, samples: torch.Tensor, prompts: list) -> dict[str, list[float]]:
        return rw.score_all(self.names, samples, prompts, self.custom)


def concat_rollouts(parts: list[Rollout]) -> Rollout:
    """Join per-worker rollouts (each prompt-major) into one, renumbering prompts."""
    if len(parts) == 1:
        return parts[0]
    offsets, off = [], 0
    for r in parts:
        offsets.append(off)
        off += int(r.prompt_ids.max()) + 1 if r.prompt_ids.numel() else 0
    first = parts[0]
    return Rollout(
        x_steps=torch.cat([r.x_steps for r in parts]), x_next=torch.cat([r.x_next for r in parts]),
        logp_old=torch.cat([r.logp_old for r in parts]), train_steps=first.train_steps,
        x_final=torch.cat([r.x_final for r in parts]), cond=cond_cat([r.cond for r in parts]),
        prompt_ids=torch.cat([r.prompt_ids + o for r, o in zip(parts, offsets)]), nfe=first.nfe,
        model_rows=sum(r.model_rows for r in parts), model_rows_unshared=sum(r.model_rows_unshared for r in parts),
        stats={"model_calls": sum(r.stats.get("model_calls", 0) for r in parts)})
