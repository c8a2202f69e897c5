"""A flow model together with what the pipeline needs around it: prompts, conditioning, decoding, extra metrics.

`build_bundle(flow_cfg, device)` gives the 2-D toy (CPU, seconds) or FLUX (flowrl/flux.py, lazily imported).
Sampler actors and the controller build the same bundle from the same config, then share weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from flowrl import toy


@dataclass
class FlowBundle:
    model: torch.nn.Module                       # velocity model v(x [N, *D], s [N], cond) -> [N, *D]
    latent_shape: tuple                          # *D
    prompts: list                                # the prompt pool (toy: ints 0..3; FLUX: strings)
    make_cond: Callable[[list], object]          # prompts [P] -> cond [P, ...] (tensor or dict of tensors)
    decode: Callable[[torch.Tensor], torch.Tensor]   # clean latents [N, *D] -> reward inputs (toy: points; images)
    extra_metrics: Callable[[torch.Tensor, list], dict] = field(default=lambda x, p: {})
    device: str = "cpu"
    dtype: torch.dtype = torch.float32


def _toy_metrics(x: torch.Tensor, prompts: list) -> dict:
    return {"hit": float(toy.toy_hit(x, torch.as_tensor(prompts)).mean())}


def build_toy_bundle(pretrain_steps: int = 2000) -> FlowBundle:
    return FlowBundle(model=toy.build_toy(toy.pretrained_toy(steps=pretrain_steps)), latent_shape=toy.LATENT_SHAPE,
                      prompts=list(range(toy.NUM_PROMPTS)), make_cond=lambda ps: torch.as_tensor(ps, dtype=torch.long),
                      decode=lambda x: x, extra_metrics=_toy_metrics)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def build_bundle(flow_cfg, device: str = "auto") -> FlowBundle:
    """The bundle named by `flow.model`: toy2d, flux (FLUX.1-dev weights), flux_tiny_random (random tiny transformer)."""
    if flow_cfg.model == "toy2d":
        return build_toy_bundle(flow_cfg.toy_pretrain_steps)
    from flowrl import flux     # diffusers is optional: imported only for FLUX runs
    return flux.build_flux_bundle(flow_cfg, resolve_device(device))
