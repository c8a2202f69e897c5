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

Compile time (one trivial C++ load_inline, 2-core CI box, torch 2.13 CPU; see benchmarks/README.md "Evaluator"):
  plain load_inline -O3: 28 s; -O2: 26 s; with a precompiled header of torch/extension.h injected through
  extra_cflags (`-include`, built once per flag set, ~36 s, ~0.8 GB): 13 s; cache hit: 0 s (no compile process).
  The remaining 13 s are the pybind11 bindings and the optimizer; nvcc builds (.cu) do not use the header.

    python -m pytest tests/test_evaluator.py -q -k cache
"""
from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

BUILD_FORMAT = 1            # bump when the key or the cache layout changes
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
    """Content hash of one load_inline call (its build inputs only, not build_directory or verbose)."""
    payload = {k: _norm(bound.get(k)) for k in _KEY_ARGS}
    payload.update(torch=torch_version, python=sys.version_info[:2], fmt=BUILD_FORMAT)
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
        fcntl.flock(lock, fcntl.LOCK_EX)        # one builder per flag set; the others wait, then reuse it
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


def patch_for_compile(cache_dir: str, out_dir: str, use_pch: bool, report: Callable[[dict], None]) -> None:
    """Make load_inline build-only (see module docstring). `report` receives one dict per call."""
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
        build_dir = os.path.join(out_dir, key)
        os.makedirs(build_dir, exist_ok=True)
        call = dict(bound, build_directory=build_dir, verbose=False)
        logs: list[str] = []
        if use_pch and cpp_ext.IS_LINUX:
            header = _pch_include(cpp_ext, bound, cache_dir, logs.append)
            if header:
                call["extra_cflags"] = [f"-include {shlex.quote(header)}", "-Winvalid-pch"] + list(bound.get("extra_cflags") or [])
        real_import = cpp_ext._import_module_from_library
        cpp_ext._import_module_from_library = lambda *a, **k: None      # stop at the .so: do not load it here
        t0 = time.monotonic()
        try:
            orig(**call)
        except Exception as e:
            report({"type": "compile_error", "key": key, "log": "\n".join(logs + [str(e)])[-20000:]})
            raise
        finally:
            cpp_ext._import_module_from_library = real_import
        sos = [f for f in os.listdir(build_dir) if f.endswith(".so")]
        report({"type": "built", "key": key, "cached": False, "so": sos[0] if sos else None,
                "seconds": time.monotonic() - t0, "log": "\n".join(logs)})
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
    log: str = ""                             # compiler output (errors), untrimmed
    keys: list = field(default_factory=list)  # [(key, so_name)] of every load_inline call
    compile_s: float = 0.0
    cache_hit: bool = False                   # no compile process was needed
    cpu_s: float = 0.0                        # CPU seconds of the compile process and its compilers


def _publish(out_dir: str, key: str, so: str, cache_dir: str) -> None:
    """Move one built .so into the cache atomically; a concurrent builder that won the race is kept."""
    final = os.path.join(cache_dir, key)
    if os.path.isdir(final):
        return
    stage = tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir)
    shutil.copy2(os.path.join(out_dir, key, so), os.path.join(stage, so))
    try:
        os.rename(stage, final)
    except OSError:                            # someone else published it first
        shutil.rmtree(stage, ignore_errors=True)


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
    jobs = str(max(1, cfg.compile_jobs))
    sb = acquire_sandbox(limits, threads=1, extra_env={"MAX_JOBS": jobs}, warm=getattr(cfg, "warm_sandboxes", 0),
                         parent_dir=getattr(cfg, "work_dir", None))
    workdir = sb.workdir
    out_dir = os.path.join(workdir, "out")
    os.makedirs(out_dir)
    t0 = time.monotonic()
    out = sb.run("compile", {"code": code, "backend": backend, "cache_dir": cache_dir, "out_dir": out_dir,
                             "use_pch": cfg.precompiled_header}, keep_workdir=True)
    secs = time.monotonic() - t0
    cpu = out.cpu_s or 0.0
    try:
        err = out.last("compile_error")
        if err is not None:
            return BuildResult(ok=False, reason="compile_error", log=err.get("log", ""), compile_s=secs, cpu_s=cpu)
        if out.timed_out:
            return BuildResult(ok=False, reason="compile_timeout", compile_s=secs, cpu_s=cpu,
                               log=f"compilation did not finish within {cfg.compile_timeout_s:.0f}s")
        keys = []
        for h, _ in out.frames:
            if h.get("type") != "built":
                continue
            if not h.get("cached") and h.get("so"):
                _publish(out_dir, h["key"], h["so"], cache_dir)
            so = _so_of(cache_dir, h["key"])
            if so is None:
                return BuildResult(ok=False, reason="compile_error", compile_s=secs, cpu_s=cpu,
                                   log=f"extension {h['key']} produced no shared library\n{out.stderr_tail}")
            keys.append([h["key"], so])
        if out.last("done") is None and not keys:
            tail = out.stderr_tail.strip().splitlines()[-15:]
            return BuildResult(ok=False, reason="compile_error", compile_s=secs, cpu_s=cpu,
                               log="the module failed while compiling:\n" + "\n".join(tail))
        if out.last("done") is not None:      # only a complete, successful import is cached by source
            os.makedirs(os.path.join(cache_dir, "sources"), exist_ok=True)
            tmp = os.path.join(cache_dir, "sources", f".{skey}.{os.getpid()}")
            with open(tmp, "w") as fh:
                json.dump({"keys": keys}, fh)
            os.replace(tmp, os.path.join(cache_dir, "sources", skey + ".json"))
        return BuildResult(ok=True, keys=keys, compile_s=secs, cpu_s=cpu)
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
