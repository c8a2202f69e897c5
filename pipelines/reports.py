"""Evaluation reports (pure: no Ray). The metrics of KEVIN.md "Results to compare against".

Input: trajectory records, one dict per trajectory:
    {"task": str, "level": int, "trajectory_id": int,
     "turns": [{"turn": int, "correct": bool, "speedup": float | None, "stage": str, "reason": str | None,
                "kernel": str | None, "score": float}, ...]}

Per task with G trajectories (k <= G):
  - a trajectory is correct if any of its kernels is; its performance is its fastest correct kernel's speedup (0 if none);
  - correctness best@k / avg@k and speedup best@k / avg@k over the first k trajectories, averaged over tasks;
  - pass@k with the unbiased estimator 1 - C(n-c, k) / C(n, k), n = G, c = correct trajectories;
  - fast_p: share of trajectories that are correct with speedup > p (p in 0, 1, 1.5, 2);
  - per turn t: correctness / mean speedup of the turn-t kernels, and "up to turn t" (best so far) values.

    python -c "from pipelines.reports import summarize; help(summarize)"
"""
from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from typing import Iterable, Sequence

import numpy as np

from rlcore.metrics import best_and_avg_at_k, fast_p, pass_at_k, trajectory_outcome

FAST_P = (0.0, 1.0, 1.5, 2.0)


def _ks(g: int) -> list[int]:
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= g]
    return ks + ([g] if g not in ks else [])


def _group(records: Iterable[dict]) -> dict[str, list[dict]]:
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r)
    for rs in by_task.values():
        rs.sort(key=lambda r: r["trajectory_id"])
    return dict(by_task)


def _summarize_tasks(by_task: dict[str, list[dict]]) -> dict:
    if not by_task:
        return {"tasks": 0}
    g = min(len(rs) for rs in by_task.values())
    ks = _ks(g)
    per_k: dict[int, dict[str, list[float]]] = {k: defaultdict(list) for k in ks}
    fast: dict[float, list[float]] = defaultdict(list)
    max_turns = max(len(r["turns"]) for rs in by_task.values() for r in rs)
    turn_correct: list[list[float]] = [[] for _ in range(max_turns)]
    turn_speedup: list[list[float]] = [[] for _ in range(max_turns)]
    upto_correct: list[list[float]] = [[] for _ in range(max_turns)]
    upto_speedup: list[list[float]] = [[] for _ in range(max_turns)]
    reasons: Counter = Counter()
    for rs in by_task.values():
        outcomes = [trajectory_outcome([t["correct"] for t in r["turns"]], [t.get("speedup") for t in r["turns"]])
                    for r in rs[:g]]
        corr = [1.0 if ok else 0.0 for ok, _ in outcomes]
        spd = [s for _, s in outcomes]
        c = int(sum(corr))
        for k in ks:
            b, a = best_and_avg_at_k(corr, k)
            per_k[k]["correct_best"].append(b)
            per_k[k]["correct_avg"].append(a)
            b, a = best_and_avg_at_k(spd, k)
            per_k[k]["speedup_best"].append(b)
            per_k[k]["speedup_avg"].append(a)
            per_k[k]["pass"].append(pass_at_k(g, c, k))
        for p in FAST_P:
            fast[p].append(fast_p([bool(x) for x in corr], spd, p))
        for r in rs[:g]:
            best_c, best_s = 0.0, 0.0
            for t_idx in range(max_turns):
                if t_idx < len(r["turns"]):
                    t = r["turns"][t_idx]
                    ok = bool(t["correct"])
                    sp = float(t.get("speedup") or 0.0) if ok else 0.0
                    turn_correct[t_idx].append(float(ok))
                    turn_speedup[t_idx].append(sp)
                    best_c, best_s = max(best_c, float(ok)), max(best_s, sp)
                    if not ok:
                        reasons[t.get("reason") or "unknown"] += 1
                upto_correct[t_idx].append(best_c)
                upto_speedup[t_idx].append(best_s)
    mean = lambda xs: float(np.mean(xs)) if len(xs) else 0.0  # noqa: E731
    return {
        "tasks": len(by_task),
        "trajectories_per_task": g,
        "at_k": {str(k): {name: mean(v) for name, v in d.items()} for k, d in per_k.items()},
        "fast_p": {str(p): mean(v) for p, v in fast.items()},
        "per_turn": [{"turn": t, "correct": mean(turn_correct[t]), "speedup": mean(turn_speedup[t]),
                      "correct_so_far": mean(upto_correct[t]), "speedup_so_far": mean(upto_speedup[t])}
                     for t in range(max_turns)],
        "rejections": dict(reasons.most_common()),
    }


def summarize(records: Sequence[dict]) -> dict:
    """Report per level and overall (see the module docstring for every metric's definition)."""
    by_task = _group(records)
    levels: dict[int, dict[str, list[dict]]] = defaultdict(dict)
    for name, rs in by_task.items():
        levels[int(rs[0].get("level", 0))][name] = rs
    return {"overall": _summarize_tasks(by_task),
            "levels": {str(lv): _summarize_tasks(t) for lv, t in sorted(levels.items())}}


def to_markdown(summary: dict, title: str = "Evaluation") -> str:
    lines = [f"# {title}", ""]
    sections = [("overall", summary["overall"])]
    if len(summary["levels"]) > 1:      # with one level, its table would repeat the overall one
        sections += [(f"level {k}", v) for k, v in summary["levels"].items()]
    for label, s in sections:
        if not s.get("tasks"):
            continue
        lines += [f"## {label}: {s['tasks']} tasks x {s['trajectories_per_task']} trajectories", "",
                  "| k | correct best@k | correct avg@k | pass@k | speedup best@k | speedup avg@k |",
                  "|---|---|---|---|---|---|"]
        for k, m in s["at_k"].items():
            lines.append(f"| {k} | {m['correct_best']:.3f} | {m['correct_avg']:.3f} | {m['pass']:.3f} | "
                         f"{m['speedup_best']:.3f} | {m['speedup_avg']:.3f} |")
        lines += ["", "fast_p: " + ", ".join(f"fast_{p} = {v:.3f}" for p, v in s["fast_p"].items()), "",
                  "| turn | correct | mean speedup | correct so far | best speedup so far |", "|---|---|---|---|---|"]
        for t in s["per_turn"]:
            lines.append(f"| {t['turn']} | {t['correct']:.3f} | {t['speedup']:.3f} | {t['correct_so_far']:.3f} | "
                         f"{t['speedup_so_far']:.3f} |")
        if s["rejections"]:
            lines += ["", "rejections: " + ", ".join(f"{k} {v}" for k, v in s["rejections"].items())]
        lines.append("")
    return "\n".join(lines)


def plot_report(records: Sequence[dict], summary: dict, out_dir: str) -> list[str]:
    """PNG plots: speedup distribution of correct trajectories, metrics vs turn, metrics vs k. Returns the paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    s = summary["overall"]
    if not s.get("tasks"):
        return paths
    speedups = [trajectory_outcome([t["correct"] for t in r["turns"]], [t.get("speedup") for t in r["turns"]])
                for r in records]
    correct_sp = [sp for ok, sp in speedups if ok]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(correct_sp if correct_sp else [0.0], bins=20, color="tab:blue")
    ax.axvline(1.0, color="k", ls="--", lw=1)
    ax.set(xlabel="speedup of correct trajectories", ylabel="trajectories",
           title=f"{len(correct_sp)}/{len(records)} trajectories correct")
    paths.append(os.path.join(out_dir, "speedup_distribution.png"))
    fig.tight_layout(), fig.savefig(paths[-1], dpi=110), plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    turns = [t["turn"] for t in s["per_turn"]]
    axes[0].plot(turns, [t["correct"] for t in s["per_turn"]], "o-", label="turn t")
    axes[0].plot(turns, [t["correct_so_far"] for t in s["per_turn"]], "s--", label="best up to t")
    axes[0].set(xlabel="turn", ylabel="correctness", ylim=(0, 1.05))
    axes[1].plot(turns, [t["speedup"] for t in s["per_turn"]], "o-", label="turn t")
    axes[1].plot(turns, [t["speedup_so_far"] for t in s["per_turn"]], "s--", label="best up to t")
    axes[1].set(xlabel="turn", ylabel="speedup (0 if incorrect)")
    for ax in axes:
        ax.legend(), ax.grid(alpha=0.3)
    paths.append(os.path.join(out_dir, "metrics_vs_turn.png"))
    fig.tight_layout(), fig.savefig(paths[-1], dpi=110), plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    ks = [int(k) for k in s["at_k"]]
    for name, label in [("correct_best", "best@k"), ("correct_avg", "avg@k"), ("pass", "pass@k")]:
        axes[0].plot(ks, [s["at_k"][str(k)][name] for k in ks], "o-", label=label)
    for name, label in [("speedup_best", "best@k"), ("speedup_avg", "avg@k")]:
        axes[1].plot(ks, [s["at_k"][str(k)][name] for k in ks], "o-", label=label)
    axes[0].set(xlabel="k", ylabel="correctness", xscale="log", ylim=(0, 1.05))
    axes[1].set(xlabel="k", ylabel="speedup", xscale="log")
    for ax in axes:
        ax.legend(), ax.grid(alpha=0.3)
    paths.append(os.path.join(out_dir, "metrics_vs_k.png"))
    fig.tight_layout(), fig.savefig(paths[-1], dpi=110), plt.close(fig)
    return paths


def save_best_kernels(records: Sequence[dict], out_dir: str) -> dict[str, dict]:
    """Write each task's fastest correct kernel to <out_dir>/<task>.py; returns {task: {speedup, trajectory, turn}}."""
    os.makedirs(out_dir, exist_ok=True)
    best: dict[str, tuple[float, dict, dict]] = {}
    for r in records:
        for t in r["turns"]:
            if t["correct"] and t.get("kernel"):
                sp = float(t.get("speedup") or 0.0)
                if r["task"] not in best or sp > best[r["task"]][0]:
                    best[r["task"]] = (sp, r, t)
    index = {}
    for task, (sp, r, t) in sorted(best.items()):
        fname = task.replace("/", "__") + ".py"
        with open(os.path.join(out_dir, fname), "w") as fh:
            fh.write(f"# task: {task}  speedup: {sp:.3f}  trajectory: {r['trajectory_id']}  turn: {t['turn']}\n")
            fh.write(t["kernel"])
        index[task] = {"speedup": sp, "trajectory": r["trajectory_id"], "turn": t["turn"], "file": fname}
    with open(os.path.join(out_dir, "index.json"), "w") as fh:
        json.dump(index, fh, indent=1)
    return index


def budget_splits(total_kernels: int, serial_turns: Sequence[int] = (1, 4, 8)) -> list[tuple[int, int]]:
    """(parallel trajectories, serial turns) pairs that spend exactly `total_kernels` kernels,
    e.g. 128 -> [(128, 1), (32, 4), (16, 8)]."""
    out = []
    for t in serial_turns:
        if t > 0 and total_kernels % t == 0:
            out.append((total_kernels // t, t))
    if not out:
        raise ValueError(f"no split of {total_kernels} kernels into turns {list(serial_turns)}")
    return out
