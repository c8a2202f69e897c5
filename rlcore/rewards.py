"""Reward and advantage math (pure; no Ray, no torch state). Shared by the kernel and the MixGRPO pipelines.

Kernel pipeline (KEVIN.md "Reward and credit assignment"):
    score s = correctness_weight * correct + min(speedup, max_speedup) * correct     (0 for format/static failures)
    sum form:  R_t = sum_{i>=t} gamma^(i-t) s_i
    max form:  R_t = max_{i>=t} gamma^(i-t) s_i
    advantage: (R - mean_group) / (std_group + eps), the group being all G x T samples of one task.

MixGRPO (MIXGRPO.md "Objective"):
    A_i = clip( sum_k w_k (R_k,i - mean_g R_k) / (std_g R_k + 1e-8), -clip, clip ), weights normalized to sum 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


def kernel_score(correct: bool, speedup: float | None, correctness_weight: float = 0.3,
                 max_speedup: float = 10.0, rewarded: bool = True) -> float:
    """Score of one kernel. `rewarded=False` (format failure, cheat, flagged speedup) gives 0.

    A correct kernel whose speedup is unknown (timing failed) earns only the correctness part.
    """
    if not rewarded or not correct:
        return 0.0
    sp = 0.0 if speedup is None or not math.isfinite(speedup) else max(0.0, min(float(speedup), max_speedup))
    return correctness_weight + sp


def turn_returns(scores: Sequence[float], gamma: float, mode: str = "sum") -> list[float]:
    """Return of every turn of one trajectory from the scores of its turns (index 0 = first turn).

    >>> turn_returns([1.0, 0.0, 2.0], 0.5)        # [1 + 0 + 0.25*2, 0 + 0.5*2, 2]
    [1.5, 1.0, 2.0]
    >>> turn_returns([1.0, 0.0, 2.0], 0.5, "max") # [max(1, 0, 0.5), max(0, 1), 2]
    [1.0, 1.0, 2.0]
    """
    if mode not in ("sum", "max"):
        raise ValueError(f"return mode must be 'sum' or 'max', got {mode!r}")
    out = [0.0] * len(scores)
    running = 0.0
    for t in range(len(scores) - 1, -1, -1):
        s = float(scores[t])
        if mode == "sum":
            running = s + gamma * running
        else:
            running = max(s, gamma * running) if t < len(scores) - 1 else s
        out[t] = running
    return out


@dataclass
class GroupAdvantages:
    advantages: list[float]
    mean: float
    std: float
    zero_variance: bool   # every sample of the group had the same return: no learning signal


def group_advantages(returns: Sequence[float], normalize_std: bool = True, eps: float = 1e-6) -> GroupAdvantages:
    """GRPO advantages of one group (all G x T samples of one task, flattened in any order)."""
    r = np.asarray(returns, dtype=np.float64)
    if r.size == 0:
        return GroupAdvantages([], 0.0, 0.0, True)
    mean = float(r.mean())
    std = float(r.std())          # population std, as GRPO implementations use over the group
    zero_var = std < 1e-12
    adv = r - mean
    if normalize_std:
        adv = adv / (std + eps)
    if zero_var:
        adv = np.zeros_like(r)
    return GroupAdvantages([float(a) for a in adv], mean, std, zero_var)


def multi_reward_advantages(rewards: Mapping[str, Sequence[float]], weights: Mapping[str, float],
                            clip: float = 5.0, eps: float = 1e-8) -> list[float]:
    """MixGRPO multi-reward advantage of one prompt group.

    Each reward is normalized within the group BEFORE weighting (reward scales differ), weights are normalized to sum 1,
    and the result is clipped to [-clip, clip].
    """
    names = [k for k in weights if weights[k] != 0]
    missing = [k for k in names if k not in rewards]
    if missing:
        raise KeyError(f"rewards missing for weighted reward(s): {missing}")
    total_w = float(sum(weights[k] for k in names))
    if total_w <= 0:
        raise ValueError("reward weights must have a positive sum")
    g = len(rewards[names[0]])
    acc = np.zeros(g, dtype=np.float64)
    for k in names:
        r = np.asarray(rewards[k], dtype=np.float64)       # [G]
        if r.shape != (g,):
            raise ValueError(f"reward {k!r} has {r.shape[0]} values, expected {g}")
        acc += (weights[k] / total_w) * (r - r.mean()) / (r.std() + eps)
    return [float(a) for a in np.clip(acc, -clip, clip)]
