"""Compile candidates separately from running them, into a content-hashed build cache.

Two halves:
- Inside the sandboxed compile process (kernel_eval.child, mode "compile"), `patch_for_compile` replaces
  torch.utils.cpp_extension.load_inline: each call is keyed by a content hash of its arguments (sources, functions,
  flags, torch/python versions); a key already in the cache is not rebuilt, a new one is built into the process's
  own temporary directory and NOT imported (the compile process stops at the .so). The compiler log is kept.
- Inside the run process (mode "run"), `patch_for_run` makes load_inline import the already built .so of the same key
  from the run's private copy; it never compiles.
- In the parent, `compile_candidate` spawns the compile process, publishes new builds into the cache with an atomic
  rename (safe for concurrent builders: the first rename wins, the others discard their copy) and records the
  candidate's source hash -> extension keys, so an identical candidate skips the compile process altogether.

Cheaper builds, each still one extension per candidate compiled from the candidate's own sources:
- Precompiled header: torch/extension.h is built once per flag set as a .gch and injected into the host .cpp of C++
  AND CUDA builds through extra_cflags (`-include`); the first builder takes a lock and builds it, concurrent
  builders do not wait for it (they compile without it).
- Host-object cache: a build's C++ objects (main.o: the pybind11 binding load_inline generates from `functions`
  and cpp_sources) are cached by a content hash of their exact compile command (build directory left out), source
  text and compiler version; a candidate whose main.cpp and flags equal an earlier one's gets that object and only
  its .cu is compiled (ninja for the remaining objects, then the link command ninja would run). New objects are
  published by the parent, after the compile process ended, only if their sha256 still matches what the patched
  load_inline reported right after building them.
- Light CUDA headers (evaluator.light_cuda_headers, default on): a candidate's .cu is first compiled against a
  light prelude (ATen's Tensor, operators and dispatch macros, the ATen/ops header of every operator it calls,
  torch:: names as torch/types.h defines them) instead of torch/extension.h + torch/types.h, with a light include
  directory first on its include path (copies of the operator headers and of ATen/cuda/CUDAContext.h without the
  global context they do not use): ~20-25 instead of ~110 nvcc CPU-s per .cu. Sources using Python bindings,
  autograd, nn, jit or requires_grad skip it; a light build that fails is rebuilt with the candidate's own headers,
  whose log is what the candidate sees. Why the program is the same: see "light CUDA headers" below.
  `python benchmarks/light_headers_check.py` compiles every built-in solution both ways.
- Light host headers (evaluator.light_host_headers, default on): main.cpp -- a CUDA build's pybind11 binding of
  the candidate's declarations, a C++ build's whole source -- is first compiled against a light host prelude
  (ATen's Tensor and operators, the ATen/ops header of every operator it calls, pybind11 with torch's type casters
  from torch/csrc/utils/pybind.h, torch::wrap_pybind_function) instead of torch/extension.h, whose torch/all.h (the
  C++ frontend: autograd, nn, jit, optim) the binding does not use: ~12 instead of ~40 g++ CPU-s per main.cpp on
  the 2-core box (`python benchmarks/light_host_check.py`). A light part that fails is rebuilt as written and the
  other part stays light (a light .cu with a main.cpp as written, or the reverse); the log the candidate sees is
  the one of a build whose failing part was as written. The precompiled header then only serves main.cpp files
  built with torch/extension.h.
- One build per extension at a time: a compile process that is about to build extension key K takes an exclusive
  lock on <cache>/building/K.lock and holds it until it exits (compile processes are single-use); another one that
  needs K meanwhile (a near-duplicate candidate: other Python, same C++) waits for that lock -- at most half of
  evaluator.compile_timeout_s -- then for the parent to publish K (up to PUBLISH_WAIT_S), and takes K from the
  cache; it builds K itself only if the first builder failed or its wait ran out. Without it, a burst of
  near-duplicates (RL samples G of them per task) compiled the same C++ side by side.
- CUDA arch: the compile sandbox gets TORCH_CUDA_ARCH_LIST (evaluator.cuda_arch_list, else the environment, else
  the node's GPUs from nvidia-smi, as torch would pick them), so no compile process initializes CUDA, a compile node
  without a GPU can build, and the arch list is part of the extension key (the run computes the same key).

Where CUDA build time goes (one KernelBench-style relu .cu, nvcc 13.0 -O3 sm_90, torch 2.13 headers, 2-core box,
`nvcc --time`): cudafe++ 28 s, cicc 26 s, host g++ of the cudafe output 24 s, preprocessing 4 s, ptxas < 0.1 s:
the torch headers are parsed three times, and torch/types.h instead of torch/extension.h saves nothing (ATen is
the bulk). None of these passes can use a precompiled header (EDG front ends; the host pass compiles already
preprocessed output), so what helps is parsing less: the light prelude (ATen/core/Tensor.h parses in 2 s where
torch/extension.h takes 25 s, g++ -fsyntax-only). The host main.cpp: 22 s plain,
~10 s with the header, 0 s from the object cache. C++ builds (one trivial load_inline): 28 s plain, 13 s with the
header; cache hit: 0 s (no compile process).

    python -m pytest tests/test_evaluator.py tests/test_build_cache.py -q -k "cache or object"
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import inspect
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

BUILD_FORMAT = 2            # bump when the key or the cache layout changes
_KEY_ARGS = ("name", "cpp_sources", "cuda_sources", "functions", "extra_cflags", "extra_cuda_cflags",
             "extra_ldflags", "extra_include_paths", "with_cuda", "is_python_module", "with_pytorch_error_handling",
             "no_implicit_headers")


def default_cache_dir(cache_dir: Optional[str]) -> str:
    path = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "sandbox-rl", "builds")
    os.makedirs(path, exist_ok=True)
    return os.path.abspath(path)


def _norm(v: Any) -> Any:
    if isinstance(v, str):
        return v
    if isinstance(v, dict):
        return {str(k): _norm(x) for k, x in sorted(v.items())}
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return v if v is None or isinstance(v, (bool, int, float)) else repr(v)


def extension_key(bound: dict, torch_version: str) -> str:
    """Content hash of one load_inline call (its build inputs only, not build_directory or verbose); CUDA builds add
    the TORCH_CUDA_ARCH_LIST of this process (compile and run sandboxes get the same one)."""
    payload = {k: _norm(bound.get(k)) for k in _KEY_ARGS}
    payload.update(torch=torch_version, python=sys.version_info[:2], fmt=BUILD_FORMAT)
    if bound.get("cuda_sources"):
        payload["arch"] = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def source_key(code: str, backend: str, torch_version: str) -> str:
    return hashlib.sha256(f"{BUILD_FORMAT}\0{backend}\0{torch_version}\0{code}".encode()).hexdigest()[:32]


# ------------------------------------------------------------------------------------------ inside the sandbox child
def _bind(orig: Callable, args: tuple, kwargs: dict) -> dict:
    sig = inspect.signature(orig)
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _pch_include(cpp_ext: Any, bound: dict, cache_dir: str, log: Callable[[str], None]) -> Optional[str]:
    """Path of a header whose precompiled .gch matches this build's flags (built once per flag set), or None."""
    try:
        probe_dir = tempfile.mkdtemp(prefix="pchprobe-")
        fn = cpp_ext._write_ninja_file_to_build_library
        params = inspect.signature(fn).parameters
        kw = dict(path=os.path.join(probe_dir, "build.ninja"), name="pchprobe", sources=[os.path.join(probe_dir, "x.cpp")],
                  extra_cflags=list(bound.get("extra_cflags") or []), extra_cuda_cflags=[], extra_sycl_cflags=[],
                  extra_ldflags=[], extra_include_paths=list(bound.get("extra_include_paths") or []),
                  with_cuda=bool(bound.get("cuda_sources")), with_sycl=False, is_standalone=False)
        fn(**{k: v for k, v in kw.items() if k in params})
        with open(kw["path"]) as fh:
            text = fh.read()
        cflags = next(ln.split("=", 1)[1].strip() for ln in text.splitlines() if ln.startswith("cflags ="))
        cxx = next(ln.split("=", 1)[1].strip() for ln in text.splitlines() if ln.startswith("cxx ="))
        shutil.rmtree(probe_dir, ignore_errors=True)
    except Exception as e:                      # private API changed: build without a precompiled header
        log(f"precompiled header skipped: {e}")
        return None
    flags = " ".join(f for f in cflags.split() if not f.startswith("-DTORCH_EXTENSION_NAME="))
    sig = hashlib.sha256(f"{cxx} {flags}".encode()).hexdigest()[:16]
    pdir = os.path.join(cache_dir, "pch", sig)
    header = os.path.join(pdir, "torch_ext.h")
    if os.path.exists(header + ".gch"):
        return header
    os.makedirs(pdir, exist_ok=True)
    with open(os.path.join(pdir, "lock"), "w") as lock:
        try:                                    # one builder per flag set; the others build without it meanwhile
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log("precompiled header being built by another compile: not used for this one")
            return None
        if not os.path.exists(header + ".gch"):
            with open(header, "w") as fh:
                fh.write("#include <torch/extension.h>\n")
            tmp = f"{header}.gch.tmp{os.getpid()}"
            cmd = f"{cxx} {flags} -x c++-header {header} -o {tmp}"
            t0 = time.monotonic()
            r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
            if r.returncode != 0:
                log(f"precompiled header build failed: {r.stderr[-500:]}")
                return None
            os.rename(tmp, header + ".gch")
            log(f"precompiled header built in {time.monotonic() - t0:.1f}s")
    return header


# ------------------------------------------------------------------------------------------------ light CUDA headers
# A KernelBench-style .cu includes torch/extension.h (load_inline adds torch/types.h): all of ATen's operator
# declarations, autograd, pybind11 and Python, parsed by cudafe++, cicc and the host g++ in turn (~110 CPU-s per .cu
# with nvcc 13 on the 2-core box); the kernels and their host wrapper need a small part of it. A light build
# replaces those includes with LIGHT_PRELUDE + the ATen/ops header of every operator name the source calls (~25 CPU-s
# for the same .cu). Why the result is the same program: `torch::` names resolve through `using namespace at` (as
# torch/types.h does) to the same ATen declarations -- Tensor and its methods (ATen/core/Tensor.h), operators
# (ATen/TensorOperators.h), dispatch macros, and for each called name X every overload of at::X (ATen/ops/X.h), so
# overload resolution sees what the full headers give it for that name. The full headers add torch:: factory
# wrappers (torch::empty etc. -> autograd variables) that differ from at:: only in requires_grad, plus Python
# bindings, nn, jit, optim: sources that mention those are not built light (_LIGHT_SKIP). A name the prelude lacks
# fails the light build, and the candidate is then built with its own headers (its log is the one reported).
# AT_PER_OPERATOR_HEADERS (defined first, as PyTorch's own build defines it): ATen headers that would otherwise pull
# in ATen/Functions.h -- every operator's declarations, ~1360 headers, e.g. through ATen/TensorOperators.h -- include
# only the ATen/ops headers they use. The declarations are the same either way; it only decides which headers come
# in. It took one light .cu from 38 to 24 CPU-s (nvcc 13, 2-core box: cudafe++ 14.9 -> 8.0 s, cicc 11.3 -> 7.9 s,
# host g++ 9.0 -> 6.1 s).
# Light include directory (light_include_dir, first on the .cu's include path): every generated ATen/ops/X.h (and
# ATen/TensorOperators.h through ATen/ops/empty_like.h) includes ATen/Context.h and ATen/DeviceGuard.h, which the
# operator's inline wrappers do not use -- the global context with every backend's hooks interface, ~1.9 MB of
# preprocessed text on top of ATen/core/Tensor.h's 4 MB. So do ATen/cuda/CUDAContext.h (which nearly every
# KernelBench kernel includes for getCurrentCUDAStream) and ATen/cuda/Exceptions.h. The directory holds copies of
# those headers without these two includes, same declarations otherwise, so the first header that needs them is
# never parsed: one KernelBench-style .cu 25.8 -> 15.1 CPU-s (idle 2-core box, nvcc 13). A source that names
# something they declare (at::globalContext, at::device_of, ..., _NEEDS_CONTEXT / _NEEDS_DEVICE_GUARD) gets them
# back through the prelude; any other use fails the light build, which falls back as above.
_HEAVY_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*[<"](?:torch/(?:extension|torch|all|types)\.h|ATen/ATen\.h)'
                            r'[>"][^\n]*$', re.M)
_LIGHT_SKIP = re.compile(r'py::|pybind|PYBIND11|Python\.h|requires_grad|'
                         r'\btorch\s*::\s*(?:nn|autograd|jit|optim|data|serialize)\b|\btorch\s*::\s*tensor\s*\(')
_CALLED = re.compile(r'\b([A-Za-z_]\w*)\s*\(')
_QUALIFIED = re.compile(r'\b(?:torch|at)\s*::\s*([A-Za-z_]\w*)')
_DTYPES = ("kUInt8 = at::kByte", "kInt8 = at::kChar", "kInt16 = at::kShort", "kInt32 = at::kInt",
           "kInt64 = at::kLong", "kUInt16 = at::kUInt16", "kUInt32 = at::kUInt32", "kUInt64 = at::kUInt64",
           "kFloat16 = at::kHalf", "kFloat32 = at::kFloat", "kFloat64 = at::kDouble", "kU8 = kUInt8",
           "kU16 = kUInt16", "kU32 = kUInt32", "kU64 = kUInt64", "kI8 = kInt8", "kI16 = kInt16", "kI32 = kInt32",
           "kI64 = kInt64", "kF16 = kFloat16", "kF32 = kFloat32", "kF64 = kFloat64")
LIGHT_PRELUDE = "\n".join([
    "// light prelude (kernel_eval.build): in place of torch/extension.h and torch/types.h",
    "#ifndef AT_PER_OPERATOR_HEADERS", "#define AT_PER_OPERATOR_HEADERS", "#endif",
    "#include <cuda.h>", "#include <cuda_runtime.h>", "#include <ATen/core/Tensor.h>",
    "#include <ATen/TensorOperators.h>", "#include <ATen/Dispatch.h>", "#include <optional>", "{ops}",
    "namespace torch {", "using namespace at; // NOLINT", "using std::nullopt; using std::optional;",
    "using Dtype = at::ScalarType;"] + [f"constexpr auto {d};" for d in _DTYPES] + ["}  // namespace torch", ""])


@functools.lru_cache(maxsize=1)
def _ops_dirs() -> tuple:
    import torch.utils.cpp_extension as cpp_ext
    return tuple(os.path.join(d, "ATen", "ops") for d in cpp_ext.include_paths()
                 if os.path.isdir(os.path.join(d, "ATen", "ops")))


# Names declared by the two headers the light include directory leaves out (see above); a source naming one gets the
# header back in its prelude. Over-matching costs only parse time.
_NEEDS_CONTEXT = re.compile(
    r'\b(?:globalContext|Context|getCPUAllocator|DeprecatedTypeProperties|getDeprecatedTypeProperties|getNumGPUs|'
    r'has(?:CUDA|MTIA|HIP|IPU|XLA|MPS|MAIA|XPU|HPU|OpenMP|MKL|KleidiAI|LAPACK|EigenSparse|MAGMA|MKLDNN|CuDNN|'
    r'CuSOLVER|CuBLASLt|ROCM)|manual_seed|NoTF32Guard|ROCmBackwardPassGuard|getNVRTC|AT_CUDA_DRIVER_CHECK|'
    r'AT_CUDA_NVRTC_CHECK|CPUGeneratorImpl|getDefaultCPUGenerator|get\w*Hooks|(?:CPU|CUDA|HIP|MPS)\s*\(|'
    r'type\s*\(\s*\))')
_NEEDS_DEVICE_GUARD = re.compile(r'\b(?:device_of|DeviceGuard|OptionalDeviceGuard)\b')
LIGHT_INCLUDE_FORMAT = 2    # bump when light_include_dir writes different headers
_LEFT_OUT = re.compile(r'^[ \t]*#[ \t]*include[ \t]*<ATen/(?:Context|DeviceGuard)\.h>[^\n]*\n', re.M)


def light_cuda_sources(cuda_sources: list, ops_dirs: Optional[tuple] = None) -> Optional[list]:
    """The cuda sources of a light build (see above), or None when the source must be built with its own headers.
    Included torch/ATen umbrella headers become empty lines (line numbers kept); the prelude comes first."""
    return _with_prelude(cuda_sources, LIGHT_PRELUDE, _LIGHT_SKIP, ops_dirs)


def _with_prelude(sources: list, template: str, skip: re.Pattern, ops_dirs: Optional[tuple]) -> Optional[list]:
    """[template with the headers of the called operators (and of the global context / device guard when named)]
    + the sources with torch/ATen umbrella includes blanked; None when `skip` matches."""
    text = "\n".join(sources)
    if skip.search(text):
        return None
    dirs = _ops_dirs() if ops_dirs is None else ops_dirs
    names = sorted(set(_CALLED.findall(text)) | set(_QUALIFIED.findall(text)))
    ops = [n for n in names if any(os.path.isfile(os.path.join(d, n + ".h")) for d in dirs)]
    extra = (["ATen/Context.h"] if _NEEDS_CONTEXT.search(text) else []) + \
            (["ATen/DeviceGuard.h"] if _NEEDS_DEVICE_GUARD.search(text) else [])
    prelude = template.replace("{ops}", "\n".join(f"#include <{h}>" for h in extra + [f"ATen/ops/{n}.h" for n in ops]))
    return [prelude] + [_HEAVY_INCLUDE.sub("", src) for src in sources]


def _light_headers_to_copy() -> list:
    """[(path relative to the include root, its text without the left-out includes)] for light_include_dir."""
    out = []
    for ops in _ops_dirs():
        root = os.path.dirname(os.path.dirname(ops))
        listing = set(os.listdir(ops))
        for f in sorted(listing):
            if not f.endswith(".h") or f[:-2] + "_ops.h" not in listing:     # X.h beside X_ops.h: at::X itself
                continue
            with open(os.path.join(ops, f)) as fh:
                text = fh.read()
            if "from Function.h" in text[:2000]:            # the at::X wrappers torchgen writes from Function.h
                if "ITensorListRef" in text or "IListRef" in text:      # at::cat: DeviceGuard.h brought it in
                    text = text.replace("#include <ATen/DeviceGuard.h>", "#include <ATen/core/IListRef.h>")
                out.append((os.path.join("ATen", "ops", f), _LEFT_OUT.sub("", text)))
        for rel in (("ATen", "cuda", "CUDAContext.h"), ("ATen", "cuda", "Exceptions.h")):
            path = os.path.join(root, *rel)
            if os.path.isfile(path):
                with open(path) as fh:
                    out.append((os.path.join(*rel), _LEFT_OUT.sub("", fh.read())))
        if out:
            return out
    return out


def light_include_dir(cache_dir: str) -> Optional[str]:
    """The light include directory for this torch install (see above), written once into the build cache (atomic
    rename; concurrent writers keep the first), or None when torch's headers have no per-operator layout."""
    import torch
    import torch.utils.cpp_extension as cpp_ext
    tag = hashlib.sha256(json.dumps([LIGHT_INCLUDE_FORMAT, torch.__version__, cpp_ext.include_paths()])
                         .encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, "light-include", tag)
    if os.path.isfile(os.path.join(path, ".complete")):
        return path
    tmp = None
    try:
        files = _light_headers_to_copy()
        if not files:
            return None
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f"{tag}.tmp-", dir=os.path.dirname(path))
        for rel, text in files:
            os.makedirs(os.path.join(tmp, os.path.dirname(rel)), exist_ok=True)
            with open(os.path.join(tmp, rel), "w") as fh:
                fh.write(text)
        open(os.path.join(tmp, ".complete"), "w").close()
        os.rename(tmp, path)
    except (OSError, UnicodeDecodeError):     # published first by another process, or an unwritable cache: the
        if tmp:                               # light build then uses torch's own headers
            shutil.rmtree(tmp, ignore_errors=True)
    return path if os.path.isfile(os.path.join(path, ".complete")) else None


def _as_list(v: Any) -> list:
    return [v] if isinstance(v, str) else list(v or [])


_HOST_SKIP = re.compile(r'requires_grad|\btorch\s*::\s*(?:nn|autograd|jit|optim|data|serialize)\b|'
                        r'\btorch\s*::\s*tensor\s*\(')
LIGHT_HOST_PRELUDE = "\n".join([
    "// light host prelude (kernel_eval.build): in place of torch/extension.h",
    "#ifndef AT_PER_OPERATOR_HEADERS", "#define AT_PER_OPERATOR_HEADERS", "#endif",
    "#include <ATen/core/Tensor.h>", "#include <ATen/TensorOperators.h>", "#include <ATen/Dispatch.h>",
    "#include <ATen/Parallel.h>", "#include <optional>", "{ops}",
    "#include <torch/csrc/utils/pybind.h>", "#include <torch/csrc/Exceptions.h>",
    "namespace torch {", "using namespace at; // NOLINT", "using std::nullopt; using std::optional;",
    "using Dtype = at::ScalarType;"] + [f"constexpr auto {d};" for d in _DTYPES] + ["}  // namespace torch", ""])


def light_host_sources(cpp_sources: list, ops_dirs: Optional[tuple] = None) -> Optional[list]:
    """The cpp sources (main.cpp) of a light host build, or None when they must be built with torch/extension.h.
    What main.cpp needs from torch/extension.h: the declarations of the candidate's functions (ATen's Tensor, its
    operators, the ATen/ops header of every operator name the source calls -- a C++-backend candidate's whole
    implementation is here), pybind11 with torch's type casters (torch/csrc/utils/pybind.h: the one header of
    torch/extension.h that specializes pybind11's type_caster, so every argument converts as in the full build)
    and torch::wrap_pybind_function (torch/csrc/Exceptions.h). Left out: torch/all.h (autograd, nn, jit, optim,
    data, serialize: sources naming those keep the full header) and the rest of torch/python.h (nn module
    bindings). Umbrella includes become empty lines; the prelude comes first."""
    return _with_prelude(cpp_sources, LIGHT_HOST_PRELUDE, _HOST_SKIP, ops_dirs)


def light_call(call: dict, include_dir: Optional[str] = None, cuda: bool = True, host: bool = False
               ) -> Optional[dict]:
    """load_inline arguments of the light build of `call`, or None; see _light_call."""
    light = _light_call(call, include_dir, cuda, host)
    return light[1] if light else None


def _light_call(call: dict, include_dir: Optional[str], cuda: bool, host: bool) -> Optional[tuple]:
    """load_inline arguments of the light build of `call`, or None (nothing to make light, the candidate controls
    its implicit headers itself, or the pre-filters). `cuda`: the .cu against LIGHT_PRELUDE; `host`: main.cpp
    against LIGHT_HOST_PRELUDE. A part that stays as written gets exactly the text load_inline would give it (the
    same include in front of cpp_sources), so a full main.cpp is byte-identical to the normal build's and the
    precompiled header and the host-object cache still apply to it. `include_dir` (light_include_dir) goes first on
    the include path of each light part. Returns (light parts: a list of "cuda" and "host", the arguments)."""
    if call.get("no_implicit_headers"):
        return None
    cu = _as_list(call.get("cuda_sources"))
    cpp = _as_list(call.get("cpp_sources"))
    light_cu = light_cuda_sources(cu) if cuda and cu else None
    light_cpp = light_host_sources(cpp) if host else None
    if light_cu is None and light_cpp is None:
        return None
    inc = [f"-I{shlex.quote(include_dir)}"] if include_dir else []
    parts = [p for p, v in (("cuda", light_cu), ("host", light_cpp)) if v is not None]
    out = dict(call, no_implicit_headers=True)
    if cu:
        out.update(cuda_sources=light_cu if light_cu is not None else
                   ["#include <torch/types.h>", "#include <cuda.h>", "#include <cuda_runtime.h>"] + cu,
                   extra_cuda_cflags=(inc if light_cu is not None else []) + _as_list(call.get("extra_cuda_cflags")))
    if light_cpp is not None:
        out.update(cpp_sources=light_cpp, extra_cflags=inc + _as_list(call.get("extra_cflags")))
    else:
        out.update(cpp_sources=["#include <torch/extension.h>"] + cpp)
    return parts, out


def _failed_parts(err: str) -> set:
    """Which parts of a failed build its log names: ninja prints 'FAILED: main.o' / 'FAILED: cuda.cuda.o', the
    compilers 'main.cpp:LINE' / 'cuda.cu(LINE)'. Empty when it names neither (a link error, say)."""
    parts = set()
    if re.search(r"FAILED:\s*\S*\bmain\.o\b", err) or re.search(r"\bmain\.cpp:\d+", err):
        parts.add("host")
    if re.search(r"FAILED:\s*\S*\bcuda\.cuda\.o\b", err) or re.search(r"\bcuda\.cu[(:]\d+", err):
        parts.add("cuda")
    return parts


def _ninja_edges(build_dir: str) -> Optional[list]:
    """[(output, rule, [inputs])] of the build.ninja torch wrote, or None when it has a shape we do not handle."""
    edges = []
    try:
        with open(os.path.join(build_dir, "build.ninja")) as fh:
            for line in fh:
                if not line.startswith("build "):
                    continue
                if "$" in line or "|" in line:          # escapes or implicit deps: leave the build to ninja
                    return None
                outs, _, rest = line[len("build "):].partition(":")
                parts = rest.split()
                if len(outs.split()) != 1 or not parts:
                    return None
                edges.append((outs.strip(), parts[0], parts[1:]))
    except OSError:
        return None
    return edges


def _ninja_command(build_dir: str, target: str) -> str:
    """The exact command ninja runs for `target` (its own expansion of the rule)."""
    r = subprocess.run(["ninja", "-t", "commands", target], cwd=build_dir, capture_output=True, text=True,
                       check=True)
    return r.stdout.strip().splitlines()[-1]


_COMPILER_IDS: dict = {}


def _compiler_id(cmd: str) -> str:
    exe = shlex.split(cmd)[0]
    if exe not in _COMPILER_IDS:
        r = subprocess.run([exe, "--version"], capture_output=True, text=True)
        _COMPILER_IDS[exe] = f"{shutil.which(exe)}\0{r.stdout}"
    return _COMPILER_IDS[exe]


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def object_key(build_dir: str, command: str, source: str) -> str:
    """Content hash of one C++ object: its compile command with the build directory left out, its source text and
    the compiler's identity. torch, python and BUILD_FORMAT are in it too (the headers come with torch)."""
    import torch
    with open(source, "rb") as fh:
        text = fh.read()
    payload = json.dumps([command.replace(build_dir, "<build>"), _compiler_id(command), torch.__version__,
                          sys.version_info[:2], BUILD_FORMAT]).encode()
    return hashlib.sha256(payload + b"\0" + text).hexdigest()[:32]


def _make_ninja_runner(orig_run: Callable, cache_dir: str, report: Callable[[dict], None],
                       log: Callable[[str], None]) -> Callable:
    """A replacement for torch's _run_ninja_build: C++ objects found in the host-object cache are copied in, ninja
    builds the other objects, and the link command runs as ninja would run it. New C++ objects are reported (key,
    path, sha256) for the parent to publish. Any build.ninja of another shape goes to torch's own runner."""
    def run(build_directory: str, verbose: bool, error_prefix: str) -> None:
        edges = _ninja_edges(build_directory)
        links = [e for e in (edges or []) if e[1] == "link"]
        objs = [e for e in (edges or []) if e[1] in ("compile", "cuda_compile")]
        if not edges or len(links) != 1 or not objs or len(edges) != len(objs) + 1:
            return orig_run(build_directory, verbose, error_prefix)
        hits, misses = [], []
        for out, rule, ins in objs:
            if rule != "compile" or len(ins) != 1:
                continue
            key = object_key(build_directory, _ninja_command(build_directory, out), ins[0])
            cached = os.path.join(cache_dir, "objects", key + ".o")
            if os.path.isfile(cached):
                shutil.copyfile(cached, os.path.join(build_directory, out))
                hits.append(out)
            else:
                misses.append((out, key))
        try:
            if not hits:
                orig_run(build_directory, verbose, error_prefix)
                return
            log(f"host objects from the cache: {', '.join(hits)}")
            rest = [out for out, _, _ in objs if out not in hits]
            jobs = cpp_ext_workers(verbose)
            steps = [["ninja", "-v"] + (["-j", str(jobs)] if jobs else []) + rest] if rest else []
            steps.append(_ninja_command(build_directory, links[0][0]))
            for cmd in steps:
                r = subprocess.run(cmd, shell=isinstance(cmd, str), cwd=build_directory, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
                if r.returncode != 0:
                    raise RuntimeError(f"{error_prefix}: {r.stdout}")
        finally:
            for out, key in misses:
                path = os.path.join(build_directory, out)
                if os.path.isfile(path):
                    report({"type": "object", "key": key, "path": path, "sha256": _sha256_file(path)})
    return run


def cpp_ext_workers(verbose: bool) -> Optional[int]:
    """ninja -j as torch sets it (MAX_JOBS), or None (ninja's default)."""
    import torch.utils.cpp_extension as cpp_ext
    try:
        return cpp_ext._get_num_workers(verbose)
    except Exception:
        jobs = os.environ.get("MAX_JOBS", "")
        return int(jobs) if jobs.isdigit() else None


PUBLISH_WAIT_S = 10.0        # after the first builder's process ended: how long its parent may take to publish
_BUILD_LOCKS: list = []      # lock files of the extensions this compile process builds, held until it exits


def claim_build(cache_dir: str, key: str, max_wait_s: float) -> float:
    """Become the one builder of extension `key` (see the module docstring), waiting for a concurrent builder first.
    Seconds waited (0.0: nobody else was building it). Without a writable cache directory there is no claim."""
    try:
        d = os.path.join(cache_dir, "building")
        os.makedirs(d, exist_ok=True)
        fh = open(os.path.join(d, key + ".lock"), "a")
    except OSError:
        return 0.0
    t0 = time.monotonic()
    contended = False
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            contended = True
            if time.monotonic() - t0 > max_wait_s:      # build it ourselves, side by side
                fh.close()
                return time.monotonic() - t0
            time.sleep(0.05)
    _BUILD_LOCKS.append(fh)
    if not contended:
        return 0.0                                      # nobody else was building it
    deadline = time.monotonic() + PUBLISH_WAIT_S        # the builder ended: its parent publishes right after
    while not os.path.isdir(os.path.join(cache_dir, key)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return time.monotonic() - t0


def patch_for_compile(cache_dir: str, out_dir: str, use_pch: bool, report: Callable[[dict], None],
                      object_cache: bool = False, light_headers: bool = False, dedupe_wait_s: float = 0.0,
                      light_host: bool = False) -> None:
    """Make load_inline build-only (see module docstring). `report` receives one dict per call (and one per newly
    built host object when `object_cache`). `light_headers`: the .cu of a CUDA build first against the light
    prelude; `light_host`: main.cpp first against the light host prelude (see light_host_sources)."""
    import torch
    import torch.utils.cpp_extension as cpp_ext
    orig = cpp_ext.load_inline

    class _Stub:                                # what the candidate's module gets instead of the real extension
        def __getattr__(self, item: str) -> Callable:
            def missing(*a: Any, **k: Any) -> None:
                raise RuntimeError("extension functions cannot be called while compiling")
            return missing

    def load_inline(*args: Any, **kwargs: Any) -> Any:
        bound = _bind(orig, args, kwargs)
        key = extension_key(bound, torch.__version__)
        if os.path.isdir(os.path.join(cache_dir, key)):
            report({"type": "built", "key": key, "cached": True})
            return _Stub()
        waited = claim_build(cache_dir, key, dedupe_wait_s) if dedupe_wait_s > 0 else 0.0
        if os.path.isdir(os.path.join(cache_dir, key)):        # built by the compile we waited for
            report({"type": "built", "key": key, "cached": True, "waited_s": waited})
            return _Stub()
        build_dir = os.path.join(out_dir, key)
        os.makedirs(build_dir, exist_ok=True)
        call = dict(bound, build_directory=build_dir, verbose=False)
        logs: list[str] = []

        def with_pch(kw: dict, parts: list) -> dict:   # the precompiled header: for main.cpp with torch/extension.h
            if not (use_pch and cpp_ext.IS_LINUX) or "host" in parts:
                return kw
            header = _pch_include(cpp_ext, bound, cache_dir, logs.append)
            if not header:
                return kw
            return dict(kw, extra_cflags=[f"-include {shlex.quote(header)}", "-Winvalid-pch"]
                        + _as_list(kw.get("extra_cflags")))

        real_import, real_ninja = cpp_ext._import_module_from_library, cpp_ext._run_ninja_build
        cpp_ext._import_module_from_library = lambda *a, **k: None      # stop at the .so: do not load it here
        if object_cache:
            cpp_ext._run_ninja_build = _make_ninja_runner(real_ninja, cache_dir, report, logs.append)
        t0 = time.monotonic()
        include_dir = light_include_dir(cache_dir) if (light_headers or light_host) else None
        parts = ([p for p, on in (("cuda", light_headers), ("host", light_host)) if on]
                 if call.get("cuda_sources") else (["host"] if light_host else []))
        used: list = []
        fallback = False
        try:
            while True:        # light parts first; a light part that fails is built as written, the rest stays
                light = _light_call(call, include_dir, "cuda" in parts, "host" in parts) if parts else None
                parts, kw = light if light else ([], call)
                try:
                    orig(**with_pch(kw, parts))
                    used = parts
                    break
                except Exception as e:      # e.g. a name only the full headers declare
                    failed = _failed_parts(str(e))
                    if not parts or (failed and not failed & set(parts)):
                        raise                           # a part built as written failed: the candidate's own error
                    fallback = True
                    lines = str(e).strip().splitlines()
                    gone = (failed & set(parts)) or set(parts)      # unknown part: every light part goes
                    parts = [p for p in parts if p not in gone]
                    logs.append("light headers failed (%s) after %.1fs, building %s with the candidate's own "
                                "headers (%s)" % (" + ".join(sorted(gone)), time.monotonic() - t0,
                                                  " and ".join("main.cpp" if p == "host" else "the .cu"
                                                               for p in sorted(gone)),
                                                  lines[-1][:200] if lines else type(e).__name__))
        except Exception as e:
            report({"type": "compile_error", "key": key, "log": "\n".join(logs + [str(e)])[-20000:],
                    "light_fallback": fallback})
            raise
        finally:
            cpp_ext._import_module_from_library, cpp_ext._run_ninja_build = real_import, real_ninja
        sos = [f for f in os.listdir(build_dir) if f.endswith(".so")]
        report({"type": "built", "key": key, "cached": False, "so": sos[0] if sos else None,
                "sha256": _sha256_file(os.path.join(build_dir, sos[0])) if sos else None,
                "seconds": time.monotonic() - t0, "log": "\n".join(logs), "light": "cuda" in used,
                "light_parts": used, "light_fallback": fallback})
        return _Stub()

    cpp_ext.load_inline = load_inline


def patch_for_run(ext_dir: str) -> None:
    """Make load_inline import the prebuilt .so of the same key from `ext_dir/<key>/`; never compile."""
    import importlib.util
    import torch
    import torch.utils.cpp_extension as cpp_ext
    orig = cpp_ext.load_inline

    def load_inline(*args: Any, **kwargs: Any) -> Any:
        bound = _bind(orig, args, kwargs)
        key = extension_key(bound, torch.__version__)
        kdir = os.path.join(ext_dir, key)
        sos = sorted(f for f in os.listdir(kdir) if f.endswith(".so")) if os.path.isdir(kdir) else []
        if not sos:
            raise RuntimeError(f"extension '{bound.get('name')}' was not built by the compile step "
                               "(load_inline arguments differ between import and compile)")
        name = sos[0][:-3]
        spec = importlib.util.spec_from_file_location(name, os.path.join(kdir, sos[0]))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    cpp_ext.load_inline = load_inline


# --------------------------------------------------------------------------------------------------- in the parent
@dataclass
class BuildResult:
    ok: bool
    reason: Optional[str] = None              # "compile_error" | "compile_timeout" | None
    log: str = ""                             # compiler output (errors), untrimmed; notes when it built
    keys: list = field(default_factory=list)  # [(key, so_name)] of every load_inline call
    compile_s: float = 0.0
    cache_hit: bool = False                   # no compile process was needed
    cpu_s: float = 0.0                        # CPU seconds of the compile process and its compilers
    objects_published: int = 0                # new host objects added to the host-object cache
    light_builds: int = 0                     # extensions whose .cu was built against the light prelude
    light_host_builds: int = 0                # extensions whose main.cpp was built against the light host prelude
    light_fallbacks: int = 0                  # extensions with a light part that failed (then built as written)
    waited_builds: int = 0                    # extensions taken from a concurrent compile of the same key
    waited_s: float = 0.0                     # seconds spent waiting for such compiles
    nice: int = 0                             # the compile process's nice level (evaluator.compile_priority)


def _atomic_publish(src: str, final: str, sha256: Optional[str], stage_dir: str) -> bool:
    """Copy `src` to `final` atomically if its content hash still is `sha256` (what the patched load_inline saw
    right after building it; candidate code ran after that); a concurrent publisher that won the race is kept."""
    if os.path.exists(final):
        return True
    if sha256 is not None and (not os.path.isfile(src) or _sha256_file(src) != sha256):
        return False
    fd, tmp = tempfile.mkstemp(prefix=".pub-", dir=stage_dir)
    os.close(fd)
    shutil.copyfile(src, tmp)
    if sha256 is not None and _sha256_file(tmp) != sha256:
        os.unlink(tmp)
        return False
    os.replace(tmp, final)                     # same key, same content: a concurrent replace is harmless
    return True


def _publish(out_dir: str, key: str, so: str, cache_dir: str, sha256: Optional[str] = None) -> None:
    """Move one built .so into the cache atomically; a concurrent builder that won the race is kept."""
    final = os.path.join(cache_dir, key)
    if os.path.isdir(final):
        return
    src = os.path.join(out_dir, key, so)
    if sha256 is not None and (not os.path.isfile(src) or _sha256_file(src) != sha256):
        return                                 # changed after it was built: not cached (the candidate still runs it)
    stage = tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir)
    shutil.copy2(src, os.path.join(stage, so))
    try:
        os.rename(stage, final)
    except OSError:                            # someone else published it first
        shutil.rmtree(stage, ignore_errors=True)


def _publish_objects(out: Any, out_dir: str, cache_dir: str) -> int:
    """Publish the host objects the compile process reported (paths under its own out_dir only)."""
    objects = os.path.join(cache_dir, "objects")
    root = os.path.realpath(out_dir) + os.sep
    n = 0
    for h, _ in out.frames:
        if h.get("type") != "object":
            continue
        key, path, digest = str(h.get("key", "")), os.path.realpath(str(h.get("path", ""))), h.get("sha256")
        if not (len(key) == 32 and key.isalnum() and path.startswith(root) and isinstance(digest, str)):
            continue
        os.makedirs(objects, exist_ok=True)
        n += _atomic_publish(path, os.path.join(objects, key + ".o"), digest, objects)
    return n


def _cached_keys(cache_dir: str, skey: str) -> Optional[list]:
    path = os.path.join(cache_dir, "sources", skey + ".json")
    try:
        with open(path) as fh:
            keys = json.load(fh)["keys"]
    except (OSError, ValueError, KeyError):
        return None
    return keys if all(os.path.isfile(os.path.join(cache_dir, k, so)) for k, so in keys) else None


def _so_of(cache_dir: str, key: str) -> Optional[str]:
    d = os.path.join(cache_dir, key)
    sos = [f for f in os.listdir(d) if f.endswith(".so")] if os.path.isdir(d) else []
    return sos[0] if sos else None


def compile_jobs(cfg: Any) -> int:
    """Compiler processes (ninja MAX_JOBS) per compile: cfg.compile_jobs (each compile worker reserves that many
    CPUs from Ray, so workers x jobs never exceeds the cores Ray gives the pool)."""
    return max(1, int(getattr(cfg, "compile_jobs", 1) or 1))


@functools.lru_cache(maxsize=None)
def _visible_arch_list() -> str:
    """This node's GPU architectures as torch's default picks them ("9.0+PTX" on an H100), from nvidia-smi (no
    CUDA initialization here); "" without GPUs or nvidia-smi."""
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return ""
    caps = sorted({c.strip() for c in r.stdout.splitlines() if re.fullmatch(r"\d+\.\d+", c.strip())},
                  key=lambda c: tuple(int(x) for x in c.split(".")))
    return ";".join(caps[:-1] + [caps[-1] + "+PTX"]) if r.returncode == 0 and caps else ""


def cuda_arch_list(cfg: Any) -> str:
    """TORCH_CUDA_ARCH_LIST for compile and run sandboxes of CUDA candidates (part of the extension key):
    cfg.cuda_arch_list, else this process's environment, else the node's GPUs (nvidia-smi), else "" (torch
    decides while compiling, as before)."""
    if getattr(cfg, "backend", "cpu") != "cuda":
        return ""
    return getattr(cfg, "cuda_arch_list", "") or os.environ.get("TORCH_CUDA_ARCH_LIST", "") or _visible_arch_list()


def build_env(cfg: Any) -> dict:
    """Environment the compile and run sandboxes share for building/loading extensions. CUDA: importing
    torch.utils.cpp_extension asks torch.cuda.is_available(), which by default initializes the CUDA driver (seconds
    on a node with 8 GPUs, serialized in the driver across the dozens of sandboxes that start at once, and useless
    in a compile sandbox); PYTORCH_NVML_BASED_CUDA_CHECK=1 answers it from NVML instead. Code that really uses the
    GPU still initializes CUDA as usual."""
    if getattr(cfg, "backend", "cpu") != "cuda":
        return {}
    arch = cuda_arch_list(cfg)
    return {"PYTORCH_NVML_BASED_CUDA_CHECK": "1", **({"TORCH_CUDA_ARCH_LIST": arch} if arch else {})}


class CompileTicket:
    """A compile's place in this node's queue of running compiles (files under <cache>/compiling/<host>/, one per
    running compile, named by start time; a ticket whose process died is ignored and removed). With
    evaluator.compile_priority=fifo a compile runs at nice min(19, ahead // 2), `ahead` being the compiles of this
    node that started before it and still run: under contention the older compiles get most of the cores and finish
    first, so results come back (and GPU runs start) one after another instead of all at the end of the burst,
    while the cores stay busy. Without a writable cache there is no ticket (nice 0)."""

    def __init__(self, cache_dir: str) -> None:
        self.path: Optional[str] = None
        self.ahead = 0
        d = os.path.join(cache_dir, "compiling", socket.gethostname())
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, name), "w"):
                pass
            self.path = os.path.join(d, name)
            for other in os.listdir(d):
                if other >= name:
                    continue
                try:
                    pid = int(other.split("-")[1])
                    os.kill(pid, 0)
                    self.ahead += 1
                except ProcessLookupError:
                    _unlink(os.path.join(d, other))           # its compile's process is gone
                except (ValueError, IndexError, PermissionError):
                    self.ahead += 1                            # another user's process, or a foreign name
        except OSError:
            self.path = None

    def nice(self, policy: str) -> int:
        return min(19, self.ahead // 2) if policy == "fifo" else 0

    def close(self) -> None:
        if self.path:
            _unlink(self.path)
            self.path = None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def compile_candidate(code: str, backend: str, cfg: Any, torch_version: str) -> BuildResult:
    """Compile every load_inline extension of `code` in a sandbox (or find them all in the cache)."""
    from kernel_eval.sandbox import SandboxLimits, acquire_sandbox
    cache_dir = default_cache_dir(cfg.cache_dir)
    skey = source_key(code, backend, torch_version)
    keys = _cached_keys(cache_dir, skey)
    if keys is not None:
        return BuildResult(ok=True, keys=keys, cache_hit=True)
    limits = SandboxLimits(wall_s=cfg.compile_timeout_s, memory_mb=cfg.memory_limit_mb, file_mb=4096, nproc=512,
                           isolate_network=cfg.isolate_network)
    jobs = str(compile_jobs(cfg))
    sb = acquire_sandbox(limits, threads=1, extra_env=dict(build_env(cfg), MAX_JOBS=jobs),
                         warm=getattr(cfg, "warm_sandboxes", 0), parent_dir=getattr(cfg, "work_dir", None))
    workdir = sb.workdir
    out_dir = os.path.join(workdir, "out")
    os.makedirs(out_dir)
    t0 = time.monotonic()
    ticket = CompileTicket(cache_dir)
    nice = ticket.nice(getattr(cfg, "compile_priority", "fair"))
    try:
        out = sb.run("compile", {"code": code, "backend": backend, "cache_dir": cache_dir, "out_dir": out_dir,
                                 "use_pch": cfg.precompiled_header,
                                 "object_cache": bool(getattr(cfg, "host_object_cache", False)),
                                 "light_headers": bool(getattr(cfg, "light_cuda_headers", False)),
                                 "light_host_headers": bool(getattr(cfg, "light_host_headers", False)),
                                 "dedupe_wait_s": 0.5 * cfg.compile_timeout_s, "nice": nice}, keep_workdir=True)
    finally:
        ticket.close()
    secs = time.monotonic() - t0
    cpu = out.cpu_s or 0.0
    try:
        published = _publish_objects(out, out_dir, cache_dir)
        fallbacks = sum(1 for h, _ in out.frames if h.get("light_fallback"))
        err = out.last("compile_error")
        if err is not None:
            return BuildResult(ok=False, nice=nice, reason="compile_error", log=err.get("log", ""), compile_s=secs,
                               cpu_s=cpu, light_fallbacks=fallbacks)
        if out.timed_out:
            return BuildResult(ok=False, nice=nice, reason="compile_timeout", compile_s=secs, cpu_s=cpu,
                               log=f"compilation did not finish within {cfg.compile_timeout_s:.0f}s")
        keys = []
        for h, _ in out.frames:
            if h.get("type") != "built":
                continue
            if not h.get("cached") and h.get("so"):
                _publish(out_dir, h["key"], h["so"], cache_dir, h.get("sha256"))
            so = _so_of(cache_dir, h["key"])
            if so is None:
                return BuildResult(ok=False, nice=nice, reason="compile_error", compile_s=secs, cpu_s=cpu,
                                   log=f"extension {h['key']} produced no shared library\n{out.stderr_tail}")
            keys.append([h["key"], so])
        if out.last("done") is None and not keys:
            imp = out.last("import_error")
            tail = (str(imp.get("message", "")) if imp else out.stderr_tail).strip().splitlines()[-15:]
            return BuildResult(ok=False, nice=nice, reason="compile_error", compile_s=secs, cpu_s=cpu,
                               log="the module failed while compiling:\n" + "\n".join(tail))
        if out.last("done") is not None:      # only a complete, successful import is cached by source
            os.makedirs(os.path.join(cache_dir, "sources"), exist_ok=True)
            tmp = os.path.join(cache_dir, "sources", f".{skey}.{os.getpid()}")
            with open(tmp, "w") as fh:
                json.dump({"keys": keys}, fh)
            os.replace(tmp, os.path.join(cache_dir, "sources", skey + ".json"))
        logs = [h.get("log") for h, _ in out.frames if h.get("type") == "built" and h.get("log")]
        waited = [h for h, _ in out.frames if h.get("type") == "built" and h.get("cached") and h.get("waited_s")]
        return BuildResult(ok=True, keys=keys, compile_s=secs, cpu_s=cpu, objects_published=published,
                           nice=nice, log="\n".join(logs), light_fallbacks=fallbacks, waited_builds=len(waited),
                           waited_s=sum(h["waited_s"] for h in waited),
                           light_builds=sum(1 for h, _ in out.frames if h.get("type") == "built" and h.get("light")),
                           light_host_builds=sum(1 for h, _ in out.frames if h.get("type") == "built"
                                                 and "host" in (h.get("light_parts") or ())))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def extension_payload(keys: list, cache_dir: Optional[str]) -> dict:
    """{key: (so_name, bytes)} of built extensions, to ship them to a runner on another node."""
    cache_dir = default_cache_dir(cache_dir)
    out = {}
    for key, so in keys:
        with open(os.path.join(cache_dir, key, so), "rb") as fh:
            out[key] = (so, fh.read())
    return out


def install_payload(payload: dict, dest_dir: str) -> None:
    """Write shipped extensions as `dest_dir/<key>/<so>` (a run's private copy)."""
    for key, (so, data) in payload.items():
        os.makedirs(os.path.join(dest_dir, key), exist_ok=True)
        with open(os.path.join(dest_dir, key, so), "wb") as fh:
            fh.write(data)


def stage_extensions(keys: list, cache_dir: Optional[str], dest_dir: str) -> None:
    """Copy the cache's extensions into a run's private directory (the run never sees the cache path)."""
    cache_dir = default_cache_dir(cache_dir)
    for key, so in keys:
        os.makedirs(os.path.join(dest_dir, key), exist_ok=True)
        shutil.copy2(os.path.join(cache_dir, key, so), os.path.join(dest_dir, key, so))
