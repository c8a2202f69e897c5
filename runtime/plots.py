"""PNG plots and the summary of a run, made from <run dir>/metrics.jsonl (rewritten after every step).

    python -c "from runtime.plots import write_plots; from runtime.rundir import RunDir; write_plots(RunDir('runs/demo'))"
"""
from __future__ import annotations

import os

from runtime.metrics import read_jsonl

PLOTS = {
    "reward.png": ("mean kernel score", [("reward", "reward")]),
    "correctness.png": ("correctness", [("correct", "all turns"), ("best_at_g_correct", "best@G"),
                                        ("avg_at_g_correct", "avg@G")]),
    "speedup.png": ("speedup (incorrect = 0)", [("avg_at_g_speedup", "avg@G"), ("best_at_g_speedup", "best@G")]),
}


MIXGRPO_PLOTS = {
    "reward.png": ("reward (weighted)", [("reward", "reward")]),
    "clip_fraction.png": ("PPO clip fraction", [("train/clip_fraction", "clip fraction")]),
    "window.png": ("SDE window start", [("window_start", "window start")]),
}


def write_plots(rd, pipeline: str = "kernel_grpo") -> list[str]:
    """Kernel GRPO: reward/correctness/speedup per step (+ correctness and speedup per turn). MixGRPO: reward (and the
    toy's hit rate), clip fraction, window position. Returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    rows = read_jsonl(rd.metrics)
    if not rows:
        return []
    os.makedirs(rd.plots, exist_ok=True)
    steps = [r["step"] for r in rows]
    out = []
    plots = PLOTS if pipeline == "kernel_grpo" else dict(MIXGRPO_PLOTS)
    if pipeline == "mixgrpo" and "hit" in rows[-1]:
        plots["reward.png"] = ("reward (weighted) and hit rate", [("reward", "reward"), ("hit", "hit rate")])
    for fname, (title, series) in plots.items():
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for key, label in series:
            ax.plot(steps, [r.get(key, 0.0) for r in rows], marker="o" if len(rows) <= 30 else None, label=label)
        per_turn_key = {"correctness.png": "correct_per_turn", "speedup.png": "speedup_per_turn"}.get(fname)
        if per_turn_key:
            turns = max(len(r.get(per_turn_key) or []) for r in rows)
            for t in range(turns):
                ys = [(r.get(per_turn_key) or [None] * turns)[t] for r in rows]
                ax.plot(steps, [y if y is not None else float("nan") for y in ys], linestyle="--", alpha=0.6,
                        label=f"turn {t}")
        ax.set_xlabel("step"), ax.set_title(title), ax.grid(alpha=0.3), ax.legend(fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))             # steps are whole numbers
        if fname == "correctness.png":
            ax.set_ylim(-0.03, 1.03)                                      # a share: always on the same scale
        elif pipeline == "kernel_grpo":
            ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]), top=max(ax.get_ylim()[1], 0.5))   # all-zero runs too
        fig.tight_layout()
        path = os.path.join(rd.plots, fname)
        fig.savefig(path, dpi=80)
        plt.close(fig)
        out.append(path)
    return out


def write_summary(rd, cfg) -> str:
    rows = read_jsonl(rd.metrics)
    lines = [f"# Run {cfg.run.name}", "", f"steps finished: {len(rows)} of {cfg.run.total_steps}", ""]
    if rows and cfg.run.pipeline == "mixgrpo":
        every = max(1, len(rows) // 10)
        lines += ["| step | reward | hit | clip fraction | window start |", "|---|---|---|---|---|"]
        for r in rows[::every] + ([rows[-1]] if (len(rows) - 1) % every else []):
            lines.append(f"| {r['step']} | {r.get('reward', 0):+.4f} | {r.get('hit', float('nan')):.3f} | "
                         f"{r.get('train/clip_fraction', 0):.3f} | {r.get('window_start', -1)} |")
        lines.append("")
    elif rows:
        last = rows[-1]
        lines += ["| step | reward | correct | best@G correct | avg@G speedup | best@G speedup | stall | step s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['step']} | {r.get('reward', 0):.3f} | {r.get('correct', 0):.2f} | "
                         f"{r.get('best_at_g_correct', 0):.2f} | {r.get('avg_at_g_speedup', 0):.2f} | "
                         f"{r.get('best_at_g_speedup', 0):.2f} | {r.get('eval_stall_fraction', 0):.0%} | "
                         f"{r.get('step_s', 0):.1f} |")
        lines += ["", f"rejections at the last step: {last.get('rejections', {})}", ""]
    traj = ", trajectories.jsonl" if cfg.run.pipeline == "kernel_grpo" else ""
    lines += [f"files: config.yaml, metrics.jsonl{traj}, plots/*.png, tune/ (checkpoints)", ""]
    with open(rd.summary, "w") as fh:
        fh.write("\n".join(lines))
    return rd.summary
