"""Hand-computed tests of rlcore/rewards.py, rlcore/losses.py, rlcore/metrics.py and actors/reward.py's grouping.

    python -m pytest tests/test_reward_math.py -q
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import pytest
import torch

from actors.reward import not_okay, score_group, step_metrics
from rlcore.losses import clipped_policy_loss, k3_kl
from rlcore.metrics import best_and_avg_at_k, fast_p, pass_at_k, trajectory_outcome
from rlcore.rewards import group_advantages, kernel_score, turn_returns
from runtime.config import AlgoConfig


@dataclass
class R:                      # the EvalResult fields the reward math reads
    correct: bool
    speedup: Optional[float]
    rewarded: bool = True
    reason: Optional[str] = None


def test_kernel_score_by_hand():
    assert kernel_score(True, 1.5) == pytest.approx(1.8)            # 0.3 + 1.5
    assert kernel_score(False, 3.0) == 0.0
    assert kernel_score(True, 2.0, rewarded=False) == 0.0           # a cheat earns nothing
    assert kernel_score(True, None) == pytest.approx(0.3)           # timing failed: correctness part only
    assert kernel_score(True, 40.0, max_speedup=10.0) == pytest.approx(10.3)
    assert kernel_score(True, float("nan")) == pytest.approx(0.3)


def test_turn_returns_sum_and_max_gamma_04():
    # sum: R2 = 2; R1 = 0 + 0.4*2 = 0.8; R0 = 1 + 0.4*0.8 = 1.32
    assert turn_returns([1.0, 0.0, 2.0], 0.4) == pytest.approx([1.32, 0.8, 2.0])
    # max: R2 = 2; R1 = max(0, 0.8) = 0.8; R0 = max(1, 0.32) = 1
    assert turn_returns([1.0, 0.0, 2.0], 0.4, "max") == pytest.approx([1.0, 0.8, 2.0])


def test_group_advantages_by_hand():
    g = group_advantages([1.0, 3.0])      # mean 2, population std 1
    assert g.advantages == pytest.approx([-1.0, 1.0], abs=1e-5)
    assert (g.mean, g.std, g.zero_variance) == (2.0, 1.0, False)
    z = group_advantages([0.5, 0.5, 0.5])
    assert z.zero_variance and z.advantages == [0.0, 0.0, 0.0]
    assert group_advantages([1.0, 3.0], normalize_std=False).advantages == pytest.approx([-1.0, 1.0])


def test_score_group_flattens_trajectory_turn_order():
    algo = AlgoConfig(gamma=0.4, correctness_weight=0.3)
    # trajectory 0: fail then correct at 2x (score 2.3); trajectory 1: correct 1x (1.3) then a cheat (0)
    res = [[R(False, None, reason="compile_error"), R(True, 2.0)], [R(True, 1.0), R(True, 5.0, rewarded=False)]]
    out = score_group(res, algo)
    assert out["scores"] == pytest.approx([0.0, 2.3, 1.3, 0.0])
    assert out["returns"] == pytest.approx([0.92, 2.3, 1.3, 0.0])       # 0 + 0.4 * 2.3
    mean = (0.92 + 2.3 + 1.3) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in [0.92, 2.3, 1.3, 0.0]) / 4)
    assert out["advantages"] == pytest.approx([(x - mean) / (std + 1e-6) for x in [0.92, 2.3, 1.3, 0.0]])
    assert out["trajectory_outcomes"] == [(True, 2.0), (True, 1.0)]     # the cheat's 5x does not count


def test_step_metrics_per_turn_best_avg_and_rejections():
    algo = AlgoConfig(max_turns=2)
    res = [[R(False, None, reason="format"), R(True, 2.0)], [R(False, None, reason="format"), R(False, None, reason="mismatch")]]
    g = score_group(res, algo)
    meta = [[[{"correct": r.correct and r.rewarded, "speedup": (r.speedup or 0.0) if r.correct else 0.0,
               "reason": r.reason, "n_tokens": 10 * (i + 1), "not_okay": i == 0, "finish_reason": "stop"}
              for i, r in enumerate(t)] for t in res]]
    m = step_metrics([g], meta, 2)
    assert m["correct_per_turn"] == [0.0, 0.5]
    assert m["speedup_per_turn"] == [0.0, 1.0]              # (2 + 0) / 2
    assert m["best_at_g_correct"] == 1.0 and m["avg_at_g_correct"] == 0.5
    assert m["best_at_g_speedup"] == 2.0 and m["avg_at_g_speedup"] == 1.0
    assert m["rejections"] == {"format": 2, "mismatch": 1}
    assert m["not_okay_per_turn"] == [1.0, 0.0]
    assert m["response_tokens_mean"] == 15.0 and m["response_tokens_total"] == 60
    assert m["reward"] == pytest.approx(2.3 / 4)


def test_not_okay_ratio_reads_the_thought_first():
    assert not not_okay("Okay, let me think", "whatever")
    assert not_okay("Hmm", "Okay")
    assert not not_okay("", "  Okay here is the kernel")


def test_pass_at_k_and_best_avg_by_hand():
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)        # 1 - C(3,2)/C(4,2)
    assert pass_at_k(4, 3, 2) == 1.0
    assert best_and_avg_at_k([0.0, 1.5, 0.5], 3) == (1.5, pytest.approx(2 / 3))
    assert trajectory_outcome([False, True, True], [None, 1.2, 0.9]) == (True, 1.2)
    assert fast_p([True, True, False], [1.5, 0.8, 3.0], 1.0) == pytest.approx(1 / 3)


def test_clipped_loss_by_hand_constant_normalization():
    # one sequence, 2 tokens; ratios e^0.5 = 1.6487 and 1; advantage +1; eps_high 0.28 clips the first to 1.28
    logp_old = torch.zeros(1, 2)
    logp_new = torch.tensor([[0.5, 0.0]], requires_grad=True)
    out = clipped_policy_loss(logp_new, logp_old, torch.tensor([1.0]), torch.ones(1, 2), 0.2, 0.28,
                              normalization="constant", constant_length=4)
    # per token max(-A r, -A clip(r)) = [-1.28, -1]; sum -2.28; / (1 sequence * 4)
    assert out.loss.item() == pytest.approx(-2.28 / 4, rel=1e-5)
    assert out.clip_fraction == pytest.approx(0.5)
    out.loss.backward()
    assert logp_new.grad[0, 0].item() == 0.0            # clipped token: no gradient
    assert logp_new.grad[0, 1].item() == pytest.approx(-1 / 4)
    # negative advantage: ratio below 1 - eps_low is clipped
    lo = clipped_policy_loss(torch.tensor([[-1.0]]), torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1),
                             0.2, 0.28, normalization="token_mean")
    assert lo.loss.item() == pytest.approx(0.8)          # max(e^-1 = 0.368, 0.8) with A = -1


def test_k3_kl_by_hand():
    d = torch.tensor([[0.0, math.log(2.0)]])             # logp_ref - logp
    kl = k3_kl(torch.zeros(1, 2), d)
    assert kl[0, 0].item() == pytest.approx(0.0)
    assert kl[0, 1].item() == pytest.approx(2.0 - math.log(2.0) - 1.0)
