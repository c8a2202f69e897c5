"""Evaluate one candidate kernel against one task: static checks -> sandboxed compile -> sandboxed run (correctness,
then timing) -> EvalResult with feedback. Never raises for a bad candidate.

    from kernel_eval.evaluate import evaluate_candidate
    result = evaluate_candidate(task, code, EvaluatorConfig())      # task: kernel_eval.tasks.Task

The parent (this module) never imports candidate code: it spawns kernel_eval.child in kernel_eval.sandbox, receives
the reference's outputs (native dtype and float64) and the candidate's outputs as raw tensor bytes, and compares them
here, so the expected values never exist where the candidate runs after it is imported. Seeds come from `secrets`.

Tolerance (per dtype: float32 1e-4, half 1e-2, bfloat16 2e-2): |cand - ref64| <= tol * max|ref64| + tol * |ref64|
+ |ref - ref64| elementwise, i.e. judged against the output's scale and the float64 reference, with the native
reference's own rounding error as slack, so an honest kernel that sums in another order is never rejected.

Reward gates after a correct, timed run (each leaves `rewarded` False, names the reason and is listed in `flags`):
- speedup above cfg.max_speedup -> "speedup_out_of_bounds".
- speed of light: the kernel's median time is below (input bytes + output bytes) / peak bandwidth / cfg.sol_margin
  (peak: cfg.peak_memory_gb_per_s, default 3350 GB/s on cuda = H100 SXM HBM3, off on cpu where the inputs stay in
  the CPU caches between timed calls) -> reason "speedup_out_of_bounds", flag "faster_than_hardware". Bytes, not
  the reference's FLOPs: a smarter algorithm may legitimately need far fewer FLOPs than the reference (diag(a) @ b),
  but every input must be read and every output written. Inputs that a task never needs in full make this bound
  loose only in the candidate's favour; writes absorbed by the L2 are covered by the margin (default 2).
- precision_downgrade (static flag: a float32 task and half/bfloat16/tf32/autocast in the candidate), per
  cfg.precision_downgrade: "no_reward" (default; KEVIN.md/EVALUATOR.md: flag it) evaluates and reports it, reason
  "precision_downgrade", no reward; "reward" judges it by the tolerance alone; "reject" stops it before compiling.

    python -m pytest tests/test_evaluator.py -q
"""
from __future__ import annotations

import os
import secrets
import shutil
import statistics
import time
from typing import Any, Optional

from kernel_eval.build import build_env, compile_candidate, install_payload, stage_extensions
from kernel_eval.feedback import make_feedback, trim_log
from kernel_eval.result import EvalResult

TOLERANCE = {"float32": 1e-4, "float64": 1e-7, "float16": 1e-2, "bfloat16": 2e-2}
DISTRIBUTIONS = ("task", "normal", "mixed")


def _torch_version() -> str:
    import torch
    return torch.__version__


def _tensor(header: dict, payload: Optional[bytes]) -> Any:
    import torch
    dtype = getattr(torch, header["dtype"])
    shape = [int(s) for s in header["shape"]]
    if not payload:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8).view(dtype).reshape(shape)


def compare_tensor(cand: Any, ref: Any, ref64: Any = None, what: str = "output") -> Optional[tuple[str, str]]:
    """(reason, detail) when `cand` does not match the reference, else None (see module docstring)."""
    import torch
    if cand.dtype != ref.dtype:
        return "wrong_dtype", f"{what}: dtype {cand.dtype} != expected {ref.dtype}"
    if tuple(cand.shape) != tuple(ref.shape):
        return "wrong_shape", f"{what}: shape {tuple(cand.shape)} != expected {tuple(ref.shape)}"
    if not (cand.is_floating_point() or cand.is_complex()):
        if torch.equal(cand, ref):
            return None
        bad = (cand != ref).nonzero()[0].tolist()
        return "mismatch", f"{what}: differs at index {bad} (expected {ref[tuple(bad)].item()}, got " \
                           f"{cand[tuple(bad)].item()})"
    c, r = cand.double(), ref.double()
    finite_c, finite_r = torch.isfinite(c), torch.isfinite(r)
    if not torch.equal(finite_c, finite_r):
        n = int((~finite_c & finite_r).sum())
        return "non_finite", f"{what}: {n} NaN/Inf values where the reference is finite"
    truth = ref64.double() if ref64 is not None and tuple(ref64.shape) == tuple(ref.shape) else r
    truth = torch.where(finite_r, truth, torch.zeros_like(truth))
    c, r = torch.where(finite_c, c, torch.zeros_like(c)), torch.where(finite_r, r, torch.zeros_like(r))
    if not c.numel():
        return None
    tol = TOLERANCE.get(str(ref.dtype).replace("torch.", ""), 1e-4)
    scale = float(truth.abs().max())
    err = (c - truth).abs()
    bound = tol * scale + tol * truth.abs() + (r - truth).abs()
    if bool((err <= bound).all()):
        return None
    idx = int((err - bound).argmax())
    pos = list(torch.unravel_index(torch.tensor(idx), c.shape)) if c.dim() else []
    pos = [int(p) for p in pos]
    return "mismatch", (f"{what}: max abs error {float(err.max()):.3g} (at {pos}: expected "
                        f"{float(truth.reshape(-1)[idx]):.6g}, got {float(c.reshape(-1)[idx]):.6g}); "
                        f"{int((err > bound).sum())} of {c.numel()} elements outside tolerance "
                        f"({tol:g} x output scale {scale:.3g} + {tol:g} relative)")


class RunJudge:
    """Receives the run child's frames, compares as they arrive, and answers 'time' or 'stop'."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.ref: dict = {}
        self.ref64: dict = {}
        self.ref_input: dict = {}
        self.seen_cand: dict = {}
        self.verdict: Optional[tuple[str, str]] = None
        self.error: Optional[dict] = None
        self.timing: Optional[dict] = None
        self.sizes: Optional[dict] = None
        self.correctness_done = False
        self.done = False
        self.phase_s: dict = {}

    def on_message(self, h: dict, payload: Optional[bytes]) -> Optional[dict]:
        kind = h.get("type")
        try:
            if kind == "ref":
                self.ref[(h["trial"], h["index"])] = (_tensor(h, payload), h.get("device"))
            elif kind == "ref64":
                self.ref64[(h["trial"], h["index"])] = _tensor(h, payload)
            elif kind == "ref_input":
                self.ref_input[(h["trial"], h["index"])] = _tensor(h, payload)
            elif kind == "cand" and self.verdict is None:
                self._judge_output(h, payload)
            elif kind == "cand_input" and self.verdict is None:
                ref = self.ref_input.get((h["trial"], h["index"]))
                bad = compare_tensor(_tensor(h, payload), ref, what=f"input {h['index']}") if ref is not None else \
                    ("input_modified", f"input {h['index']} was modified")
                if bad:
                    self.verdict = ("input_modified", bad[1])
            elif kind == "verdict" and self.verdict is None:
                self.verdict = (str(h.get("reason")), str(h.get("detail", "")))
            elif kind == "error":
                self.error = h
            elif kind == "timing":
                self.timing = h
                self.phase_s["timing"] = float(h.get("seconds") or 0.0)
            elif kind == "sizes" and self.sizes is None:       # sent before any candidate code is loaded
                self.sizes = {k: h.get(k) for k in ("input_bytes", "output_bytes", "flops")}
            elif kind == "done":
                self.done = True
            elif kind == "correctness_done":
                self.correctness_done = True
                self.phase_s.update({str(k): float(v) for k, v in (h.get("phase_s") or {}).items()
                                     if isinstance(v, (int, float))})
                self._check_counts()
                self.ref, self.ref64, self.ref_input = {}, {}, {}
                return {"cmd": "stop" if self.verdict else "time"}
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            if self.verdict is None:
                self.verdict = ("runtime_error", f"malformed result from the kernel's process: {e}")
        return None

    def _judge_output(self, h: dict, payload: Optional[bytes]) -> None:
        key = (h["trial"], h["index"])
        self.seen_cand[(h["trial"], h["rep"])] = self.seen_cand.get((h["trial"], h["rep"]), 0) + 1
        if key not in self.ref:
            self.verdict = ("wrong_output_type", f"the kernel returned more outputs than the reference")
            return
        ref, ref_device = self.ref[key]
        if h.get("device") != ref_device:
            self.verdict = ("wrong_device", f"output {h['index']} is on {h.get('device')}, expected {ref_device}")
            return
        run = "first" if h["rep"] == 0 else "second"
        self.verdict = compare_tensor(_tensor(h, payload), ref, self.ref64.get(key),
                                      what=f"trial {h['trial']} ({run} call), output {h['index']}")

    def _check_counts(self) -> None:
        if self.verdict:
            return
        want: dict = {}
        for trial, _ in self.ref:
            want[trial] = want.get(trial, 0) + 1
        for (trial, rep), n in self.seen_cand.items():
            if n != want.get(trial, 0):
                self.verdict = ("wrong_output_type", f"the kernel returned {n} outputs, the reference {want[trial]}")
                return
        if not self.seen_cand:
            self.verdict = ("wrong_output_type", "no outputs were received")


def _static(code: str, task: Any, backend: str) -> Optional[tuple[str, str]]:
    try:
        from kernel_eval.static_checks import check_candidate
    except ImportError:
        return None
    v = check_candidate(code, backend, getattr(task, "source", None))
    return None if v.ok else (v.reason or "static", v.detail)


def apply_static(res: EvalResult, bad: Optional[tuple[str, str]], cfg: Any) -> bool:
    """Record a static verdict on `res`; True when the candidate is rejected here. precision_downgrade follows
    cfg.precision_downgrade (module docstring); every other static reason rejects."""
    if not bad:
        return False
    if bad[0] == "precision_downgrade":
        policy = getattr(cfg, "precision_downgrade", "no_reward")
        if policy != "reject":
            res.flags.append("precision_downgrade")
            return False
    res.reason = bad[0]
    _finish(res, bad[1])
    return True


def _finish(res: EvalResult, detail: str = "") -> EvalResult:
    res.detail = detail or res.detail
    res.feedback = make_feedback(res.stage, res.reason, res.detail, res.speedup, res.flags)
    return res


def evaluate_candidate(task: Any, code: str, cfg: Any, static: bool = True) -> EvalResult:
    """Static checks, compile, run (see module docstring). Never raises for a bad candidate."""
    res = EvalResult(task=task.name, backend=cfg.backend, size_profile=getattr(task, "size_profile", ""),
                     stage="static")
    try:
        if static and apply_static(res, _static(code, task, cfg.backend), cfg):
            return res
        res.stage = "compile"
        build = compile_candidate(code, cfg.backend, cfg, _torch_version())
        res.compile_s, res.cache_hit = build.compile_s, build.cache_hit
        if not build.ok:
            res.reason = build.reason
            return _finish(res, trim_log(build.log))
        return run_candidate(task, code, build.keys, cfg, res)
    except Exception as e:                       # a bug of ours: say so, keep the training run going
        import traceback
        res.reason = "evaluator_error"
        return _finish(res, f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}")


def run_candidate(task: Any, code: str, keys: list, cfg: Any, res: EvalResult,
                  payload: Optional[dict] = None, device: Optional[str] = None) -> EvalResult:
    """The sandboxed run of an already compiled candidate. `payload` ({key: (so, bytes)}) when the build happened on
    another node; else the extensions are copied from the local cache."""
    from kernel_eval.sandbox import SandboxLimits, acquire_sandbox
    res.stage = "run"
    device = device or ("cuda:0" if cfg.backend == "cuda" else "cpu")
    limits = SandboxLimits(wall_s=cfg.run_timeout_s, memory_mb=None if device.startswith("cuda")
                           else cfg.memory_limit_mb, isolate_network=cfg.isolate_network)
    env = build_env(cfg)                                 # same arch -> same keys
    if device.startswith("cuda"):
        env["SANDBOX_RL_WARM_DEVICE"] = device           # a pre-spawned sandbox creates its CUDA context early
    sb = acquire_sandbox(limits, threads=cfg.cpu_threads, extra_env=env or None,
                         warm=getattr(cfg, "warm_sandboxes", 0), parent_dir=cfg.work_dir)
    ext_dir = os.path.join(sb.workdir, "ext")
    try:
        if payload is not None:
            install_payload(payload, ext_dir)
        else:
            stage_extensions(keys, cfg.cache_dir, ext_dir)
        n = cfg.correctness_trials
        request = {
            "task_source": task.source, "code": code, "device": device, "threads": cfg.cpu_threads,
            "ext_dir": ext_dir, "init_seed": secrets.randbits(31),
            "trials": [{"dist": DISTRIBUTIONS[i % len(DISTRIBUTIONS)], "seed": secrets.randbits(31)}
                       for i in range(n)],
            "timing": {"warmup": cfg.timing_warmup, "trials": cfg.timing_trials,
                       "input_sets": cfg.timing_input_sets},
        }
        judge = RunJudge(device)
        out = sb.run("run", request, on_message=judge.on_message)
        res.run_s = out.wall_s
        res.startup_s = out.startup_s or 0.0
        res.phase_s = {k: round(v, 4) for k, v in judge.phase_s.items()}
        return _judge_run(res, judge, out, cfg)
    finally:
        if not sb.used:
            sb.discard()
        shutil.rmtree(sb.workdir, ignore_errors=True)


def _judge_run(res: EvalResult, judge: RunJudge, out: Any, cfg: Any) -> EvalResult:
    if judge.correctness_done or judge.verdict:
        res.stage = "correctness"
    if judge.verdict:
        res.reason = judge.verdict[0]
        return _finish(res, judge.verdict[1])
    failure = _process_failure(judge, out, cfg)
    if failure:
        if judge.correctness_done:                 # correct, but timing failed: no reward
            res.stage, res.correct = "timing", True
        res.reason = failure[0]
        return _finish(res, failure[1])
    if not judge.correctness_done or judge.timing is None:
        res.reason = "timing_error" if judge.correctness_done else "evaluator_error"
        return _finish(res, "the run ended without results")
    res.correct, res.stage = True, "timing"
    ref_ms, ker_ms = judge.timing.get("ref_ms") or [], judge.timing.get("kernel_ms") or []
    if not ref_ms or not ker_ms or min(ker_ms) <= 0 or min(ref_ms) <= 0:
        res.reason = "timing_error"
        return _finish(res, "no valid timings")
    res.ref_ms, res.kernel_ms = statistics.median(ref_ms), statistics.median(ker_ms)
    res.ref_ms_iqr, res.kernel_ms_iqr = _iqr(ref_ms), _iqr(ker_ms)
    res.speedup = res.ref_ms / res.kernel_ms
    res.stage = "done"
    if res.speedup > cfg.max_speedup:
        res.flags.append("speedup_out_of_bounds")
        res.reason = "speedup_out_of_bounds"
        return _finish(res, f"measured speedup {res.speedup:.1f}x exceeds the bound {cfg.max_speedup:g}x; "
                            "held for review")
    sol = speed_of_light_ms(judge.sizes, cfg)
    if sol is not None and res.kernel_ms * cfg.sol_margin < sol:
        res.flags.append("faster_than_hardware")
        res.reason = "speedup_out_of_bounds"
        return _finish(res, f"measured {res.kernel_ms:.4g} ms, but moving the inputs and outputs "
                            f"({judge.sizes['input_bytes'] + judge.sizes['output_bytes']} bytes) takes at least "
                            f"{sol:.4g} ms at {_peak_gbps(cfg):g} GB/s; held for review")
    if "precision_downgrade" in res.flags and getattr(cfg, "precision_downgrade", "no_reward") == "no_reward":
        res.reason = "precision_downgrade"
        return _finish(res, "correct within tolerance, but it computes a float32 task in lower precision: "
                            "flagged, not rewarded")
    res.rewarded = True
    return _finish(res)


DEFAULT_PEAK_GB_PER_S = {"cuda": 3350.0, "cpu": 0.0}    # H100 SXM HBM3; CPU: gate off (module docstring)


def _peak_gbps(cfg: Any) -> float:
    return float(getattr(cfg, "peak_memory_gb_per_s", 0.0) or DEFAULT_PEAK_GB_PER_S.get(cfg.backend, 0.0))


def speed_of_light_ms(sizes: Optional[dict], cfg: Any) -> Optional[float]:
    """Lower bound on one call's time: reading the inputs and writing the outputs once at peak bandwidth (ms), or
    None when the gate is off or sizes are unknown."""
    peak = _peak_gbps(cfg)
    if not sizes or peak <= 0:
        return None
    nbytes = int(sizes.get("input_bytes", 0)) + int(sizes.get("output_bytes", 0))
    return nbytes / (peak * 1e9) * 1e3


def _iqr(xs: list) -> float:
    if len(xs) < 4:
        return 0.0
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


def _process_failure(judge: RunJudge, out: Any, cfg: Any) -> Optional[tuple[str, str]]:
    if judge.error:
        return str(judge.error.get("reason", "runtime_error")), str(judge.error.get("message", ""))
    if out.protocol_error:
        return "runtime_error", f"the kernel's process broke the evaluation protocol ({out.protocol_error})"
    if out.timed_out:
        return "timeout", f"no result within {cfg.run_timeout_s:.0f}s (killed)"
    sig = out.signal_name
    if sig == "SIGXCPU":
        return "timeout", "CPU time limit exceeded (killed)"
    if sig == "SIGKILL":
        return "crash", "killed by SIGKILL (possibly out of memory)\n" + out.stderr_tail[-800:]
    if sig:
        return "crash", f"the process died with {sig}\n" + out.stderr_tail[-800:]
    if not judge.done and not (judge.correctness_done and judge.timing):
        return "process_exit", f"the process exited (code {out.returncode}) before returning results\n" \
                               + out.stderr_tail[-800:]
    return None


def evaluate_response(task: Any, response_text: str, cfg: Any) -> EvalResult:
    """Parse a model response (final code block), then evaluate_candidate."""
    from kernel_eval.parse import parse_response
    parsed = parse_response(response_text)
    if parsed.code is None:
        res = EvalResult(task=task.name, backend=cfg.backend, size_profile=getattr(task, "size_profile", ""),
                         stage="format", reason="format")
        return _finish(res, parsed.error or "no code block found")
    return evaluate_candidate(task, parsed.code, cfg)
