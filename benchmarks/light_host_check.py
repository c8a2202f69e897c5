"""Does every candidate's main.cpp compile against the evaluator's light host prelude, and what does it save?

main.cpp is what load_inline compiles with the host compiler: the pybind11 binding of a CUDA build (the candidate's
cpp_sources, usually declarations, and one m.def per function) and the whole source of a C++ (CPU backend) build.
For each built-in solution (kernel_eval/builtin/*/solution_{cuda,cpu}.py) and the KernelBench-style kernel of
benchmarks/eval_throughput.py, this captures the load_inline call, writes main.cpp as load_inline would (with
torch/extension.h) and as the evaluator's light host build does (`kernel_eval.build.light_host_sources`, the light
include directory first on the include path), and compiles both with the exact host command of torch's extension
build (`g++ -c`, the flags torch's ninja file gives main.cpp plus the candidate's extra_cflags). CPU seconds are
the compiler's user+sys (os.wait4). No GPU, no nvcc: runs anywhere torch and g++ are.

    python benchmarks/light_host_check.py --jobs 2             # writes $OUT/light_host_check.{json,md}
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import inspect
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def captured_calls() -> list:
    """[(label, load_inline kwargs)] of every solution and the eval_throughput kernel (module code run with a
    load_inline that records its arguments and returns a placeholder)."""
    import torch.utils.cpp_extension as cpp_ext
    from kernel_eval.build import _bind
    from kernel_eval.tasks import builtin_solution
    codes = []
    for d in sorted(os.listdir(os.path.join(ROOT, "kernel_eval", "builtin"))):
        for backend in ("cuda", "cpu"):
            if os.path.isfile(os.path.join(ROOT, "kernel_eval", "builtin", d, f"solution_{backend}.py")):
                codes.append((f"builtin/{d} ({backend})", builtin_solution(f"builtin/{d}", backend)))
    from benchmarks.eval_throughput import KB_ACTIVATIONS, KB_KERNEL
    stem, expr = next(iter(KB_ACTIVATIONS.items()))
    codes.append((f"level1/{stem} (eval_throughput)", KB_KERNEL.replace("@EXPR@", expr).replace("@NAME@", "kb")))
    orig = cpp_ext.load_inline
    out = []
    for label, code in codes:
        calls: list = []

        def record(*a, **k):
            calls.append(_bind(orig, a, k))
            return type("Placeholder", (), {"__getattr__": lambda self, n: (lambda *x, **y: None)})()
        cpp_ext.load_inline = record
        try:
            exec(compile(code, label, "exec"), {"__name__": "candidate"})
        finally:
            cpp_ext.load_inline = orig
        out += [(label, c) for c in calls]
    return out


def main_cpp(call: dict, light: bool) -> str:
    """main.cpp as load_inline writes it (light: the light host build's cpp_sources)."""
    from kernel_eval.build import _as_list, light_host_sources
    cpp = _as_list(call.get("cpp_sources"))
    cpp = light_host_sources(cpp) if light else ["#include <torch/extension.h>"] + cpp
    if cpp is None:
        return ""
    fns = call.get("functions")
    if fns is not None:
        fns = {f: f for f in ([fns] if isinstance(fns, str) else fns)} if not isinstance(fns, dict) else fns
        cpp = cpp + ["PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {"] + [
            f'm.def("{f}", torch::wrap_pybind_function({f}), "{doc}");' for f, doc in fns.items()] + ["}"]
    return "\n".join(cpp)


def host_command(call: dict, src: str, obj: str, include_dir: str) -> str:
    """The compile command torch's ninja file gives main.cpp, plus the call's extra_cflags (and the light include
    directory). Written with with_cuda off, so it also runs where torch is a CPU build; for a CUDA build's main.cpp
    torch adds only defines and the CUDA include directory, which the headers parsed here do not use."""
    import torch.utils.cpp_extension as cpp_ext
    from kernel_eval.build import _as_list
    with tempfile.TemporaryDirectory(prefix="lhc-ninja-") as d:
        kw = dict(path=os.path.join(d, "build.ninja"), name="light_check", sources=[src],
                  extra_cflags=([f"-I{include_dir}"] if include_dir else []) + _as_list(call.get("extra_cflags")),
                  extra_cuda_cflags=[], extra_sycl_cflags=[], extra_ldflags=[],
                  extra_include_paths=_as_list(call.get("extra_include_paths")), with_cuda=False, with_sycl=False,
                  is_standalone=False)
        params = inspect.signature(cpp_ext._write_ninja_file_to_build_library).parameters
        cpp_ext._write_ninja_file_to_build_library(**{k: v for k, v in kw.items() if k in params})
        with open(kw["path"]) as fh:
            ninja = dict(ln.split("=", 1) for ln in fh.read().splitlines() if " = " in ln and not ln.startswith(" "))
    get = {k.strip(): v.strip() for k, v in ninja.items()}
    return f"{get['cxx']} -MMD -MF {obj}.d {get['cflags']} -c {src} -o {obj} {get.get('post_cflags', '')}"


def compile_one(text: str, call: dict, include_dir: str) -> dict:
    from benchmarks.light_headers_check import compile_timed
    return compile_timed(text, "main.cpp", lambda src, obj: host_command(call, src, obj, include_dir))


def main() -> int:
    from kernel_eval.build import light_include_dir
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2)))
    ap.add_argument("--full", type=int, default=-1, help="also compile the first N main.cpp with torch/extension.h "
                                                         "(-1: all)")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    inc = light_include_dir(os.path.abspath(args.out)) or ""
    calls = captured_calls()
    jobs = []
    for i, (label, call) in enumerate(calls):
        jobs.append((label, "light", main_cpp(call, True), call, inc))
        if args.full < 0 or i < args.full:
            jobs.append((label, "full", main_cpp(call, False), call, ""))
    rows: dict = {label: {"label": label} for label, _ in calls}
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(args.jobs) as ex:
        futs = {}
        for label, kind, text, call, d in jobs:
            if text:
                futs[ex.submit(compile_one, text, call, d)] = (label, kind)
            else:
                rows[label][kind] = {"ok": False, "skipped": "pre-filter: built with torch/extension.h"}
        for f in cf.as_completed(futs):
            label, kind = futs[f]
            r = rows[label][kind] = f.result()
            print(f"{label:36s} {kind:6s} {'ok' if r['ok'] else 'FAILED'} {r['cpu_s']} CPU-s", flush=True)
    ok = [r for r in rows.values() if r.get("light", {}).get("ok")]
    both = [r for r in ok if r.get("full", {}).get("ok")]
    summary = {"sources": len(rows), "light_ok": len(ok), "wall_s": round(time.monotonic() - t0, 1),
               "jobs": args.jobs, "light_cpu_s_mean": round(sum(r["light"]["cpu_s"] for r in ok) / max(1, len(ok)), 1),
               "full_cpu_s_mean": round(sum(r["full"]["cpu_s"] for r in both) / max(1, len(both)), 1),
               "full_vs_light_cpu_ratio": round(sum(r["full"]["cpu_s"] for r in both) /
                                                max(1e-9, sum(r["light"]["cpu_s"] for r in both)), 2) if both else None}
    lines = ["| main.cpp of | light | light CPU-s | full CPU-s |", "|---|---|---|---|"]
    for r in rows.values():
        li, fu = r.get("light", {}), r.get("full", {})
        lines.append(f"| {r['label']} | {'ok' if li.get('ok') else 'FAILED'} | {li.get('cpu_s', '-')} | "
                     f"{fu.get('cpu_s', '-') if fu.get('ok') else ('-' if not fu else 'FAILED')} |")
    from benchmarks.light_headers_check import write_report
    return write_report(args.out, "light_host_check", summary, rows, lines, len(ok))


if __name__ == "__main__":
    sys.exit(main())
