"""Timestep schedules for rectified flow (pure; no torch state).

Convention (FLUX/SD3): x_s = (1 - s) x0 + s eps, s = 1 is pure noise, s = 0 is data. Sampling goes s_0 = 1 -> s_T = 0,
step i takes s_i -> s_{i+1} (d_i = s_{i+1} - s_i < 0).

    shifted(u) = shift * u / (1 + (shift - 1) u)         u_i = 1 - i / T
    timesteps(T, shift) = [shifted(u_0), ..., shifted(u_T)]

MixGRPO-Flash re-schedules the steps after the window: from u_{L+1} (L = last window step) to 0 in n_post steps,
n_post = floor(max((T - L) * r, 1)), shift applied to linspace(u_{L+1}, 0, n_post + 1) (n_post + 1 points, so n_post
model calls; r = 0.4 Flash, 0.2 Flash*). Values are plain Python floats (float64): every consumer converts them the
same way, which keeps rollout and training bit-identical.
"""
from __future__ import annotations

import math

FLASH_RATIO = {"flash": 0.4, "flash_star": 0.2}


def shifted(u: float, shift: float) -> float:
    """Timestep shift: spends more steps at high noise for shift > 1 (shifted(0) = 0, shifted(1) = 1)."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def timesteps(num_steps: int, shift: float = 3.0) -> list[float]:
    """T + 1 noise levels s_0 = 1 > s_1 > ... > s_T = 0.

    >>> [round(s, 4) for s in timesteps(2, 3.0)]      # u = 1, 0.5, 0 -> 1, 1.5/2, 0
    [1.0, 0.75, 0.0]
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return [shifted(1.0 - i / num_steps, shift) for i in range(num_steps + 1)]


def flash_tail_points(num_steps: int, last_window_step: int, shift: float, ratio: float) -> list[float]:
    """Noise levels of the re-scheduled ODE tail after the window, starting at s_{L+1} and ending at 0.

    Returns n_post + 1 levels (n_post model calls). `last_window_step` is L = l + w - 1.
    """
    T, L = num_steps, last_window_step
    if not 0 <= L < T:
        raise ValueError(f"last window step {L} outside 0..{T - 1}")
    n_post = int(math.floor(max((T - L) * ratio, 1.0)))
    u_start = 1.0 - (L + 1) / T
    return [shifted(u_start * (1.0 - j / n_post), shift) for j in range(n_post + 1)]
