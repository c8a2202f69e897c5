"""Which denoising steps are sampled with the SDE and trained, per iteration (MIXGRPO.md "Sliding window").

Modes (one `if` each):
  progressive   MixGRPO: window {l .. l+w-1}; l starts at 0 and moves by `stride` every `interval_iters` iterations,
                rolling back to 0 past the last trainable start; optional exponential decay of the interval
                tau(l) = ceil(tau0 * exp(-k * relu(l - l_thr))), k = 0.1, l_thr = 13
  frozen        MixGRPO-Flash*: l = 0 for ever (progressive with stride 0)
  random        l drawn each iteration from a seeded RNG keyed by (seed, iteration) - drawn here, in the controller,
                and shipped to the workers inside the plan, so every worker sees the same window
  all           Flow-GRPO: every step is SDE and trained
  random_subset DanceGRPO: every step is SDE; a seeded random subset of `subset_steps` steps is trained

The last two steps are never in a MixGRPO window (as in the official code): starts go 0 .. T - w - 2.
The scheduler is a pure function of the iteration number, so a checkpoint needs only the iteration.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flowrl.sampler import SamplePlan

DECAY_K = 0.1
DECAY_THRESHOLD = 13
MODES = ("progressive", "frozen", "random", "all", "random_subset")


def decayed_interval(interval0: int, start: int, k: float = DECAY_K, threshold: int = DECAY_THRESHOLD) -> int:
    """tau(l) = ceil(tau0 * exp(-k * relu(l - l_thr))), at least 1."""
    return max(1, int(math.ceil(interval0 * math.exp(-k * max(0, start - threshold)))))


@dataclass
class WindowScheduler:
    mode: str
    num_steps: int                  # T
    size: int = 4                   # w
    interval_iters: int = 25        # tau
    stride: int = 1                 # s
    decay: bool = False
    subset_steps: int = 14
    seed: int = 0
    flash: str = "off"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"flow.window_mode: {self.mode!r} not one of {', '.join(MODES)}")
        if self.mode in ("progressive", "frozen", "random") and self.max_start < 0:
            raise ValueError(f"flow.window_size: {self.size} leaves no room in {self.num_steps} steps "
                             f"(needs window_size <= num_steps - 2)")
        if self.mode == "random_subset" and not 1 <= self.subset_steps <= self.num_steps:
            raise ValueError(f"flow.subset_steps: must be in 1..{self.num_steps}, got {self.subset_steps}")

    @property
    def max_start(self) -> int:
        return self.num_steps - self.size - 2

    def start(self, iteration: int) -> int:
        """Window start l at `iteration` (0-based)."""
        if self.mode == "frozen":
            return 0
        if self.mode == "random":
            rng = np.random.default_rng([self.seed, iteration])
            return int(rng.integers(0, self.max_start + 1))
        if self.mode != "progressive":
            return 0
        # Walk the schedule from iteration 0: cheap, and needs no state beyond the iteration number.
        start, since_move = 0, 0
        for _ in range(iteration):
            since_move += 1
            tau = decayed_interval(self.interval_iters, start) if self.decay else self.interval_iters
            if since_move >= tau:
                start, since_move = start + self.stride, 0
                if start > self.max_start:
                    start = 0
        return start

    def plan(self, iteration: int) -> SamplePlan:
        T = self.num_steps
        if self.mode == "all":
            return SamplePlan(list(range(T)), list(range(T)), "off")
        if self.mode == "random_subset":
            rng = np.random.default_rng([self.seed, iteration, 1])
            subset = sorted(int(i) for i in rng.choice(T, self.subset_steps, replace=False))
            return SamplePlan(list(range(T)), subset, "off")
        l = self.start(iteration)
        window = list(range(l, l + self.size))
        return SamplePlan(window, window, self.flash)
