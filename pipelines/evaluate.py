"""`launch.py evaluate` and `launch.py search`: a policy (the base model or a trained checkpoint) on a task split,
reported with KEVIN.md's metrics (best@k / avg@k / pass@k, fast_p, per turn; pipelines/reports.py).

    python launch.py evaluate --config configs/eval_cpu.yaml [--checkpoint DIR] [--out DIR] [key=value ...]
    python launch.py evaluate --config configs/eval_cpu.yaml eval.budget_kernels=8 eval.budget_serial_turns=[1,2,4]
    python launch.py search   --config configs/eval_cpu.yaml [--checkpoint DIR] search.beam_width=4 search.keep=2
    python -m pytest tests/test_evaluate.py -q

evaluate: G x T (algo.trajectories_per_task x algo.max_turns) per task, rollout workers + evaluator pool (no learner),
the trajectory loop of training (`run_trajectories`: each trajectory advances as soon as its own evaluation returns).
With eval.budget_kernels = B > 0 it instead runs every parallel x serial split of B kernels per task (B x 1, B/4 x 4,
B/8 x 8 ...) and compares them (budget.md, budget.json, budget.png; each split's full report under split_<P>x<T>/).
search: pipelines/search.py.

Output directory (--out, default <run.output_dir>/<run.name>/<command>): report.md (also printed), report.json,
speedup_distribution.png, metrics_vs_turn.png, metrics_vs_k.png, best_kernels/<task>.py + index.json,
trajectories.jsonl (one line per turn: prompt, response, kernel, evaluation, score).

--checkpoint accepts a checkpoint directory of `launch.py train` (controller.pkl + learner/), the learner/ directory
itself, or a run directory (its newest checkpoint_* is used). Torch learner checkpoints load directly; DeepSpeed ones
need the deepspeed package (its zero_to_fp32 gathers the shards in CPU memory: the whole model must fit there).

Ray: a new local Ray unless ray.address / RAY_ADDRESS is set (as `launch.py train`); actors are not placed in a
placement group, so rollout.gpus_per_worker + evaluator.gpus_per_runner must fit the GPUs as they are.
"""
from __future__ import annotations

import glob
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import ray

from pipelines.reports import budget_splits, plot_report, save_best_kernels, summarize, to_markdown
from rlcore.rewards import kernel_score


# ------------------------------------------------------------------------------------------------------ checkpoints
def _torch_learner_file(d: str) -> Optional[str]:
    p = os.path.join(d, "learner.pt")
    return p if os.path.isfile(p) else None


def _deepspeed_learner_dir(d: str) -> bool:
    """DeepSpeedLearner.save writes <d>/learner/*model_states.pt (tag "learner")."""
    return bool(glob.glob(os.path.join(d, "learner", "*model_states.pt")))


def resolve_checkpoint(path: str) -> str:
    """The learner directory (learner.pt, or a DeepSpeed tag "learner") of a checkpoint, learner or run directory.
    Raises FileNotFoundError naming what was looked for."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--checkpoint {path}: no such directory")
    for d in (os.path.join(path, "learner"), path):
        if _torch_learner_file(d) or _deepspeed_learner_dir(d):
            return d
    found = [d for d in glob.glob(os.path.join(path, "**", "checkpoint_*"), recursive=True)
             if os.path.isdir(os.path.join(d, "learner"))]
    if found:
        from runtime.checkpoint import read_step
        newest = max(found, key=lambda d: (read_step(d) or -1, os.path.basename(d)))
        return resolve_checkpoint(newest)
    raise FileNotFoundError(f"--checkpoint {path}: no learner weights found (expected learner/learner.pt, a DeepSpeed "
                            f"learner/learner/ tag, or checkpoint_* directories below it)")


def checkpoint_version(learner_dir: str) -> int:
    """The weight version recorded next to the learner directory (meta.json), else 1 (anything but the base's 0)."""
    for d in (os.path.dirname(learner_dir.rstrip(os.sep)), learner_dir):
        try:
            with open(os.path.join(d, "meta.json")) as fh:
                return int(json.load(fh)["weight_version"])
        except (OSError, ValueError, KeyError):
            continue
    return 1


def load_policy_weights(learner_dir: str, dtype: str) -> dict:
    """The policy's full state dict (CPU tensors in `dtype`, e.g. model.dtype) from a learner directory."""
    import torch
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    pt = _torch_learner_file(learner_dir)
    if pt:      # mmap: the optimizer state in the same file is never read into memory
        state = torch.load(pt, map_location="cpu", mmap=True, weights_only=False)["model"]
    else:
        try:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        except ImportError:
            raise RuntimeError(f"{learner_dir} is a DeepSpeed checkpoint; loading it needs the deepspeed package") \
                from None
        state = get_fp32_state_dict_from_zero_checkpoint(learner_dir, tag="learner")
    return {k.removeprefix("module."): (v.to(dt) if v.is_floating_point() else v).contiguous()
            for k, v in state.items()}


# ------------------------------------------------------------------------------------------------------ actors
@dataclass
class EvalActors:
    tasks: list
    workers: list
    pool: Any
    weight_version: int = 0
    owned: bool = True              # stop_actors kills them (False: handed in by a caller, e.g. a test)


def start_actors(cfg, checkpoint: Optional[str] = None, prefix: str = "eval") -> EvalActors:
    """Rollout workers (all with seed run.seed, so a tiny random model is the same in every worker) and an evaluator
    pool; with `checkpoint` (a learner directory), every worker loads its weights under its weight version."""
    from actors.evaluator import start_evaluator_pool
    from actors.rollout import start_rollout_worker
    from kernel_eval.tasks import load_tasks
    tasks = load_tasks(cfg.tasks)
    timeout = cfg.ray.get_timeout_s
    workers = [start_rollout_worker(cfg.model, cfg.rollout, seed=cfg.run.seed, index=i, get_timeout_s=timeout,
                                    name=f"{prefix}-rollout-{i}") for i in range(cfg.rollout.num_workers)]
    pool = start_evaluator_pool(cfg.evaluator, name=f"{prefix}-evaluator-pool")
    actors = EvalActors(tasks, workers, pool)
    if checkpoint:
        try:
            push_weights(cfg, actors, checkpoint)
        except Exception:
            stop_actors(actors)
            raise
    return actors


def push_weights(cfg, actors: EvalActors, learner_dir: str) -> int:
    """Load a checkpoint's policy into every rollout worker under its weight version (one ray.put, many gets).
    Raises RuntimeError naming the checkpoint and the model when the weights do not fit the workers' model."""
    version = checkpoint_version(learner_dir)
    ref = ray.put(load_policy_weights(learner_dir, cfg.model.dtype))
    try:
        ray.get([w.update_weights.remote([ref], version) for w in actors.workers], timeout=cfg.ray.get_timeout_s)
    except ray.exceptions.RayTaskError as e:
        last = [x for x in str(e).splitlines() if x.strip()][-1]
        raise RuntimeError(f"--checkpoint {learner_dir}: its weights do not fit model.name_or_path="
                           f"{cfg.model.name_or_path}: {last[:300]}") from None
    actors.weight_version = version
    return version


def stop_actors(actors: Optional[EvalActors]) -> None:
    if actors is None or not actors.owned:
        return
    for a in actors.workers + [actors.pool]:
        try:
            ray.kill(a)
        except Exception:       # noqa: BLE001 - already dead
            pass


def request_maker(cfg, actors: EvalActors, step: int, prefix: Optional[dict] = None) -> Callable:
    """TurnRequest factory for run_trajectories, exactly as training builds them (make_turn_request), with an
    optional history prefix per trajectory id: {trajectory_id: (refs, feedback strings)} (beam search copies).
    A prefixed request continues at turn len(prefix) with the prefix's turns first in its history."""
    from pipelines.kernel_grpo import make_turn_request
    base = make_turn_request(cfg, step)
    if not prefix:
        return base

    def make(traj, turn: int, feedback: list) -> Any:
        refs, fb = prefix.get(traj.trajectory_id, ([], []))
        req = base(traj, turn, feedback)
        req.history_refs = list(refs) + list(req.history_refs)
        req.feedback = list(fb) + list(req.feedback)
        req.turn = len(refs) + turn
        return req
    return make


# ------------------------------------------------------------------------------------------------------ records
def turn_entry(turn: int, result: Any, kernel: Optional[str], algo) -> dict:
    """One turn for pipelines/reports.py. Correct means correct AND rewarded (as in training's metrics): a cheat or
    a flagged speedup counts as incorrect; `speedup` is None unless the turn counts as correct."""
    ok = bool(result.correct and result.rewarded)
    return {"turn": turn, "correct": ok, "speedup": result.speedup if ok else None, "stage": result.stage,
            "reason": result.reason if not ok else None, "flags": list(result.flags), "kernel": kernel,
            "score": kernel_score(result.correct, result.speedup, algo.correctness_weight, algo.max_speedup_reward,
                                  result.rewarded)}


def trajectory_record(task, trajectory_id: int, results: Sequence[Any], kernels: Sequence[Optional[str]], algo,
                      **extra: Any) -> dict:
    return {"task": task.name, "level": task.level, "trajectory_id": trajectory_id,
            "turns": [turn_entry(t, r, k, algo) for t, (r, k) in enumerate(zip(results, kernels))], **extra}


class TurnWriter:
    """Appends every finished turn to <out>/trajectories.jsonl, fetching its TurnSample from the object store (one
    trajectory at a time, so memory stays at one trajectory's payload); returns {ref: kernel} for the records."""

    def __init__(self, out_dir: str, cfg, name: str = "trajectories.jsonl"):
        os.makedirs(out_dir, exist_ok=True)
        self.fh = open(os.path.join(out_dir, name), "w")
        self.cfg = cfg

    def write(self, traj, refs: list, results: list, first_turn: int = 0, extra: Optional[dict] = None) -> dict:
        samples = ray.get(list(refs), timeout=self.cfg.ray.get_timeout_s) if refs else []
        kernels = {}
        for i, (ref, s, r) in enumerate(zip(refs, samples, results)):
            kernels[ref] = s.kernel
            e = turn_entry(first_turn + i, r, s.kernel, self.cfg.algo)
            line = {"task": traj.task.name, "level": traj.task.level, "trajectory_id": traj.trajectory_id,
                    "turn": first_turn + i, "weight_version": s.weight_version, "prompt": s.prompt_text,
                    "response": s.text, "kernel": s.kernel, "finish_reason": s.finish_reason,
                    "response_tokens": len(s.token_ids), "dropped_turns": s.dropped_turns, "eval": r.to_dict(),
                    "correct": e["correct"], "score": e["score"], **(extra or {})}
            self.fh.write(json.dumps(line) + "\n")
        self.fh.flush()
        return kernels

    def close(self) -> None:
        self.fh.close()


# ------------------------------------------------------------------------------------------------------ evaluation
def run_evaluation(cfg, actors: EvalActors, out_dir: str, trajectories_per_task: int, max_turns: int,
                   step: int = 0, log: Callable[[str], None] = print, progress: bool = True,
                   title: Optional[str] = None) -> dict:
    """G x T per task; writes every output file under out_dir; returns {"summary", "records", "stats"}."""
    from pipelines.kernel_grpo import run_trajectories
    t0 = time.time()
    trajs, stats = run_trajectories(actors.tasks, trajectories_per_task, max_turns, actors.workers, actors.pool,
                                    request_maker(cfg, actors, step), timeout_s=cfg.ray.get_timeout_s,
                                    progress=progress)
    writer = TurnWriter(out_dir, cfg)
    records = []
    try:
        for tr in trajs:
            kernels = writer.write(tr, tr.refs, tr.results, extra={"error": tr.error} if tr.error else None)
            records.append(trajectory_record(tr.task, tr.trajectory_id, tr.results, [kernels[r] for r in tr.refs],
                                             cfg.algo, error=tr.error))
    finally:
        writer.close()
    timing = {"wall_s": time.time() - t0, "rollout_s": stats.wall_s, "generate_s": stats.generate_s,
              "evaluate_s": stats.evaluate_s, "stall_s": stats.stall_s, "turns": stats.turns,
              "failed_turns": stats.failed_turns, "eval_stall_fraction": stats.stall_s / max(stats.wall_s, 1e-9)}
    extra = {"trajectories_per_task": trajectories_per_task, "max_turns": max_turns, "timing": timing,
             "failed_trajectories": sum(r.get("error") is not None for r in records)}
    md = (f"timing: {timing['wall_s']:.1f}s wall, {stats.turns} turns, evaluation stall "
          f"{timing['eval_stall_fraction']:.0%} of the rollout time\n")
    summary = write_outputs(out_dir, records, title or f"Evaluation ({trajectories_per_task} x {max_turns} turns)",
                            extra, md, log)
    return {"summary": summary, "records": records, "stats": stats}


def write_outputs(out_dir: str, records: list[dict], title: str, extra: dict, extra_md: str = "",
                  log: Callable[[str], None] = print) -> dict:
    """report.json (summarize + extra), report.md (to_markdown + extra_md, also logged), 3 PNGs, best kernels."""
    os.makedirs(out_dir, exist_ok=True)
    summary = summarize(records)
    best = save_best_kernels(records, os.path.join(out_dir, "best_kernels"))
    plots = plot_report(records, summary, out_dir)
    with open(os.path.join(out_dir, "report.json"), "w") as fh:
        json.dump({**summary, **extra, "best_kernels": best, "plots": [os.path.basename(p) for p in plots]}, fh,
                  indent=1, default=str)
    md = to_markdown(summary, title) + ("\n" + extra_md if extra_md else "")
    with open(os.path.join(out_dir, "report.md"), "w") as fh:
        fh.write(md)
    log(md)
    return summary


# ------------------------------------------------------------------------------------------------------ budget splits
def split_row(parallel: int, serial: int, summary: dict, wall_s: float = 0.0) -> dict:
    """One budget split's headline numbers (best@P and avg@P over the P parallel trajectories, averaged over tasks)."""
    s = summary["overall"]
    at = s["at_k"][str(parallel)]
    return {"split": f"{parallel}x{serial}", "parallel": parallel, "serial": serial, "kernels": parallel * serial,
            "correct_best": at["correct_best"], "correct_avg": at["correct_avg"], "speedup_best": at["speedup_best"],
            "speedup_avg": at["speedup_avg"], "fast_1": s["fast_p"].get("1.0", 0.0), "wall_s": wall_s}


def budget_markdown(rows: list[dict]) -> str:
    lines = [f"# Equal budget: {rows[0]['kernels']} kernels per task" if rows else "# Equal budget", "",
             "| split (parallel x serial) | correct best@P | correct avg@P | speedup best@P | speedup avg@P | fast_1 |"
             " wall s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['split']} | {r['correct_best']:.3f} | {r['correct_avg']:.3f} | {r['speedup_best']:.3f} | "
                     f"{r['speedup_avg']:.3f} | {r['fast_1']:.3f} | {r['wall_s']:.1f} |")
    return "\n".join(lines) + "\n"


def plot_budget(rows: list[dict], path: str) -> str:
    """Metric vs split: correctness and speedup (best@P and avg@P) for every parallel x serial split."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [r["split"] for r in rows]
    x = list(range(len(rows)))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric, ylabel in ((axes[0], "correct", "correctness"), (axes[1], "speedup", "speedup")):
        ax.plot(x, [r[f"{metric}_best"] for r in rows], "o-", label="best@P")
        ax.plot(x, [r[f"{metric}_avg"] for r in rows], "s--", label="avg@P")
        ax.set_xticks(x, labels)
        ax.set(xlabel="parallel x serial", ylabel=ylabel)
        ax.legend(), ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1.05)
    fig.suptitle(f"equal budget of {rows[0]['kernels'] if rows else 0} kernels per task")
    fig.tight_layout(), fig.savefig(path, dpi=110), plt.close(fig)
    return path


def run_budget(cfg, actors: EvalActors, out_dir: str, total_kernels: int, serial_turns: Sequence[int],
               log: Callable[[str], None] = print, progress: bool = True) -> list[dict]:
    """Every parallel x serial split of `total_kernels` kernels per task (reports.budget_splits), each a full
    evaluation under <out>/split_<P>x<T>/ with its own sampling step; budget.md/json/png compare them."""
    rows = []
    for i, (p, t) in enumerate(budget_splits(total_kernels, serial_turns)):
        log(f"budget split {i + 1}: {p} trajectories x {t} turns")
        t0 = time.time()
        res = run_evaluation(cfg, actors, os.path.join(out_dir, f"split_{p}x{t}"), p, t,
                             step=cfg.eval.sampling_step + i, log=lambda _m: None, progress=progress,
                             title=f"Budget split {p} x {t}")
        rows.append(split_row(p, t, res["summary"], time.time() - t0))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "budget.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    md = budget_markdown(rows)
    with open(os.path.join(out_dir, "budget.md"), "w") as fh:
        fh.write(md)
    plot_budget(rows, os.path.join(out_dir, "budget.png"))
    log(md)
    return rows


# ------------------------------------------------------------------------------------------------------ entry point
def main(cmd: str, cfg, args) -> int:
    """launch.py evaluate|search. Exit codes: 0 done, 2 bad arguments (nothing started), 1 the run failed."""
    from kernel_eval.tasks import TaskError, load_tasks
    out = os.path.abspath(getattr(args, "out", None) or os.path.join(cfg.run.output_dir, cfg.run.name, cmd))
    checkpoint = getattr(args, "checkpoint", None)
    try:
        learner_dir = resolve_checkpoint(checkpoint) if checkpoint else None
        load_tasks(cfg.tasks)
        if cmd == "evaluate" and cfg.eval.budget_kernels:
            budget_splits(cfg.eval.budget_kernels, cfg.eval.budget_serial_turns)
    except (FileNotFoundError, TaskError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    print(f"{cmd}: policy {learner_dir or cfg.model.name_or_path}; output {out}", flush=True)
    own_ray = not ray.is_initialized()
    if own_ray:
        from runtime.trainer import init_ray
        init_ray(cfg)
    actors = None
    try:
        actors = start_actors(cfg, learner_dir)
        if cmd == "search":
            from pipelines.search import run_search
            run_search(cfg, actors, out)
        elif cfg.eval.budget_kernels:
            run_budget(cfg, actors, out, cfg.eval.budget_kernels, cfg.eval.budget_serial_turns)
        else:
            run_evaluation(cfg, actors, out, cfg.algo.trajectories_per_task, cfg.algo.max_turns,
                           step=cfg.eval.sampling_step)
        print(f"done: {out}", flush=True)
        return 0
    except (RuntimeError, TimeoutError, ray.exceptions.RayError) as e:
        print(f"{cmd} failed: {e}", file=sys.stderr)
        return 1
    finally:
        stop_actors(actors)
        if own_ray:
            ray.shutdown()
