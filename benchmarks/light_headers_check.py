"""Does every CUDA source compile against the evaluator's light prelude, and what does it save? (no Ray, no GPU)

For each built-in CUDA solution (kernel_eval/builtin/*/solution_cuda.py), the KernelBench-style candidates that
benchmarks/eval_throughput.py generates, and a few extra probes: the object compile of its .cu (`nvcc -c`, the
flags torch's extension build uses: -O3 as the candidates ask, sm_90 by default) with the light prelude of
`kernel_eval.build.light_cuda_sources` and the light include directory first on the include path
(`kernel_eval.build.light_include_dir`, written under --out), and (for the first --full sources, or all with --full
-1) with the headers load_inline would use. `--without-include-dir` and `--all-operators` add A/B rows. CPU seconds
are the compiler processes' user+sys (os.wait4). A source that does not compile light is what the evaluator would
then rebuild with its own headers (a fallback costs the light attempt).

    python benchmarks/light_headers_check.py --jobs 16                  # GPU machine (torch is a CUDA build)
    python benchmarks/light_headers_check.py --jobs 2 --extra-include DIR   # elsewhere: DIR has the CUDA headers
                                                                            # the CPU torch wheel lacks (cuBLAS etc.;
                                                                            # bash benchmarks/cpu_cuda_headers.sh DIR)
Writes $OUT/light_headers_check.{json,md} (OUT defaults to ./bench_out) and prints the table.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Host-side constructs the prelude must carry (a probe, not a kernel anyone evaluates).
PROBE = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
template <typename T> __global__ void axpy(const T* x, T* y, T a, int64_t n) {
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}
torch::Tensor probe(torch::Tensor x, torch::Tensor w) {
    TORCH_CHECK(x.is_cuda(), "x must be CUDA");
    const c10::cuda::CUDAGuard guard(x.device());
    auto y = torch::zeros_like(x) + torch::ones({x.size(0), x.size(1)}, x.options());
    auto z = torch::empty({x.numel()}, torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA));
    auto m = torch::matmul(x, w.t()).view({-1}).contiguous();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "axpy", [&] {
        axpy<scalar_t><<<(unsigned)((x.numel() + 255) / 256), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
            x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), (scalar_t)2, x.numel());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return torch::cat({y.view({-1}), z, m}).to(torch::kFloat32).sum(0, true);
}
"""


def sources() -> list:
    """[(label, cuda source text)]."""
    from kernel_eval.tasks import builtin_solution
    out = []
    for d in sorted(os.listdir(os.path.join(ROOT, "kernel_eval", "builtin"))):
        f = os.path.join(ROOT, "kernel_eval", "builtin", d, "solution_cuda.py")
        if os.path.isfile(f):
            out.append((f"builtin/{d}", builtin_solution(f"builtin/{d}", "cuda")))
    from benchmarks.eval_throughput import KB_ACTIVATIONS, KB_KERNEL     # the KernelBench-style activation kernel
    stem, expr = next(iter(KB_ACTIVATIONS.items()))
    out.append((f"level1/{stem} (eval_throughput)", KB_KERNEL.replace("@EXPR@", expr).replace("@NAME@", "kb")))
    texts = []
    for label, code in out:
        m = re.search(r'(?:cuda_source|CUDA_SRC)\s*=\s*r?"""(.*?)"""', code, re.S)
        if m:
            texts.append((label, m.group(1)))
    texts.append(("probe", PROBE))
    return texts


def nvcc_cmd(src: str, obj: str, extra: list, light_include: str = "") -> list:
    import torch.utils.cpp_extension as cpp_ext
    first = [light_include] if light_include else []         # first, as the evaluator's light build puts it
    inc = [f"-I{d}" for d in first + extra + cpp_ext.include_paths() + [sysconfig.get_paths()["include"]]]
    arch = os.environ.get("LIGHT_CHECK_GENCODE", "arch=compute_90,code=sm_90")
    return (["nvcc", "-c", src, "-o", obj, "-DTORCH_EXTENSION_NAME=light_check", "-DTORCH_API_INCLUDE_EXTENSION_H",
             "-D_GLIBCXX_USE_CXX11_ABI=1"] + inc + cpp_ext.COMMON_NVCC_FLAGS +
            [f"-gencode={arch}", "--compiler-options", "'-fPIC'", "-O3", "-std=c++20", "-w"])


def compile_one(text: str, extra: list, light_include: str = "") -> dict:
    return compile_timed(text, "cuda.cu", lambda src, obj: nvcc_cmd(src, obj, extra, light_include))


def compile_timed(text: str, filename: str, command) -> dict:
    """Write `text` to a temporary `filename`, run command(src, obj) (a list, or a shell string) and report ok, the
    compiler's CPU seconds (user+sys of the process tree, os.wait4), wall seconds and the log's tail on failure."""
    with tempfile.TemporaryDirectory(prefix="lightchk-") as d:
        src, obj = os.path.join(d, filename), os.path.join(d, os.path.splitext(filename)[0] + ".o")
        with open(src, "w") as fh:
            fh.write(text)
        cmd = command(src, obj)
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, shell=isinstance(cmd, str), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        return {"ok": rc == 0, "cpu_s": round(ru.ru_utime + ru.ru_stime, 1),
                "wall_s": round(time.monotonic() - t0, 1), "log": "" if rc == 0 else out[-1500:]}


def main() -> int:
    from kernel_eval.build import light_cuda_sources, light_include_dir
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2)))
    ap.add_argument("--full", type=int, default=3, help="also compile the first N sources with the full headers "
                                                        "(-1: all)")
    ap.add_argument("--extra-include", action="append", default=[], help="extra include directory (repeatable)")
    ap.add_argument("--only", nargs="*", help="labels to check (default: all)")
    ap.add_argument("--all-operators", action="store_true",
                    help="also compile each light source without AT_PER_OPERATOR_HEADERS (the prelude before "
                         "2026-12-07: ATen/TensorOperators.h then pulls in every operator's header)")
    ap.add_argument("--without-include-dir", action="store_true",
                    help="also compile each light source without the light include directory (the operator headers "
                         "with ATen/Context.h and ATen/DeviceGuard.h, as before the directory existed)")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    inc_dir = light_include_dir(os.path.abspath(args.out)) or ""
    srcs = [s for s in sources() if not args.only or s[0] in args.only]
    jobs = []
    for i, (label, text) in enumerate(srcs):
        light = light_cuda_sources([text])
        jobs.append((label, "light", "\n".join(light) if light else None))
        if args.all_operators and light:
            jobs.append((label, "allops", "\n".join(light).replace("#define AT_PER_OPERATOR_HEADERS\n", "", 1)))
        if args.without_include_dir and light:
            jobs.append((label, "noinc", "\n".join(light)))
        if args.full < 0 or i < args.full:
            full = "#include <torch/types.h>\n#include <cuda.h>\n#include <cuda_runtime.h>\n" + text
            jobs.append((label, "full", full))
    rows: dict = {label: {"label": label} for label, _ in srcs}
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(args.jobs) as ex:
        futs = {ex.submit(compile_one, text, args.extra_include, inc_dir if kind in ("light", "allops") else ""):
                (label, kind)
                for label, kind, text in jobs if text is not None}
        for label, kind, text in jobs:
            if text is None:
                rows[label][kind] = {"ok": False, "skipped": "pre-filter: built with its own headers"}
        for f in cf.as_completed(futs):
            label, kind = futs[f]
            rows[label][kind] = f.result()
            r = rows[label][kind]
            print(f"{label:28s} {kind:6s} {'ok' if r['ok'] else 'FAILED'} {r.get('cpu_s', '-')} CPU-s", flush=True)
    total = round(time.monotonic() - t0, 1)
    ok = [r for r in rows.values() if r.get("light", {}).get("ok")]
    both = [r for r in rows.values() if r.get("light", {}).get("ok") and r.get("full", {}).get("ok")]
    summary = {"sources": len(rows), "light_ok": len(ok), "wall_s": total,
               "light_cpu_s_mean": round(sum(r["light"]["cpu_s"] for r in ok) / max(1, len(ok)), 1),
               "full_vs_light_cpu_ratio": round(sum(r["full"]["cpu_s"] for r in both) /
                                                max(1e-9, sum(r["light"]["cpu_s"] for r in both)), 2) if both else None}
    for kind, name in (("allops", "allops_vs_light_cpu_ratio"), ("noinc", "without_include_dir_vs_light_cpu_ratio")):
        pairs = [r for r in rows.values() if r.get("light", {}).get("ok") and r.get(kind, {}).get("ok")]
        if pairs:           # CPU of the A/B variant over the light build's, on the sources where both compiled
            summary[name] = round(sum(r[kind]["cpu_s"] for r in pairs) /
                                  max(1e-9, sum(r["light"]["cpu_s"] for r in pairs)), 2)
    summary["light_include_dir"] = bool(inc_dir)

    def cell(x: dict) -> str:
        return str(x.get("cpu_s", "-")) if x.get("ok") else ("-" if not x else "FAILED")
    lines = ["| source | light | light CPU-s | light, no include dir CPU-s | light, every operator CPU-s | "
             "full CPU-s |", "|---|---|---|---|---|---|"]
    for r in rows.values():
        li, fu, al, ni = r.get("light", {}), r.get("full", {}), r.get("allops", {}), r.get("noinc", {})
        lines.append(f"| {r['label']} | {'ok' if li.get('ok') else 'FAILED'} | {li.get('cpu_s', '-')} | {cell(ni)} | "
                     f"{cell(al)} | {cell(fu)} |")
    return write_report(args.out, "light_headers_check", summary, rows, lines, len(ok))


def write_report(out: str, name: str, summary: dict, rows: dict, lines: list, n_ok: int) -> int:
    """$OUT/<name>.{json,md}, the table printed, then the log of every source that failed light; the exit code."""
    lines = lines + [f"\n{summary}"]
    with open(os.path.join(out, name + ".json"), "w") as fh:
        json.dump({"summary": summary, "rows": list(rows.values())}, fh, indent=1)
    with open(os.path.join(out, name + ".md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    for r in rows.values():
        if r.get("light", {}).get("log"):
            print(f"--- {r['label']} (light) ---\n{r['light']['log']}")
    return 0 if n_ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
