"""Exact-math tests of the MixGRPO sampler, solvers, schedules and window schedulers (pure, CPU, ~5 s).

Gaussian data N(mu, s0^2) has the exact velocity v*(x, s) = -mu + (s - (1-s) s0^2) / ((1-s)^2 s0^2 + s^2) (x - (1-s) mu)
and the exact flow map x_0 = mu + s0 * eps from x_1 = eps, so solver errors are measured against the truth.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowrl.sampler import (SamplePlan, SamplerSettings, dpm_step, euler_step, gaussian_logp_mean, ode_solve,
                            sample_rollout, sde_mean_std, sde_noise_level)
from flowrl.schedule import flash_tail_points, shifted, timesteps
from flowrl.window import WindowScheduler, decayed_interval

MU, S0 = 1.5, 0.5


def exact_v(x: torch.Tensor, s: float) -> torch.Tensor:
    return -MU + (s - (1 - s) * S0 ** 2) / ((1 - s) ** 2 * S0 ** 2 + s ** 2) * (x - (1 - s) * MU)


def solve_error(n: int, solver: str) -> float:
    eps = torch.linspace(-2.5, 2.5, 101, dtype=torch.float64)
    out = ode_solve(exact_v, eps.clone(), timesteps(n, 3.0), solver)
    return float((out - (MU + S0 * eps)).abs().max())


# ------------------------------------------------------------------------------------------------------ schedules
def test_schedule_values_by_hand():
    s = timesteps(25, 3.0)
    assert len(s) == 26 and s[0] == 1.0 and s[-1] == 0.0
    u = 1 - 1 / 25
    assert s[1] == pytest.approx(3 * u / (1 + 2 * u), abs=1e-15)
    assert all(a > b for a, b in zip(s, s[1:]))
    assert shifted(0.5, 1.0) == 0.5


def test_flash_tail_counts_match_the_paper():
    # Flash* (frozen window 0..3, r = 0.2): 4 window + floor(22 * 0.2) = 4 tail calls = 8 NFE, as reported.
    pts = flash_tail_points(25, 3, 3.0, 0.2)
    assert len(pts) - 1 == 4 and pts[-1] == 0.0
    assert pts[0] == pytest.approx(timesteps(25, 3.0)[4], abs=1e-15)     # starts at s_{L+1}
    assert len(flash_tail_points(25, 3, 3.0, 0.4)) - 1 == 8              # Flash: floor(22 * 0.4)
    assert len(flash_tail_points(25, 23, 3.0, 0.2)) - 1 == 1             # at least one step


# ------------------------------------------------------------------------------------------------------- solvers
def test_euler_error_halves_per_doubling():
    e = [solve_error(n, "euler") for n in (20, 40, 80)]
    for a, b in zip(e, e[1:]):
        assert 1.7 < a / b < 2.3, e


def test_dpm_solver_2m_is_second_order():
    e20, e40 = solve_error(20, "dpm2m"), solve_error(40, "dpm2m")
    assert e20 / e40 >= 3.0, (e20, e40)
    assert e40 < solve_error(40, "euler") / 5


def test_first_order_dpm_equals_euler():
    x = torch.linspace(-3, 3, 50, dtype=torch.float64)
    for s, t in [(1.0, 0.9), (0.7, 0.4), (0.3, 0.0), (0.05, 0.0)]:
        v = exact_v(x, s)
        assert torch.allclose(dpm_step(x, x - s * v, s, t), euler_step(x, v, s, t), atol=1e-12, rtol=0)
    assert abs(solve_error(30, "dpm1") - solve_error(30, "euler")) < 1e-12


def test_sde_keeps_the_marginal():
    n, steps = 40000, 400
    sig = timesteps(steps, 3.0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    for i in range(steps):
        g = sde_noise_level(sig[i], sig[1], 0.7, "flow_grpo")
        mu, std = sde_mean_std(x, exact_v(x, sig[i]), sig[i], sig[i + 1], g)
        x = mu.double() + std * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    assert abs(float(x.std()) - S0) < 0.01 and abs(float(x.mean()) - MU) < 0.01


def test_sde_mean_and_logp_by_hand():
    x, v = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 0.25]])
    s, t, g = 0.5, 0.4, 0.7 * math.sqrt(0.5 / 0.5)
    mu, std = sde_mean_std(x, v, s, t, g)
    d = t - s
    expect = x + d * (v + g * g / (2 * s) * (x + (1 - s) * v))
    assert torch.allclose(mu, expect, atol=1e-7) and std == pytest.approx(g * math.sqrt(0.1))
    nxt = torch.tensor([[1.1, -2.2]])
    by_hand = np.mean([-0.5 * ((nxt[0, j] - mu[0, j]) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
                       for j in range(2)])
    assert float(gaussian_logp_mean(nxt, mu, std)) == pytest.approx(float(by_hand), abs=1e-6)
    # at s = 1 the Flow-GRPO noise level uses s_1; DanceGRPO's is constant
    assert sde_noise_level(1.0, 0.9, 0.7, "flow_grpo") == pytest.approx(0.7 * 3.0)
    assert sde_noise_level(0.2, 0.9, 0.3, "dance_grpo") == 0.3


# -------------------------------------------------------------------------------------------------- shared prefix
class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.SiLU(), torch.nn.Linear(64, 2))

    def forward(self, x, s, c):
        return self.net(torch.cat([x, s[:, None], c[:, None].float()], 1))


@pytest.mark.parametrize("start", [0, 6, 15])
def test_shared_prefix_equals_independent_recomputation(start):
    st = SamplerSettings(timesteps(25, 3.0), 3.0, 0.7, "flow_grpo", group_size=6)
    plan = SamplePlan(list(range(start, start + 4)), list(range(start, start + 4)))
    cond, seeds = torch.tensor([0, 1, 2]), [11, 12, 13]
    with torch.no_grad():
        a = sample_rollout(Mlp(), cond, seeds, (2,), plan, st, share_prefix=True)
        b = sample_rollout(Mlp(), cond, seeds, (2,), plan, st, share_prefix=False)
    for name in ("x_steps", "x_next", "logp_old", "x_final"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    # P * (start + (T - start) * G) rows instead of P * G * T: the prefix is computed once per prompt.
    assert a.model_rows == 3 * (start + (25 - start) * 6)
    assert b.model_rows == a.model_rows_unshared == 3 * 6 * 25
    assert a.nfe == 25
    assert not torch.equal(a.x_final[0], a.x_final[1])           # branches differ after the window


def test_flash_tail_nfe():
    st = SamplerSettings(timesteps(25, 3.0), 3.0, 0.7, "flow_grpo", group_size=2)
    with torch.no_grad():
        ro = sample_rollout(Mlp(), torch.tensor([0]), [1], (2,), SamplePlan([0, 1, 2, 3], [0, 1, 2, 3], "flash_star"), st)
    assert ro.nfe == 8 and torch.isfinite(ro.x_final).all()


# --------------------------------------------------------------------------------------------------------- windows
def test_progressive_window_moves_every_tau_and_rolls_back():
    w = WindowScheduler("progressive", num_steps=10, size=4, interval_iters=3, stride=2)
    starts = [w.start(i) for i in range(14)]
    # max start = 10 - 4 - 2 = 4: 0,0,0,2,2,2,4,4,4, then 6 > 4 -> 0
    assert starts == [0, 0, 0, 2, 2, 2, 4, 4, 4, 0, 0, 0, 2, 2]
    assert w.plan(4).sde_steps == [2, 3, 4, 5] == w.plan(4).train_steps


def test_frozen_and_all_and_subset():
    assert {WindowScheduler("frozen", 25).start(i) for i in range(300)} == {0}
    assert WindowScheduler("progressive", 25, stride=0).start(200) == 0
    plan = WindowScheduler("all", 25).plan(3)
    assert plan.sde_steps == plan.train_steps == list(range(25))
    a = WindowScheduler("random_subset", 25, subset_steps=14, seed=5)
    p = a.plan(7)
    assert p.sde_steps == list(range(25)) and len(p.train_steps) == 14 and p.train_steps == sorted(set(p.train_steps))
    assert WindowScheduler("random_subset", 25, subset_steps=14, seed=5).plan(7) == p
    assert a.plan(8).train_steps != p.train_steps


def test_random_window_seeded_and_identical_across_workers():
    a, b = WindowScheduler("random", 25, seed=3), WindowScheduler("random", 25, seed=3)
    sa, sb = [a.start(i) for i in range(50)], [b.start(i) for i in range(50)]
    assert sa == sb and len(set(sa)) > 5 and max(sa) <= 25 - 4 - 2
    assert sa != [WindowScheduler("random", 25, seed=4).start(i) for i in range(50)]


def test_decay_formula():
    assert decayed_interval(25, 0) == 25 and decayed_interval(25, 13) == 25
    assert decayed_interval(25, 14) == math.ceil(25 * math.exp(-0.1))          # 23
    assert decayed_interval(25, 20) == math.ceil(25 * math.exp(-0.7))          # 13
    w = WindowScheduler("progressive", 40, size=4, interval_iters=25, decay=True)
    it, moves = 0, []
    while len(moves) < 16:
        if w.start(it + 1) != w.start(it):
            moves.append(it + 1)
        it += 1
    gaps = np.diff([0] + moves)
    assert list(gaps[:14]) == [25] * 14                                     # l = 0..13: no decay
    assert gaps[14] == math.ceil(25 * math.exp(-0.1)) and gaps[15] == math.ceil(25 * math.exp(-0.2))
