"""Kevin's test-time beam search (KEVIN.md "Results to compare against"), per task:

    N trajectories x T turns -> keep the K whose fastest correct kernel is best -> copy each N/K times -> R rounds

A copy continues from its parent's whole history: the next round's first request carries the parent's TurnSample refs
and the evaluator's feedback on each of them (a trajectory of round r starts at turn r*T). Rounds reuse
`pipelines.kernel_grpo.run_trajectories` unchanged: the history prefix is prepended inside the request factory
(`pipelines.evaluate.request_maker`), so every trajectory still advances as soon as its own evaluation returns.

Selection (`select_survivors`, pure): a trajectory's outcome is rlcore.metrics.trajectory_outcome over its whole
history (correct if any kernel is correct and rewarded; its speedup is its fastest correct kernel's, 0 if none). Rank by
speedup, then correct before incorrect (a correct kernel with an unknown or zero speedup beats none), then by slot
(lower first), so ties are deterministic. The best kernel found so far is always kept, so the final beams hold it.

    python launch.py search --config configs/eval_cpu.yaml search.beam_width=4 search.keep=2 search.rounds=2
    python -m pytest tests/test_evaluate.py -q -k search

Limits: tasks are searched side by side within a round (one run_trajectories call for all tasks), so a round ends when
the slowest task's trajectories end. Prompts keep at most rollout.max_context_tokens: the oldest turns are dropped
first (encode_with_budget), so long searches see only their recent history.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from rlcore.metrics import trajectory_outcome


# ------------------------------------------------------------------------------------------------------ pure logic
@dataclass
class Beam:
    """One live trajectory of the search: where it sits and its whole history so far (refs and EvalResults)."""
    task_index: int
    slot: int                                   # 0..N-1 within its task, this round
    parent: Optional[int] = None                # its slot in the previous round (None in round 0)
    lineage: list[int] = field(default_factory=list)   # slots of its ancestors, round 0 first
    refs: list = field(default_factory=list)    # ObjectRef[TurnSample], oldest first
    results: list = field(default_factory=list) # EvalResult (or anything with correct/speedup/rewarded), same order


def outcome(results: Sequence[Any]) -> tuple[bool, float]:
    """(correct, fastest correct speedup) of a history; unrewarded kernels (cheats, flagged speedups) do not count."""
    return trajectory_outcome([bool(r.correct and r.rewarded) for r in results],
                              [r.speedup if (r.correct and r.rewarded) else None for r in results])


def select_survivors(outcomes: Sequence[tuple[bool, float]], keep: int) -> list[int]:
    """Indices of the `keep` best outcomes, best first: higher speedup, then correct, then lower index.

    >>> select_survivors([(False, 0.0), (True, 1.2), (True, 0.0), (True, 2.0)], 2)
    [3, 1]
    """
    if not 0 < keep <= len(outcomes):
        raise ValueError(f"keep={keep} must be in 1..{len(outcomes)} (the trajectories of one task)")
    order = sorted(range(len(outcomes)), key=lambda i: (-float(outcomes[i][1]), not outcomes[i][0], i))
    return order[:keep]


def next_round(beams: Sequence[Beam], keep: int, copies: int) -> list[Beam]:
    """The next round's beams of one task: the `keep` best, each copied `copies` times (copies of one parent sit in
    consecutive slots, best parent first). Histories are copied (lists of the same refs), never shared."""
    survivors = select_survivors([outcome(b.results) for b in beams], keep)
    out = []
    for rank, s in enumerate(survivors):
        p = beams[s]
        for c in range(copies):
            out.append(Beam(p.task_index, rank * copies + c, parent=p.slot, lineage=p.lineage + [p.slot],
                            refs=list(p.refs), results=list(p.results)))
    return out


def round_summary(beams: Sequence[Sequence[Beam]]) -> dict:
    """Per-round numbers over tasks: mean of each task's best speedup so far (0 if unsolved; Kevin's 1.56x is this
    after the last round), share of tasks solved, mean speedup of the turns generated so far."""
    best = [max((outcome(b.results) for b in task), key=lambda o: (o[1], o[0])) for task in beams]
    return {"mean_best_speedup": float(np.mean([s for _, s in best])) if best else 0.0,
            "solved": float(np.mean([float(c) for c, _ in best])) if best else 0.0,
            "best_speedup_per_task": [float(s) for _, s in best]}


# ------------------------------------------------------------------------------------------------------ the search
def run_search(cfg, actors, out_dir: str, log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Run R rounds over every task (actors from pipelines.evaluate.start_actors); write report.md/json, plots, best
    kernels and trajectories.jsonl (every round's turns, with round, slot and parent) under out_dir.
    Returns {"summary", "rounds", "records"}."""
    from pipelines import evaluate as ev
    from pipelines.kernel_grpo import run_trajectories
    s = cfg.search
    n, k, t_round = s.beam_width, s.keep, s.turns_per_round
    copies = n // k
    tasks = actors.tasks
    beams = [[Beam(i, j, lineage=[]) for j in range(n)] for i in range(len(tasks))]
    kernels: dict = {}                          # TurnSample ref -> its kernel text (fetched once, copies share refs)
    rounds: list[dict] = []
    errors = 0
    writer = ev.TurnWriter(out_dir, cfg)
    try:
        for r in range(s.rounds):
            flat = [b for task_beams in beams for b in task_beams]
            prefix = {b.task_index * n + b.slot: (list(b.refs), [x.feedback for x in b.results]) for b in flat}
            make = ev.request_maker(cfg, actors, step=cfg.eval.sampling_step + r, prefix=prefix)
            t0 = time.time()
            trajs, stats = run_trajectories(tasks, n, t_round, actors.workers, actors.pool, make,
                                            timeout_s=cfg.ray.get_timeout_s, progress=progress)
            for tr in trajs:
                beam = beams[tr.task_index][tr.trajectory_id - tr.task_index * n]
                start = len(beam.results)
                beam.refs += tr.refs
                beam.results += tr.results
                errors += tr.error is not None
                kernels.update(writer.write(tr, beam.refs[start:], beam.results[start:], first_turn=start,
                                            extra={"round": r, "slot": beam.slot, "parent": beam.parent,
                                                   "error": tr.error}))
            rs = round_summary(beams)
            rs.update(round=r, wall_s=time.time() - t0, generate_s=stats.generate_s, evaluate_s=stats.evaluate_s,
                      stall_s=stats.stall_s, turns=stats.turns, failed_turns=stats.failed_turns)
            if r + 1 < s.rounds:
                beams = [next_round(task_beams, k, copies) for task_beams in beams]
                rs["kept_slots"] = [[b.parent for b in task_beams[::copies]] for task_beams in beams]
            rounds.append(rs)
            log(f"round {r + 1}/{s.rounds}: mean best speedup {rs['mean_best_speedup']:.3f}, solved "
                f"{rs['solved']:.3f}, {stats.turns} turns in {rs['wall_s']:.1f}s (eval stall "
                f"{stats.stall_s / max(rs['wall_s'], 1e-9):.0%})")
    finally:
        writer.close()
    records = [ev.trajectory_record(tasks[b.task_index], b.slot, b.results, [kernels.get(x) for x in b.refs],
                                    cfg.algo, lineage=b.lineage)
               for task_beams in beams for b in task_beams]
    extra_md = _rounds_markdown(rounds, n, k, t_round)
    extra = {"search": {"beam_width": n, "keep": k, "copies": copies, "rounds": s.rounds, "turns_per_round": t_round},
             "rounds": [{key: v for key, v in x.items()} for x in rounds], "failed_trajectories": errors}
    summary = ev.write_outputs(out_dir, records, f"Beam search ({n} x {t_round} turns, keep {k}, {s.rounds} rounds)",
                               extra, extra_md, log)
    return {"summary": summary, "rounds": rounds, "records": records}


def _rounds_markdown(rounds: list[dict], n: int, k: int, t: int) -> str:
    lines = ["## per round", "", f"{n} trajectories x {t} turns per round; the best {k} are copied {n // k} times.", "",
             "| round | mean best speedup | solved | turns | wall s | eval stall |", "|---|---|---|---|---|---|"]
    for r in rounds:
        lines.append(f"| {r['round'] + 1} | {r['mean_best_speedup']:.3f} | {r['solved']:.3f} | {r['turns']} | "
                     f"{r['wall_s']:.1f} | {r['stall_s'] / max(r['wall_s'], 1e-9):.0%} |")
    return "\n".join(lines) + "\n"
