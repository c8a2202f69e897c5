"""Ray actors of the MixGRPO pipeline: FlowSampler (one flow model, samples rollouts) and FlowReward (scores samples).

Thin shells over flowrl.worker.SamplerCore / RewardCore. The controller ships the weights as an ObjectRef with a
version number on every `sample` call; a sampler loads them only when its version differs, so a restarted actor
(max_restarts) catches up by itself. Rollouts return on the CPU (the controller may have no GPU).

    python -m pytest tests/test_mixgrpo.py -k ray -q
"""
from __future__ import annotations

from typing import Optional, Sequence

import ray
import torch

from flowrl.sampler import Rollout, SamplePlan
from flowrl.worker import RewardCore, SamplerCore


def _to_cpu(ro: Rollout) -> Rollout:
    mv = lambda t: t.detach().cpu() if torch.is_tensor(t) else {k: v.detach().cpu() for k, v in t.items()}  # noqa
    ro.x_steps, ro.x_next, ro.logp_old, ro.x_final = mv(ro.x_steps), mv(ro.x_next), mv(ro.logp_old), mv(ro.x_final)
    ro.cond = mv(ro.cond)
    return ro


@ray.remote(max_restarts=2, max_task_retries=1)
class FlowSampler:
    def __init__(self, flow_cfg, name: str, torch_threads: int = 0):
        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.name = name
        self.core = SamplerCore(flow_cfg)

    def __repr__(self) -> str:      # shown in the Ray dashboard
        return f"FlowSampler({self.name}, v{self.core.weight_version})"

    def sample(self, weights: list, version: int, plan: SamplePlan, prompt_idx: Sequence[int], seeds: Sequence[int],
               chunk_rows: int) -> tuple[Rollout, torch.Tensor]:
        """`weights` is [ObjectRef of a state dict] (nested, so it is fetched only when the version changed)."""
        if version != self.core.weight_version:
            self.core.load_weights(ray.get(weights[0], timeout=600), version)
        ro, decoded = self.core.sample(plan, prompt_idx, seeds, chunk_rows)
        return _to_cpu(ro), decoded.detach().cpu()

    def ping(self) -> str:
        return self.name


@ray.remote(max_restarts=2, max_task_retries=1)
class FlowReward:
    def __init__(self, names: Sequence[str], name: str, torch_threads: int = 0):
        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.name = name
        self.core = RewardCore(names)

    def __repr__(self) -> str:
        return f"FlowReward({self.name}, {'+'.join(self.core.names)})"

    def score(self, samples: torch.Tensor, prompts: list) -> dict[str, list[float]]:
        return self.core.score(samples, prompts)

    def ping(self) -> str:
        return self.name


def start_flow_actors(flow_cfg, run_name: str, torch_threads: int = 0,
                      sampler_gpus: float = 0.0, namespace_tag: Optional[str] = None) -> tuple[list, list]:
    """Start the named sampler and reward actors (names: <run>-flow-sampler-<i>, <run>-flow-reward-<i>)."""
    tag = namespace_tag or run_name
    samplers = [FlowSampler.options(name=f"{tag}-flow-sampler-{i}", num_gpus=sampler_gpus, num_cpus=1)
                .remote(flow_cfg, f"{tag}-flow-sampler-{i}", torch_threads) for i in range(flow_cfg.num_sampler_workers)]
    names = [k for k, w in flow_cfg.reward_weights.items() if w]
    rewards = [FlowReward.options(name=f"{tag}-flow-reward-{i}", num_cpus=1)
               .remote(names, f"{tag}-flow-reward-{i}", torch_threads) for i in range(flow_cfg.num_reward_workers)]
    return samplers, rewards
