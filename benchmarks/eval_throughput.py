"""Evaluator throughput on one GPU: this evaluator vs a KernelBench-style baseline, measured in the same run.

    OUT=bench_out python benchmarks/eval_throughput.py --candidates 32 --size-profile cpu_small --timeout-s 265

Candidates (>= 32 by default): the built-in CUDA solutions (kernel_eval.tasks.builtin_solution), elementwise
KernelBench level-1 activations ($KERNELBENCH_DIR or ../shared/kernelbench; skipped when absent) with kernels written
here, and near-duplicates of both, as RL produces them: the same kernel with a comment/whitespace change (same C++)
or another block size (new C++).

- ours: compile workers (threads; default --compile-workers x --compile-jobs = the cores, one job per worker, one
  worker per core: no oversubscription; gpu_round.sh part 18 uses 32 on 16 cores) into a content-hash build cache
  (fresh, cold at start; a near-duplicate waits for a concurrent compile of the same C++) with the host-object
  cache (--no-object-cache to turn off), the precompiled header for the host .cpp (--no-pch), light CUDA headers
  (each .cu first against kernel_eval.build's light prelude, its own headers if that fails; --no-light), light host
  headers (each main.cpp first against the light host prelude, torch/extension.h if that fails; --no-light-host),
  pre-spawned sandbox processes, one GPU runner (a lock: exclusive GPU while checking and timing); compilation
  overlaps the GPU runs.
- baseline (KernelBench style, independent of our protocol): per candidate a fresh `python` process that calls
  load_inline itself into a fresh TORCH_EXTENSIONS_DIR (no cache, no precompiled header), 16 processes at a time;
  each checks correctness on seeded get_inputs() (torch.allclose, atol = rtol = 1e-2) and times reference and kernel
  with CUDA events, the GPU phase serialized across processes by a file lock. Same trial counts as ours.

Options for ours: --compile-priority fifo|fair (evaluator.compile_priority), --also-fair (ours a second time with
fair, fresh cache, before the baseline), --also-full-host (likewise with light host headers off: the same machine's
A/B of the light host prelude; each extra run of ours takes a share of the time ours gets). Ours also records a
per-candidate timeline (compile start/end, the GPU runner's start/end, the sandbox's phases: setup, reference, load,
correctness, timing) in the JSON, summarized below the table (first and median result, last compile end, GPU runner
busy time).

Reported per side: wall seconds, candidates/s and kernels/minute, compile CPU-seconds in total and per finished
candidate (compile processes and their compilers), the speedup of candidates/s over the baseline,
sandbox start-up seconds on the critical path (ours: request -> ready; baseline: interpreter + torch import), GPU-held
seconds; verdicts (correct or not) per candidate must be identical (asserted after the results are written: exit 1
otherwise). Robust: a failing candidate is recorded with its reason; each side has a time budget and the script ends
by --timeout-s whatever happens (unfinished candidates are listed). Writes $OUT/eval_throughput.json and
$OUT/eval_throughput.md and prints the table.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

KB_ACTIVATIONS = {          # KernelBench level-1 task -> CUDA expression of v (float32), torch semantics
    "19_ReLU": "fmaxf(v, 0.f)",
    "21_Sigmoid": "1.f / (1.f + expf(-v))",
    "22_Tanh": "tanhf(v)",
    "25_Swish": "v / (1.f + expf(-v))",
    "28_HardSigmoid": "fminf(fmaxf(v / 6.f + 0.5f, 0.f), 1.f)",
    "29_Softplus": "v > 20.f ? v : log1pf(expf(v))",
    "30_Softsign": "v / (1.f + fabsf(v))",
    "32_HardTanh": "fminf(fmaxf(v, -1.f), 1.f)",
}

KB_KERNEL = '''import torch
from torch.utils.cpp_extension import load_inline

CUDA_SRC = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>

__global__ void act_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) { const float v = x[i]; y[i] = @EXPR@; }
}

torch::Tensor act_forward(torch::Tensor x) {
    TORCH_CHECK(x.is_cuda() && x.scalar_type() == torch::kFloat32, "expected a float32 CUDA tensor");
    auto xc = x.contiguous();
    auto y = torch::empty_like(xc);
    const int64_t n = xc.numel();
    if (n == 0) return y;
    const int threads = 256;
    act_kernel<<<(unsigned)((n + threads - 1) / threads), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        xc.data_ptr<float>(), y.data_ptr<float>(), n);
    return y;
}
"""

ext = load_inline(name="kb_@NAME@", cpp_sources="torch::Tensor act_forward(torch::Tensor x);",
                  cuda_sources=CUDA_SRC, functions=["act_forward"], extra_cuda_cflags=["-O3"])


class ModelNew(torch.nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return ext.act_forward(x)
'''


# ------------------------------------------------------------------------------------------------------ candidates
def _near_duplicate(code: str, k: int) -> tuple[str, str]:
    """Even k: a comment and blank line added (same C++); odd k: another block size where the kernel has one."""
    if k % 2 and re.search(r"threads = 256", code):
        return code.replace("threads = 256", "threads = 512", 1), "block size 512"
    return code.replace("\nclass ModelNew", f"\n# revision {k}: same kernel\n\nclass ModelNew", 1), "comment"


def build_candidates(n: int, profile: str, backend: str = "cuda") -> list:
    """[(label, Task, code)]: distinct candidates first, then near-duplicates cycling over them. Built-in tasks keep
    their published sizes; the KernelBench ones get `profile` (one child process for all of them)."""
    from kernel_eval.tasks import builtin_solution, builtin_task_names, default_kernelbench_dir, get_task, with_profile
    base = []
    for name in builtin_task_names():
        try:
            base.append((name, get_task(name), builtin_solution(name, backend)))
        except Exception as e:                        # a task that cannot load is reported, not fatal
            print(f"skip {name}: {e}", flush=True)
    kb_dir = default_kernelbench_dir()
    kb = []
    for stem, expr in (KB_ACTIVATIONS.items() if backend == "cuda" else ()):
        if not os.path.isfile(os.path.join(kb_dir, "level1", stem + ".py")):
            continue
        try:
            kb.append((get_task(f"level1/{stem}"),
                       KB_KERNEL.replace("@EXPR@", expr).replace("@NAME@", stem.split("_", 1)[1].lower())))
        except Exception as e:
            print(f"skip level1/{stem}: {e}", flush=True)
    if kb:
        try:
            tasks = with_profile([t for t, _ in kb], profile)
            base += [(t.name, t, code) for t, (_, code) in zip(tasks, kb)]
        except Exception as e:
            print(f"skip the KernelBench tasks (size profile {profile}): {e}", flush=True)
    if not base:
        raise SystemExit("no candidates: neither built-in CUDA solutions nor KernelBench tasks could be loaded")
    out = list(base[:n])
    k = 0
    while len(out) < n:
        label, task, code = base[k % len(base)]
        dup, how = _near_duplicate(code, k)
        out.append((f"{label} ({how})", task, dup))
        k += 1
    return out


# ------------------------------------------------------------------------------------------------------------ ours
def run_ours(cands: list, cfg, budget_s: float, workers: int) -> tuple[list, dict]:
    import torch
    from kernel_eval.build import compile_candidate
    from kernel_eval.evaluate import _finish, run_candidate
    from kernel_eval.result import EvalResult
    gpu_lock = threading.Lock()
    acc = {"compile_cpu_s": 0.0, "compile_wall_s": 0.0, "startup_s": 0.0, "gpu_s": 0.0, "light_builds": 0,
           "light_host_builds": 0, "light_fallbacks": 0, "waited_builds": 0, "waited_s": 0.0}
    acc_lock = threading.Lock()
    t_zero = time.monotonic()
    timeline: list = []                  # per candidate: seconds since the start of this side, and the run phases
    acc["timeline"] = timeline

    def one(item):
        label, task, code = item
        res = EvalResult(task=task.name, backend=cfg.backend, size_profile=task.size_profile, stage="compile")
        ev = {"candidate": label, "compile_start": time.monotonic() - t_zero}
        try:
            b = compile_candidate(code, cfg.backend, cfg, torch.__version__)
            ev.update(compile_end=time.monotonic() - t_zero, compile_cpu_s=b.cpu_s, nice=b.nice,
                      waited_s=b.waited_s, cache_hit=b.cache_hit)
            with acc_lock:
                acc["compile_cpu_s"] += b.cpu_s
                acc["compile_wall_s"] += b.compile_s
                acc["light_builds"] += b.light_builds
                acc["light_fallbacks"] += b.light_fallbacks
                acc["light_host_builds"] += b.light_host_builds
                acc["waited_builds"] += b.waited_builds
                acc["waited_s"] += b.waited_s
            if not b.ok:
                res.reason = b.reason
                return _finish(res, b.log[-2000:])
            with gpu_lock:
                t0 = time.monotonic()
                ev["gpu_start"] = t0 - t_zero
                r = run_candidate(task, code, b.keys, cfg, res)
                held = time.monotonic() - t0
                ev.update(gpu_end=time.monotonic() - t_zero, run_s=r.run_s, startup_s=r.startup_s,
                          phase_s=r.phase_s)
            with acc_lock:
                acc["gpu_s"] += held
                acc["startup_s"] += r.startup_s
            return r
        except Exception as e:                        # recorded, never fatal
            res.reason = "evaluator_error"
            return _finish(res, f"{type(e).__name__}: {e}")
        finally:
            ev["end"] = time.monotonic() - t_zero
            with acc_lock:
                timeline.append(ev)

    return _pooled(one, cands, workers, budget_s, "ours"), acc


def timeline_summary(timeline: list) -> dict:
    """When results came back and where the GPU runner's seconds went (ours)."""
    ends = sorted(e["end"] for e in timeline)
    ran = [e for e in timeline if "gpu_end" in e]
    phases: dict = {}
    for e in ran:
        for k, v in (e.get("phase_s") or {}).items():
            phases[k] = phases.get(k, 0.0) + v
    first_gpu = min((e["gpu_start"] for e in ran), default=0.0)
    busy = sum(e["gpu_end"] - e["gpu_start"] for e in ran)
    span = max((e["gpu_end"] for e in ran), default=0.0) - first_gpu
    return {"first_result_s": ends[0] if ends else None, "median_result_s": ends[len(ends) // 2] if ends else None,
            "last_compile_end_s": max((e.get("compile_end", 0.0) for e in timeline), default=None),
            "first_gpu_start_s": first_gpu, "gpu_busy_s": busy,
            "gpu_busy_fraction_after_first": busy / span if span > 0 else None,
            "run_s": sum(e.get("run_s", 0.0) for e in ran), "startup_s": sum(e.get("startup_s", 0.0) for e in ran),
            "phase_s": {k: round(v, 2) for k, v in phases.items()}}


def _pooled(fn, cands: list, workers: int, budget_s: float, label: str) -> list:
    """fn over cands in a thread pool; results in order, None for what did not finish within budget_s."""
    results: list = [None] * len(cands)
    ex = cf.ThreadPoolExecutor(workers)
    futs = {ex.submit(fn, c): i for i, c in enumerate(cands)}
    deadline = time.monotonic() + budget_s
    done_n = 0
    try:
        for fut in cf.as_completed(futs, timeout=max(1.0, deadline - time.monotonic())):
            i = futs[fut]
            results[i] = fut.result()
            done_n += 1
            r = results[i]
            print(f"[{label} {done_n}/{len(cands)}] {cands[i][0]}: correct={_get(r, 'correct')} "
                  f"reason={_get(r, 'reason')}", flush=True)
    except cf.TimeoutError:
        print(f"[{label}] budget of {budget_s:.0f}s spent: {len(cands) - done_n} candidates unfinished", flush=True)
    ex.shutdown(wait=False, cancel_futures=True)
    return results


def _get(r, key):
    return r.get(key) if isinstance(r, dict) else getattr(r, key, None)


# -------------------------------------------------------------------------------------------------------- baseline
def run_baseline(cands: list, trials: dict, budget_s: float, workdir: str, device: str) -> tuple[list, dict]:
    lock_path = os.path.join(workdir, "gpu.lock")
    open(lock_path, "w").close()
    deadline = time.monotonic() + budget_s

    def one(item):
        label, task, code = item
        job_dir = tempfile.mkdtemp(prefix="kb-job-", dir=workdir)
        job = os.path.join(job_dir, "job.json")
        with open(job, "w") as fh:
            json.dump({"task_source": task.source, "code": code, "lock": lock_path, "device": device, **trials}, fh)
        env = dict(os.environ, TORCH_EXTENSIONS_DIR=os.path.join(job_dir, "ext"))
        env.pop("MAX_JOBS", None)
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--baseline-one", job],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
            return {"correct": False, "reason": "timeout", "wall_s": time.monotonic() - t0}
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            return {"correct": False, "reason": f"exit {proc.returncode}", "detail": err[-1500:],
                    "wall_s": time.monotonic() - t0}
        return dict(json.loads(lines[-1]), wall_s=time.monotonic() - t0)

    results = _pooled(one, cands, 16, budget_s, "baseline")
    ok = [r for r in results if r]
    split = {k: sum(float(r.get(k) or 0.0) for r in ok) for k in ("compile_cpu_s", "compile_wall_s", "startup_s",
                                                                   "gpu_s")}
    return results, split


def baseline_one(job_path: str) -> None:
    """One KernelBench-style evaluation in this fresh process; prints one JSON line."""
    import fcntl
    import resource
    t0 = time.monotonic()
    import torch
    startup = time.monotonic() - t0
    with open(job_path) as fh:
        job = json.load(fh)
    res = {"correct": False, "reason": None, "startup_s": startup}
    ref_mod: dict = {}
    exec(compile(job["task_source"], "<reference>", "exec"), ref_mod)
    cand_mod: dict = {}
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t1 = time.monotonic()
    try:
        exec(compile(job["code"], "<candidate>", "exec"), cand_mod)    # load_inline compiles here
    except Exception as e:
        res.update(reason="compile_error", detail=str(e)[-1500:])
        print(json.dumps(res))
        return
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res["compile_wall_s"] = time.monotonic() - t1
    res["compile_cpu_s"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    with open(job["lock"]) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        g0 = time.monotonic()
        try:
            _baseline_gpu(ref_mod, cand_mod, job, res)
        except Exception as e:
            res.update(correct=False, reason="runtime_error", detail=str(e)[-1500:])
        if job["device"] == "cuda":
            torch.cuda.synchronize()
        res["gpu_s"] = time.monotonic() - g0
    print(json.dumps(res))


def _baseline_gpu(ref_mod: dict, cand_mod: dict, job: dict, res: dict) -> None:
    import torch
    init = ref_mod["get_init_inputs"]()
    torch.manual_seed(0)
    dev = job["device"]
    model = ref_mod["Model"](*init).to(dev)
    torch.manual_seed(0)
    new = cand_mod["ModelNew"](*init).to(dev)
    with torch.no_grad():
        for t in range(job["correctness_trials"]):
            torch.manual_seed(1000 + t)
            x = [v.to(dev) if isinstance(v, torch.Tensor) else v for v in ref_mod["get_inputs"]()]
            want, got = model(*x), new(*x)
            if not isinstance(got, torch.Tensor) or got.shape != want.shape:
                res["reason"] = "wrong_shape"
                return
            if not torch.allclose(got, want, atol=1e-2, rtol=1e-2):
                res["reason"] = "mismatch"
                return
        res["correct"] = True
        res["ref_ms"], res["kernel_ms"] = _events(model, x, job), _events(new, x, job)


def _events(fn, x: list, job: dict) -> float:
    import statistics
    import torch
    for _ in range(job["timing_warmup"]):
        fn(*x)
    ms = []
    if job["device"] != "cuda":                     # CPU smoke mode
        for _ in range(job["timing_trials"]):
            t0 = time.perf_counter()
            fn(*x)
            ms.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ms)
    torch.cuda.synchronize()
    for _ in range(job["timing_trials"]):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*x)
        end.record()
        torch.cuda.synchronize()
        ms.append(start.elapsed_time(end))
    return statistics.median(ms)


# ------------------------------------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--size-profile", default="cpu_small",
                    help="for the KernelBench tasks; cpu_small keeps each tensor <= 4 MiB (gpu_small keeps 1.6 GB "
                         "activations, whose outputs our protocol ships to the judging process: minutes per kernel)")
    ap.add_argument("--timeout-s", type=float, default=265.0,
                    help="global limit (a watchdog ends the script 30 s after it); ours gets half, "
                         "the baseline the rest")
    ap.add_argument("--backend", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: a smoke run of the script itself with the built-in C++ solutions (no GPU)")
    ap.add_argument("--compile-jobs", type=int, default=1, help="ours: compiler jobs (MAX_JOBS) per compile")
    ap.add_argument("--compile-workers", type=int, default=0,
                    help="ours: concurrent compiles; 0: cores // compile-jobs (no oversubscription)")
    ap.add_argument("--no-pch", action="store_true", help="ours: no precompiled header for the host .cpp")
    ap.add_argument("--no-object-cache", action="store_true", help="ours: no host-object cache")
    ap.add_argument("--no-light", action="store_true", help="ours: compile each .cu with its own torch headers "
                                                            "(evaluator.light_cuda_headers=false)")
    ap.add_argument("--no-light-host", action="store_true", help="ours: compile each main.cpp with torch/extension.h "
                                                                 "(evaluator.light_host_headers=false)")
    ap.add_argument("--compile-priority", choices=("fifo", "fair"), default="fifo",
                    help="ours: evaluator.compile_priority (fifo: older compiles first under contention)")
    ap.add_argument("--also-fair", action="store_true",
                    help="run ours a second time with compile_priority=fair (fresh cache) before the baseline")
    ap.add_argument("--also-full-host", action="store_true",
                    help="run ours again with light_host_headers off (fresh cache) before the baseline: the same "
                         "machine's A/B of the light host prelude")
    ap.add_argument("--baseline-one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_one:
        baseline_one(args.baseline_one)
        return 0
    t_start = time.monotonic()
    watchdog = threading.Timer(args.timeout_s + 30.0, lambda: os._exit(3))   # never hang, whatever happens
    watchdog.daemon = True
    watchdog.start()
    from kernel_eval.build import cuda_arch_list
    from runtime.config import EvaluatorConfig
    out_dir = os.environ.get("OUT", "bench_out")
    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="eval-throughput-")
    cfg = EvaluatorConfig(backend=args.backend, gpus_per_runner=1 if args.backend == "cuda" else 0,
                          cache_dir=os.path.join(work, "ours-cache"), compile_jobs=max(1, args.compile_jobs),
                          run_timeout_s=60, compile_timeout_s=150, warm_sandboxes=2, work_dir=work,
                          precompiled_header=not args.no_pch, host_object_cache=not args.no_object_cache,
                          light_cuda_headers=not args.no_light,
                          light_host_headers=not args.no_light_host, compile_priority=args.compile_priority)
    # the header is built by the first compile that needs it; the others do not wait for it
    workers = args.compile_workers or max(1, (os.cpu_count() or 2) // cfg.compile_jobs)
    trials = {"correctness_trials": cfg.correctness_trials, "timing_warmup": cfg.timing_warmup,
              "timing_trials": cfg.timing_trials}
    cands = build_candidates(args.candidates, args.size_profile, args.backend)
    print(f"{len(cands)} candidates ({len({c for _, _, c in cands})} distinct sources), {os.cpu_count()} cores; "
          f"ours: {workers} compile workers x {cfg.compile_jobs} jobs, pch={cfg.precompiled_header}, "
          f"object cache={cfg.host_object_cache}, light headers={cfg.light_cuda_headers}, "
          f"light host headers={cfg.light_host_headers}, "
          f"arch={cuda_arch_list(cfg) or 'torch default'}", flush=True)
    budget = args.timeout_s - (time.monotonic() - t_start)
    rows, verdicts = {}, {}
    variants = {"ours_fair": {"compile_priority": "fair"},      # reruns of ours, each on a fresh cache of its own
                "ours_full_host": {"light_host_headers": False}}
    labels = ["ours"] + (["ours_fair"] if args.also_fair else []) + \
        (["ours_full_host"] if args.also_full_host else []) + ["baseline"]
    for label in labels:
        share = budget * 0.5 / (len(labels) - 1) if label != "baseline" else \
            args.timeout_s - (time.monotonic() - t_start) - 5.0
        t0 = time.monotonic()
        if label != "baseline":
            c = cfg if label == "ours" else dataclasses.replace(
                cfg, cache_dir=os.path.join(work, f"{label}-cache"), **variants[label])
            results, split = run_ours(cands, c, share, workers)
            results = [r.to_dict() if r is not None else None for r in results]
            split["timeline_summary"] = timeline_summary(split["timeline"])
            print(f"{label} ({c.compile_priority}, light host {c.light_host_headers}): "
                  f"{json.dumps(split['timeline_summary'])}", flush=True)
        else:
            results, split = run_baseline(cands, trials, share, work, args.backend)
        wall = time.monotonic() - t0
        done = [r for r in results if r is not None]
        verdicts[label] = [None if r is None else bool(r.get("correct")) for r in results]
        rows[label] = {"wall_s": wall, "finished": len(done), "kernels_per_minute": len(done) * 60.0 / wall,
                       "candidates_per_s": len(done) / wall,
                       "correct": sum(bool(r.get("correct")) for r in done), **split,
                       "results": [dict(candidate=c[0], **({k: r.get(k) for k in ("correct", "reason", "speedup",
                                                                                  "ref_ms", "kernel_ms", "detail")}
                                                          if r else {"unfinished": True}))
                                   for c, r in zip(cands, results)]}
        print(f"{label}: {len(done)}/{len(cands)} kernels in {wall:.1f}s", flush=True)
    both = [i for i in range(len(cands)) if all(verdicts[k][i] is not None for k in labels)]
    differ = [cands[i][0] for i in both if len({verdicts[k][i] for k in labels}) > 1]
    ratio = rows["ours"]["kernels_per_minute"] / max(1e-9, rows["baseline"]["kernels_per_minute"])
    for r in rows.values():
        r["compile_cpu_s_per_candidate"] = r["compile_cpu_s"] / max(1, r["finished"])
        r["speedup_vs_baseline"] = r["candidates_per_s"] / max(1e-9, rows["baseline"]["candidates_per_s"])
    summary = {"candidates": len(cands), "compared": len(both), "verdicts_identical": not differ,
               "cores": os.cpu_count(), "compile_workers": workers, "compile_jobs": cfg.compile_jobs,
               "precompiled_header": cfg.precompiled_header, "host_object_cache": cfg.host_object_cache,
               "light_cuda_headers": cfg.light_cuda_headers,
               "light_host_headers": cfg.light_host_headers, "compile_priority": cfg.compile_priority,
               "verdicts_differ": differ, "throughput_ratio": ratio, "size_profile": args.size_profile, **rows}
    with open(os.path.join(out_dir, "eval_throughput.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    table = ["| evaluator | finished | candidates/s | kernels/min | speedup | wall s | compile CPU-s | CPU-s/candidate "
             "| compile wall-s (sum) | start-up s (sum) | GPU-held s | correct |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, r in rows.items():
        table.append(f"| {k} | {r['finished']}/{len(cands)} | {r['candidates_per_s']:.3f} | "
                     f"{r['kernels_per_minute']:.1f} | {r['speedup_vs_baseline']:.2f}x | {r['wall_s']:.0f} | "
                     f"{r['compile_cpu_s']:.0f} | {r['compile_cpu_s_per_candidate']:.1f} | {r['compile_wall_s']:.0f} | "
                     f"{r['startup_s']:.1f} | {r['gpu_s']:.1f} | {r['correct']} |")
    for k, r in rows.items():
        t = r.get("timeline_summary")
        if t:
            busy = 100 * (t["gpu_busy_fraction_after_first"] or 0)
            table.append(f"\n{k}: first result at {t['first_result_s']:.1f} s, median at {t['median_result_s']:.1f} "
                         f"s, last compile ended at {t['last_compile_end_s']:.1f} s; GPU runner busy "
                         f"{t['gpu_busy_s']:.1f} s from {t['first_gpu_start_s']:.1f} s on ({busy:.0f}%); sandbox "
                         f"phases (s, sum): {t['phase_s']}")
    table.append(f"\nours: {rows['ours'].get('light_builds', 0)} extensions built with light headers "
                 f"({rows['ours'].get('light_host_builds', 0)} with a light main.cpp), "
                 f"{rows['ours'].get('light_fallbacks', 0)} whose first light build failed; "
                 f"{rows['ours'].get('waited_builds', 0)} extensions taken from a concurrent compile of the same C++ "
                 f"({rows['ours'].get('waited_s', 0.0):.0f} s waited)")
    table.append(f"\nthroughput ratio {ratio:.2f}x; verdicts identical on {len(both)} candidates: {not differ}"
                 + (f" (differ: {', '.join(differ)})" if differ else ""))
    with open(os.path.join(out_dir, "eval_throughput.md"), "w") as fh:
        fh.write("\n".join(table) + "\n")
    print("\n".join(table), flush=True)
    sys.stdout.flush()
    os._exit(0 if not differ else 1)               # stray worker threads (budget spent) must not keep us alive


if __name__ == "__main__":
    sys.exit(main())
