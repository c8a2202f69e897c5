"""Step metrics: exact values in <run dir>/metrics.jsonl, live values through ray.util.metrics (Prometheus, shown by
the Ray dashboard and by dashboards/grafana_sandbox_rl.json).

The set of metric names and tag keys is fixed here (created once in the actor's __init__), so the dashboard JSON and
the code cannot drift apart silently: tests/test_pipeline_e2e.py checks that every name below appears in the dashboard.

    python -m pytest tests/test_pipeline_e2e.py -q -k dashboard
"""
from __future__ import annotations

import json
import math
from typing import Any, Optional

PREFIX = "sandbox_rl_"

# step-metric key -> gauge description (all tagged with the run name)
GAUGES = {
    "reward": "mean kernel score of the step's samples",
    "correct": "share of the step's kernels that are correct (and rewarded)",
    "best_at_g_correct": "share of tasks with at least one correct trajectory (best@G), mean over tasks",
    "avg_at_g_correct": "share of correct trajectories (avg@G), mean over tasks",
    "best_at_g_speedup": "fastest correct speedup per task (best@G), mean over tasks",
    "avg_at_g_speedup": "mean trajectory speedup per task (avg@G, incorrect = 0)",
    "zero_variance_groups": "task groups whose returns were all equal (no learning signal)",
    "response_tokens_mean": "mean generated tokens per turn",
    "tokens_per_s": "generated tokens per second of rollout phase",
    "eval_stall_fraction": "share of the step the rollout workers sat idle waiting for evaluations",
    "step_s": "wall seconds of the step",
    "weight_sync_s": "seconds to export and load new weights",
    "weight_version": "version of the policy weights after the step",
    "step": "index of the last finished step",
    "loss": "learner loss (mean over gradient steps)",
    "grad_norm": "learner gradient norm (mean over gradient steps)",
    "clip_fraction": "share of tokens where the PPO clip was active",
}
PER_TURN = {"correct_per_turn": "correctness by turn", "speedup_per_turn": "mean speedup by turn (incorrect = 0)",
            "not_okay_per_turn": "share of thoughts not starting with 'Okay', by turn"}
PHASES = ("generate", "evaluate", "rollout", "score", "train", "sync", "checkpoint")


class RLMetrics:
    """ray.util.metrics objects of one run. Create inside an actor (metrics are exported by the worker process)."""

    def __init__(self, run_name: str):
        from ray.util.metrics import Counter, Gauge
        self.tags = {"run": run_name}
        self.gauges = {k: Gauge(PREFIX + k, description=d, tag_keys=("run",)) for k, d in GAUGES.items()}
        self.per_turn = {k: Gauge(PREFIX + k, description=d, tag_keys=("run", "turn")) for k, d in PER_TURN.items()}
        self.phase = Gauge(PREFIX + "phase_seconds", description="wall seconds of each phase of the last step",
                           tag_keys=("run", "phase"))
        self.rejections = Counter(PREFIX + "rejections_total", description="rejected kernels by reason",
                                  tag_keys=("run", "reason"))

    def record(self, m: dict) -> None:
        for k, g in self.gauges.items():
            v = m.get(k)
            if _is_num(v):
                g.set(float(v), tags=self.tags)
        for k, g in self.per_turn.items():
            for t, v in enumerate(m.get(k) or []):
                if _is_num(v):
                    g.set(float(v), tags={**self.tags, "turn": str(t)})
        for p in PHASES:
            v = m.get(f"time_{p}_s")
            if _is_num(v):
                self.phase.set(float(v), tags={**self.tags, "phase": p})
        for reason, n in (m.get("rejections") or {}).items():
            if n > 0:
                self.rejections.inc(float(n), tags={**self.tags, "reason": str(reason)})


def metric_names() -> list[str]:
    return [PREFIX + k for k in list(GAUGES) + list(PER_TURN)] + [PREFIX + "phase_seconds", PREFIX + "rejections_total"]


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def append_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record, default=_jsonable) + "\n")


def read_jsonl(path: str) -> list[dict]:
    try:
        with open(path) as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "to_dict"):
        return x.to_dict()
    return str(x)


def progress_line(m: dict, total_steps: Optional[int] = None) -> str:
    """One line per step with the key numbers and phase times."""
    of = f"/{total_steps}" if total_steps else ""
    turns = " ".join(f"{c:.2f}" if c is not None else "-" for c in m.get("correct_per_turn") or [])
    return (f"step {m.get('step')}{of} reward {m.get('reward', 0):.3f} correct {m.get('correct', 0):.2f} "
            f"[per turn {turns}] best@G {m.get('best_at_g_correct', 0):.2f} "
            f"speedup avg {m.get('avg_at_g_speedup', 0):.2f}x best {m.get('best_at_g_speedup', 0):.2f}x | "
            f"tok/s {m.get('tokens_per_s', 0):.0f} stall {m.get('eval_stall_fraction', 0):.0%} | "
            f"gen {m.get('time_generate_s', 0):.1f}s eval {m.get('time_evaluate_s', 0):.1f}s "
            f"rollout {m.get('time_rollout_s', 0):.1f}s train {m.get('time_train_s', 0):.1f}s "
            f"sync {m.get('time_sync_s', 0):.1f}s step {m.get('step_s', 0):.1f}s")


def mixgrpo_progress_line(m: dict, total_steps: Optional[int] = None) -> str:
    """One MixGRPO iteration: reward (and the toy's hit rate), clip fraction, window, sample/train seconds."""
    of = f"/{total_steps}" if total_steps else ""
    hit = f" hit {m['hit']:.3f}" if "hit" in m else ""
    return (f"step {m.get('step')}{of} reward {m.get('reward', 0):+.4f}{hit} "
            f"clip {m.get('train/clip_fraction', 0):.3f} window {m.get('window_start', -1)} nfe {m.get('nfe', 0)} | "
            f"sample {m.get('time/sample_s', 0):.2f}s train {m.get('time/train_s', 0):.2f}s")
