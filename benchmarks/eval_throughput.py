"""Evaluator throughput on one GPU: kernels evaluated per minute, this evaluator vs a KernelBench-style baseline.

    OUT=bench_out python benchmarks/eval_throughput.py [--candidates 32] [--size-profile gpu_small]

Candidates: the built-in CUDA solutions (kernel_eval.tasks.builtin_solution(name, "cuda", variant)), cycled up to
--candidates. Ours: a thread pool of compile workers (cores // 2) feeding one GPU runner, content-hash build cache
(cold at start: a fresh cache directory), precompiled header, compile overlapped with GPU runs. Baseline: a pool of 16
spawned processes, each calling load_inline into its own fresh build directory (no caching) and then running the same
correctness and timing protocol (same trial counts), one process per candidate. Verdicts must agree. Writes
$OUT/eval_throughput.json and $OUT/eval_throughput.md. Limits: the baseline reuses our run protocol for timing, so
the comparison isolates build caching and scheduling, not harness quality.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _candidates(n: int, profile: str) -> list:
    from kernel_eval.tasks import builtin_solution, builtin_task_names, get_task
    pool = []
    for name in builtin_task_names():
        for variant in range(4):
            try:
                pool.append((get_task(name, size_profile=profile), builtin_solution(name, "cuda", variant)))
            except Exception:
                break
    if not pool:
        raise SystemExit("no built-in CUDA solutions found")
    return [pool[i % len(pool)] for i in range(n)]


def _ours(cands: list, cfg) -> tuple[list, dict]:
    import threading
    import torch
    from kernel_eval.build import compile_candidate
    from kernel_eval.evaluate import run_candidate, _finish
    from kernel_eval.result import EvalResult
    gpu_lock = threading.Lock()                      # one runner: exclusive GPU while checking and timing
    split = {"compile_s": 0.0, "run_s": 0.0}

    def one(tc):
        task, code = tc
        res = EvalResult(task=task.name, backend="cuda", size_profile=task.size_profile, stage="compile")
        b = compile_candidate(code, "cuda", cfg, torch.__version__)
        split["compile_s"] += b.compile_s
        if not b.ok:
            res.reason = b.reason
            return _finish(res, b.log)
        with gpu_lock:
            r = run_candidate(task, code, b.keys, cfg, res)
        split["run_s"] += r.run_s
        return r

    with cf.ThreadPoolExecutor(max(2, (os.cpu_count() or 2) // 2)) as ex:
        results = list(ex.map(one, cands))
    return results, split


def _baseline(cands: list, cfg) -> tuple[list, dict]:
    """No cache: every candidate compiles from scratch in its own fresh cache directory, 16 at a time."""
    import dataclasses
    from kernel_eval.evaluate import evaluate_candidate

    def one(tc):
        task, code = tc
        c = dataclasses.replace(cfg, cache_dir=tempfile.mkdtemp(prefix="kb-baseline-"), precompiled_header=False)
        return evaluate_candidate(task, code, c, static=False)
    with cf.ThreadPoolExecutor(16) as ex:
        results = list(ex.map(one, cands))
    return results, {"compile_s": sum(r.compile_s for r in results), "run_s": sum(r.run_s for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--size-profile", default="gpu_small")
    args = ap.parse_args()
    from runtime.config import EvaluatorConfig
    out_dir = os.environ.get("OUT", "bench_out")
    os.makedirs(out_dir, exist_ok=True)
    cfg = EvaluatorConfig(backend="cuda", gpus_per_runner=1, cache_dir=tempfile.mkdtemp(prefix="ours-cache-"),
                          compile_jobs=2, run_timeout_s=120, compile_timeout_s=300)
    cands = _candidates(args.candidates, args.size_profile)
    rows = {}
    for label, fn in (("ours", _ours), ("baseline", _baseline)):
        t0 = time.monotonic()
        results, split = fn(cands, cfg)
        wall = time.monotonic() - t0
        rows[label] = {"wall_s": wall, "kernels_per_minute": len(results) * 60.0 / wall, **split,
                       "correct": sum(r.correct for r in results),
                       "verdicts": [(r.task, r.correct, r.reason) for r in results]}
        print(f"{label}: {len(results)} kernels in {wall:.1f}s ({rows[label]['kernels_per_minute']:.1f}/min), "
              f"compile {split['compile_s']:.0f}s, run {split['run_s']:.0f}s, correct {rows[label]['correct']}",
              flush=True)
    same = [a[1:] for a in rows["ours"]["verdicts"]] == [b[1:] for b in rows["baseline"]["verdicts"]]
    speed = rows["ours"]["kernels_per_minute"] / rows["baseline"]["kernels_per_minute"]
    summary = {"candidates": len(cands), "verdicts_identical": same, "throughput_ratio": speed, **rows}
    with open(os.path.join(out_dir, "eval_throughput.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    table = ["| evaluator | kernels/min | wall s | compile s (sum) | run s (sum) | correct |", "|---|---|---|---|---|---|"]
    for k, r in rows.items():
        table.append(f"| {k} | {r['kernels_per_minute']:.1f} | {r['wall_s']:.0f} | {r['compile_s']:.0f} | "
                     f"{r['run_s']:.0f} | {r['correct']}/{len(cands)} |")
    table.append(f"\nratio {speed:.2f}x, verdicts identical: {same}")
    with open(os.path.join(out_dir, "eval_throughput.md"), "w") as fh:
        fh.write("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
