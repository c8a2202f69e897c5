"""Run the whole adversarial suite (tests/adversarial/) through the static checks and the sandboxed evaluator; write
a JSON and a markdown table under $OUT (default ./bench_out) and print the table.

    python benchmarks/adversarial_sweep.py --backend cpu      # static layer for all + CPU runtime candidates (~5 min)
    python benchmarks/adversarial_sweep.py --backend cuda     # static layer for all + CUDA runtime candidates (GPU)

A row passes when the candidate ends with one of the reasons its header expects (static cases: the static
verdict; runtime cases: the static checks let it through and the evaluator's final reason). Honest controls run
last, to show the evaluator still works after crashes and hangs. Exit status 1 when any row fails.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from adversarial.suite import evaluate_case, load_suite, load_task, outcome  # noqa: E402
from kernel_eval.static_checks import check_candidate  # noqa: E402


def precompile(cases, backend: str, cache_dir: str, jobs: int) -> None:
    """Fill the content-hashed build cache with several compile processes at once (the runs then hit the cache)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from kernel_eval.build import compile_candidate
    from runtime.config import EvaluatorConfig
    cfg = EvaluatorConfig(backend=backend, cache_dir=cache_dir, compile_jobs=max(1, (os.cpu_count() or 2) // jobs))
    t0 = time.monotonic()
    with ThreadPoolExecutor(jobs) as pool:
        builds = list(pool.map(lambda c: compile_candidate(c.code, backend, cfg, torch.__version__), cases))
    print(f"compiled {len(cases)} candidates with {jobs} jobs in {time.monotonic() - t0:.0f}s "
          f"({sum(not b.ok for b in builds)} failed to compile)", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--cache-dir", default=None, help="build cache (default: a folder under $OUT)")
    ap.add_argument("--run-timeout-s", type=float, default=60.0)
    ap.add_argument("--hang-timeout-s", type=float, default=15.0, help="run timeout for the infinite-loop cases")
    ap.add_argument("--static-only", action="store_true")
    ap.add_argument("--compile-jobs", type=int, default=4,
                    help="candidates compiled in parallel before the (sequential) runs; 1 = compile inside each run")
    args = ap.parse_args(argv)
    out_dir = os.environ.get("OUT", "./bench_out")
    os.makedirs(out_dir, exist_ok=True)
    from runtime.config import EvaluatorConfig

    rows = []
    cases = load_suite()
    runtime = [c for c in cases if c.layer == "runtime" and c.backend == args.backend and not args.static_only]
    runtime.sort(key=lambda c: "ok" in c.expect)          # honest controls after the crashes
    t_start = time.monotonic()
    for c in cases:
        t0 = time.monotonic()
        v = check_candidate(c.code, c.backend, load_task(c).source)
        ms = (time.monotonic() - t0) * 1e3
        if c.layer == "static":
            got, ok = (v.reason or "ok"), (not v.ok and v.reason in c.expect)
            rows.append(dict(case=c.name, backend=c.backend, layer="static", expect=list(c.expect), got=got,
                             passed=ok, seconds=round(ms / 1e3, 4), detail=v.detail[:200]))
        elif not v.ok:
            rows.append(dict(case=c.name, backend=c.backend, layer="runtime", expect=list(c.expect),
                             got=f"static:{v.reason}", passed=False, seconds=round(ms / 1e3, 4), detail=v.detail[:200]))
            runtime = [r for r in runtime if r.name != c.name]
    cache_dir = args.cache_dir or os.path.join(out_dir, "builds")
    if args.compile_jobs > 1 and runtime:
        precompile(runtime, args.backend, cache_dir, args.compile_jobs)
    for i, c in enumerate(runtime):
        cfg = EvaluatorConfig(backend=args.backend, cache_dir=cache_dir,
                              run_timeout_s=args.hang_timeout_s if "infinite_loop" in c.name else args.run_timeout_s,
                              timing_trials=5, timing_warmup=1, correctness_trials=3)
        t0 = time.monotonic()
        r = evaluate_case(c, cfg)
        got = outcome(r)
        ok = got in c.expect and (got == "ok" or not r.rewarded)       # a cheat must never earn reward
        rows.append(dict(case=c.name, backend=c.backend, layer="runtime", expect=list(c.expect), got=got, passed=ok,
                         seconds=round(time.monotonic() - t0, 2), compile_s=round(r.compile_s, 2),
                         run_s=round(r.run_s, 2), speedup=r.speedup, detail=r.detail[:300]))
        print(f"[{i + 1}/{len(runtime)}] {c.name}: {got} ({'pass' if ok else 'FAIL'}, {rows[-1]['seconds']}s)",
              flush=True)
    total_s = time.monotonic() - t_start
    with open(os.path.join(out_dir, f"adversarial_{args.backend}.json"), "w") as f:
        json.dump({"backend": args.backend, "total_s": total_s, "rows": rows}, f, indent=1)
    lines = [f"| case | layer | expected | got | pass | s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['layer']} | {', '.join(r['expect'])} | {r['got']} | {'yes' if r['passed'] else 'NO'}"
              f" | {r['seconds']} |" for r in rows if r["layer"] == "runtime" or not r["passed"]]
    n_static = sum(r["layer"] == "static" for r in rows)
    ok_static = sum(r["layer"] == "static" and r["passed"] for r in rows)
    summary = (f"static layer: {ok_static}/{n_static} rejected with an expected reason; runtime ({args.backend}): "
               f"{sum(r['layer'] == 'runtime' and r['passed'] for r in rows)}/"
               f"{sum(r['layer'] == 'runtime' for r in rows)} as expected; {total_s:.0f}s total")
    table = "\n".join(lines + ["", summary])
    with open(os.path.join(out_dir, f"adversarial_{args.backend}.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
