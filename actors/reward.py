"""RewardAggregator: turns a step's EvalResults into scores, turn returns and GRPO advantages (KEVIN.md "Reward and
credit assignment"), computes the step's rollout metrics, writes trajectories.jsonl and publishes ray.util.metrics.

The math lives in rlcore.rewards / rlcore.metrics; this file only groups samples and counts. The actor is the one place
that reads trajectory payloads (TurnSample refs resolved here, never in the controller), so it also computes response
lengths, tokens and the Not-Okay ratio, and writes every turn to the run directory.

    python -m pytest tests/test_reward_math.py -q
"""
from __future__ import annotations

import json
import os
import pickle
import time
from collections import Counter
from typing import Any, Optional, Sequence

import numpy as np
import ray

from rlcore.metrics import best_and_avg_at_k, trajectory_outcome
from rlcore.rewards import group_advantages, kernel_score, turn_returns


# ------------------------------------------------------------------------------------------------------ pure functions
def score_group(results: Sequence[Sequence[Any]], algo) -> dict:
    """Scores, returns and advantages of one task group.

    results: per trajectory, its EvalResults in turn order (trajectories may be shorter than T when a rollout failed).
    Returns flat lists in (trajectory, turn) order plus the group statistics.
    """
    scores, returns = [], []
    for traj in results:
        s = [kernel_score(r.correct, r.speedup, algo.correctness_weight, algo.max_speedup_reward, r.rewarded)
             for r in traj]
        scores.append(s)
        returns.append(turn_returns(s, algo.gamma, algo.return_mode))
    flat_returns = [x for r in returns for x in r]                  # [G x T] flattened
    adv = group_advantages(flat_returns, algo.normalize_advantage_std)
    return {"scores": [x for s in scores for x in s], "returns": flat_returns, "advantages": adv.advantages,
            "zero_variance": adv.zero_variance, "return_mean": adv.mean, "return_std": adv.std,
            "trajectory_outcomes": [trajectory_outcome([r.correct and r.rewarded for r in t],
                                                       [r.speedup if r.rewarded else 0.0 for r in t])
                                    for t in results]}


def not_okay(thought: str, text: str) -> bool:
    """True when the chain of thought (or, without one, the response) does not start with "Okay" (KEVIN.md's early
    warning of collapse; QwQ always starts its thoughts so)."""
    head = (thought or text or "").lstrip()
    return not head.startswith("Okay")


def step_metrics(groups: list[dict], turn_meta: list[list[list[dict]]], max_turns: int) -> dict:
    """Rollout metrics of one step.

    groups: score_group outputs, one per task; turn_meta: per task, per trajectory, per turn
    {"correct", "speedup", "rewarded", "reason", "n_tokens", "not_okay", "finish_reason"}.
    Per-turn lists have max_turns entries (None where no trajectory reached that turn).
    """
    flat = [m for task in turn_meta for traj in task for m in traj]
    scores = [s for g in groups for s in g["scores"]]
    out: dict = {"reward": float(np.mean(scores)) if scores else 0.0,
                 "samples": len(flat),
                 "zero_variance_groups": int(sum(g["zero_variance"] for g in groups))}
    by_turn: list[list[dict]] = [[] for _ in range(max_turns)]
    for task in turn_meta:
        for traj in task:
            for t, m in enumerate(traj):
                by_turn[t].append(m)
    out["correct_per_turn"] = [float(np.mean([m["correct"] for m in ms])) if ms else None for ms in by_turn]
    # speedup of a turn = mean over its samples, an incorrect or unrewarded kernel counting 0 (KEVIN.md avg speedup)
    out["speedup_per_turn"] = [float(np.mean([m["speedup"] for m in ms])) if ms else None for ms in by_turn]
    out["not_okay_per_turn"] = [float(np.mean([m["not_okay"] for m in ms])) if ms else None for ms in by_turn]
    out["correct"] = float(np.mean([m["correct"] for m in flat])) if flat else 0.0
    best_c, avg_c, best_s, avg_s = [], [], [], []
    for g in groups:
        outcomes = g["trajectory_outcomes"]
        k = len(outcomes)
        b, a = best_and_avg_at_k([float(c) for c, _ in outcomes], k)
        best_c.append(b), avg_c.append(a)
        b, a = best_and_avg_at_k([s for _, s in outcomes], k)
        best_s.append(b), avg_s.append(a)
    out.update({"best_at_g_correct": _mean(best_c), "avg_at_g_correct": _mean(avg_c),
                "best_at_g_speedup": _mean(best_s), "avg_at_g_speedup": _mean(avg_s)})
    out["rejections"] = dict(Counter(m["reason"] for m in flat if m["reason"]))
    lengths = [m["n_tokens"] for m in flat]
    out["response_tokens_mean"] = _mean(lengths)
    out["response_tokens_max"] = int(max(lengths)) if lengths else 0
    out["response_tokens_total"] = int(sum(lengths))
    out["truncated_share"] = _mean([m["finish_reason"] == "length" for m in flat])
    return out


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else 0.0


def _turn_meta(result: Any, sample: Any) -> dict:
    rewarded = bool(result.rewarded)
    return {"correct": bool(result.correct and rewarded),
            "speedup": float(result.speedup or 0.0) if (result.correct and rewarded) else 0.0,
            "rewarded": rewarded, "reason": result.reason,
            "n_tokens": len(sample.token_ids) if sample is not None else 0,
            "not_okay": not_okay(sample.thought, sample.text) if sample is not None else True,
            "finish_reason": sample.finish_reason if sample is not None else "error"}


# ---------------------------------------------------------------------------------------------------------- the actor
@ray.remote(num_cpus=0)
class RewardAggregator:
    """Thin shell: resolves TurnSample refs (payloads stay out of the controller), scores, writes trajectories.jsonl,
    publishes ray.util.metrics. One per run, named "reward-aggregator"."""

    def __init__(self, algo_cfg, run_name: str, trajectories_path: Optional[str] = None, get_timeout_s: float = 300.0):
        from runtime.metrics import RLMetrics
        self.algo = algo_cfg
        self.run_name = run_name
        self.path = trajectories_path
        self.get_timeout_s = get_timeout_s
        self.metrics = RLMetrics(run_name)
        self.steps_scored = 0

    def __repr__(self) -> str:
        return f"RewardAggregator(run={self.run_name}, steps={self.steps_scored})"

    def score_step(self, step: int, groups: list[dict]) -> dict:
        """groups: [{"task": name, "trajectories": [[{"result": EvalResult, "ref": ObjectRef[TurnSample] | None,
        "trajectory_id": int}, ...turns], ...G]}]. Returns flat advantages (task, trajectory, turn order), the
        step's rollout metrics and small per-sample metadata (weight version, tokens)."""
        t0 = time.time()
        scored, metas, flat_adv, flat_meta = [], [], [], []
        lines = []
        for g in groups:
            trajs = g["trajectories"]
            sc = score_group([[turn["result"] for turn in traj] for traj in trajs], self.algo)
            scored.append(sc)
            task_meta, i = [], 0
            for traj in trajs:
                refs = [turn["ref"] for turn in traj]
                samples = self._get_samples(refs)
                traj_meta = []
                for turn, sample in zip(traj, samples):
                    m = _turn_meta(turn["result"], sample)
                    m["weight_version"] = getattr(sample, "weight_version", -1)
                    traj_meta.append(m)
                    flat_meta.append({"weight_version": m["weight_version"], "n_tokens": m["n_tokens"]})
                    if self.path:
                        lines.append(_trajectory_line(step, g["task"], turn, sample, sc, i))
                    i += 1
                task_meta.append(traj_meta)
            metas.append(task_meta)
            flat_adv.extend(sc["advantages"])
        if lines:
            with open(self.path, "a") as fh:
                fh.write("".join(lines))
        out = step_metrics(scored, metas, self.algo.max_turns)
        out["score_s"] = time.time() - t0
        self.steps_scored += 1
        return {"advantages": flat_adv, "metrics": out, "sample_meta": flat_meta}

    def _get_samples(self, refs: list) -> list:
        live = [r for r in refs if r is not None]
        try:
            got = iter(ray.get(live, timeout=self.get_timeout_s)) if live else iter(())
        except Exception:           # a failed generation: score it, but it has no payload
            got = iter(_get_each(live, self.get_timeout_s))
        return [next(got) if r is not None else None for r in refs]

    def publish(self, metrics: dict) -> None:
        """Set the ray.util.metrics gauges/counters from a step's metrics (the controller adds phase times)."""
        self.metrics.record(metrics)

    def save_samples(self, path: str, refs: list) -> int:
        """Write the TurnSamples behind `refs` to `path` (a checkpoint's buffered batch; the controller never holds
        them). Returns how many; a failed generation's ref is stored as None."""
        samples = self._get_samples(list(refs))
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            pickle.dump(samples, fh)
        os.replace(tmp, path)
        return len(samples)

    def load_samples(self, path: str) -> list:
        """Refs to the TurnSamples `save_samples` wrote, in the same order (owned by this long-lived actor)."""
        with open(path, "rb") as fh:
            samples = pickle.load(fh)
        return [ray.put(s) for s in samples]

    def truncate_trajectories(self, from_step: int) -> int:
        """Drop lines of steps >= from_step (a resumed run redoes them). Returns the lines dropped."""
        from runtime.rundir import truncate_jsonl
        return truncate_jsonl(self.path, from_step) if self.path else 0


def _get_each(refs: list, timeout_s: float) -> list:
    out = []
    for r in refs:
        try:
            out.append(ray.get(r, timeout=timeout_s))
        except Exception:
            out.append(None)
    return out


def _trajectory_line(step: int, task: str, turn: dict, sample: Any, sc: dict, i: int) -> str:
    r = turn["result"]
    rec = {"step": step, "task": task, "trajectory_id": turn["trajectory_id"],
           "turn": getattr(sample, "turn", None), "weight_version": getattr(sample, "weight_version", None),
           "prompt": getattr(sample, "prompt_text", ""), "response": getattr(sample, "text", ""),
           "kernel": getattr(sample, "kernel", None), "finish_reason": getattr(sample, "finish_reason", "error"),
           "n_tokens": len(sample.token_ids) if sample is not None else 0,
           "dropped_turns": getattr(sample, "dropped_turns", 0),
           "eval": r.to_dict() if hasattr(r, "to_dict") else dict(r.__dict__),
           "score": sc["scores"][i], "return": sc["returns"][i], "advantage": sc["advantages"][i]}
    return json.dumps(rec) + "\n"
