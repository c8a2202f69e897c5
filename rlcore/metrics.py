"""Evaluation metrics of KEVIN.md "Results to compare against" (pure functions).

A trajectory is correct if any of its kernels is; its performance is its fastest correct kernel's speedup (0 if none).
best@k = max over k trajectories, avg@k = mean over them; pass@k uses the unbiased estimator 1 - C(n-c, k) / C(n, k).
"""
from __future__ import annotations

from math import comb
from typing import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k <= 0 or k > n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def trajectory_outcome(turn_correct: Sequence[bool], turn_speedup: Sequence[float | None]) -> tuple[bool, float]:
    """(correct, speedup) of one trajectory from its turns."""
    best = 0.0
    ok = False
    for c, s in zip(turn_correct, turn_speedup):
        if c:
            ok = True
            best = max(best, float(s or 0.0))
    return ok, best


def best_and_avg_at_k(values: Sequence[float], k: int) -> tuple[float, float]:
    """best@k and avg@k over the first k trajectories' values (correctness as 0/1, or speedups)."""
    v = np.asarray(list(values)[:k], dtype=np.float64)
    if v.size == 0:
        return 0.0, 0.0
    return float(v.max()), float(v.mean())


def fast_p(correct: Sequence[bool], speedups: Sequence[float], p: float) -> float:
    """Share of samples that are correct AND have speedup > p (KernelBench's fast_p; fast_0 = correctness)."""
    c = np.asarray(correct, dtype=bool)
    s = np.asarray(speedups, dtype=np.float64)
    if c.size == 0:
        return 0.0
    return float((c & (s > p)).mean())
