"""EvaluatorPool: many candidate kernels in flight over CPU compile workers and sandbox runners.

    pool = start_evaluator_pool(cfg.evaluator, name="evaluator-pool")
    ref = pool.evaluate.remote(task, turn_sample_ref)          # -> ObjectRef[EvalResult]; never raises
    ray.get(pool.stats.remote(), timeout=30)

The pool (an async actor) parses and statically checks a response itself (pure AST work, no candidate code runs),
then hands the code to an idle CompileWorker (CPU; any node) and the built extensions, as bytes through the object
store, to an idle Runner (one candidate at a time: a GPU runner owns its GPU while it times). Workers spawn a fresh
sandbox process per candidate (kernel_eval.sandbox); they never import candidate code either. At most
`max_in_flight` candidates are admitted at once; the rest wait. A worker that dies (or is killed) mid-candidate is
replaced and that candidate comes back as EvalResult(reason="evaluator_error"). Metrics (ray.util.metrics):
evaluator_results{stage,reason}, evaluator_queue_depth, evaluator_in_flight, evaluator_kernels_per_minute.

    python -m pytest tests/test_evaluator_pool.py -q
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any, Optional

import ray

from kernel_eval.result import EvalResult

_GRACE_S = 60.0          # slack on top of the sandbox's own timeouts before a worker is presumed stuck


@ray.remote(num_cpus=1)
class CompileWorker:
    """Compiles candidates in sandboxes; returns the BuildResult and the built .so bytes (for remote runners)."""

    def __init__(self, cfg: Any, name: str) -> None:
        self.cfg, self.name = cfg, name

    def __repr__(self) -> str:
        return f"CompileWorker({self.name})"

    def compile(self, code: str) -> tuple:
        import torch
        from kernel_eval.build import compile_candidate, extension_payload
        build = compile_candidate(code, self.cfg.backend, self.cfg, torch.__version__)
        payload = extension_payload(build.keys, self.cfg.cache_dir) if build.ok else None
        return build, payload


@ray.remote
class Runner:
    """Runs one compiled candidate at a time in a fresh sandbox process (correctness, then timing)."""

    def __init__(self, cfg: Any, name: str) -> None:
        self.cfg, self.name = cfg, name

    def __repr__(self) -> str:
        return f"Runner({self.name})"

    def run(self, task: Any, code: str, keys: list, payload: dict, partial: EvalResult) -> EvalResult:
        from kernel_eval.evaluate import run_candidate
        return run_candidate(task, code, keys, self.cfg, partial, payload=payload)


@ray.remote
class EvaluatorPool:
    def __init__(self, cfg: Any, name: str = "evaluator-pool") -> None:
        from ray.util import metrics
        self.cfg, self.name = cfg, name
        self.generation = 0
        self.compilers = [self._new_compiler(i) for i in range(cfg.num_compile_workers)]
        self.runners = [self._new_runner(i) for i in range(cfg.num_runners)]
        self.idle_compilers: asyncio.Queue = asyncio.Queue()
        self.idle_runners: asyncio.Queue = asyncio.Queue()
        for i in range(len(self.compilers)):
            self.idle_compilers.put_nowait(i)
        for i in range(len(self.runners)):
            self.idle_runners.put_nowait(i)
        self.admission = asyncio.Semaphore(cfg.max_in_flight)
        self.waiting = self.in_flight = self.done = self.replaced = 0
        self.by_stage: Counter = Counter()
        self.by_reason: Counter = Counter()
        self.busy: dict = {}                     # runner index -> task name (for tests and the dashboard)
        self.started = time.monotonic()
        self.m_results = metrics.Counter("evaluator_results", "evaluated candidates", tag_keys=("stage", "reason"))
        self.m_queue = metrics.Gauge("evaluator_queue_depth", "candidates waiting for admission")
        self.m_flight = metrics.Gauge("evaluator_in_flight", "candidates admitted and not finished")
        self.m_rate = metrics.Gauge("evaluator_kernels_per_minute", "finished candidates per minute since start")

    def __repr__(self) -> str:
        return f"EvaluatorPool({self.name}, {len(self.compilers)} compilers, {len(self.runners)} runners)"

    def _new_compiler(self, i: int) -> Any:
        self.generation += 1
        from kernel_eval.build import compile_jobs           # each worker reserves the cores its compiler jobs use
        cpus = float(getattr(self.cfg, "compile_worker_cpus", 0.0) or 0.0) or compile_jobs(self.cfg)  # or fewer
        return CompileWorker.options(name=f"{self.name}-compile-{i}-g{self.generation}",
                                     num_cpus=cpus).remote(self.cfg, f"{self.name}-compile-{i}")

    def _new_runner(self, i: int) -> Any:
        self.generation += 1
        opts: dict = {"name": f"{self.name}-runner-{i}-g{self.generation}", "num_cpus": 1}
        if self.cfg.gpus_per_runner > 0:
            opts["num_gpus"] = self.cfg.gpus_per_runner
        return Runner.options(**opts).remote(self.cfg, f"{self.name}-runner-{i}")

    async def evaluate(self, task: Any, candidate: Any, is_code: bool = False) -> EvalResult:
        """Evaluate one response (or raw code with is_code=True). Never raises."""
        self.waiting += 1
        self.m_queue.set(self.waiting)
        async with self.admission:
            self.waiting -= 1
            self.in_flight += 1
            self.m_queue.set(self.waiting)
            self.m_flight.set(self.in_flight)
            try:
                res = await self._evaluate(task, candidate, is_code)
            except Exception as e:                        # our bug: report it, never fail the caller
                res = _error_result(task, self.cfg, f"{type(e).__name__}: {e}")
            finally:
                self.in_flight -= 1
                self.m_flight.set(self.in_flight)
        self._count(res)
        return res

    async def _evaluate(self, task: Any, candidate: Any, is_code: bool) -> EvalResult:
        from kernel_eval.evaluate import _finish, _static, apply_static
        text = candidate if isinstance(candidate, str) else getattr(candidate, "text", "")
        res = EvalResult(task=task.name, backend=self.cfg.backend, size_profile=getattr(task, "size_profile", ""),
                         stage="format")
        code: Optional[str] = text
        if not is_code:
            from kernel_eval.parse import parse_response
            parsed = parse_response(text)
            code = parsed.code
            if code is None:
                res.reason = "format"
                return _finish(res, parsed.error or "no code block found")
        res.stage = "static"
        if apply_static(res, _static(code, task, self.cfg.backend), self.cfg):
            return res
        res.stage = "compile"
        out = await self._on_worker("compile", lambda w: w.compile.remote(code),
                                    self.cfg.compile_timeout_s + _GRACE_S, task)
        if isinstance(out, EvalResult):
            return out
        build, payload = out
        res.compile_s, res.cache_hit = build.compile_s, build.cache_hit
        if not build.ok:
            from kernel_eval.feedback import trim_log
            res.reason = build.reason
            return _finish(res, trim_log(build.log))
        out = await self._on_worker("run", lambda w: w.run.remote(task, code, build.keys, payload, res),
                                    self.cfg.run_timeout_s + _GRACE_S, task)
        return out

    async def _on_worker(self, kind: str, call: Any, timeout_s: float, task: Any) -> Any:
        """Take an idle worker of `kind`, run `call(worker)` on it with a timeout; a dead or stuck worker is
        replaced and the candidate reported as an evaluator_error."""
        idle = self.idle_compilers if kind == "compile" else self.idle_runners
        workers = self.compilers if kind == "compile" else self.runners
        i = await idle.get()
        if kind == "run":
            self.busy[i] = task.name
        try:
            return await asyncio.wait_for(call(workers[i]), timeout=timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, asyncio.TimeoutError) as e:
            try:
                ray.kill(workers[i], no_restart=True)
            except Exception:
                pass
            workers[i] = self._new_compiler(i) if kind == "compile" else self._new_runner(i)
            self.replaced += 1
            return _error_result(task, self.cfg, f"the {kind} worker died or hung ({type(e).__name__}); "
                                                 "it was replaced", stage="compile" if kind == "compile" else "run")
        finally:
            self.busy.pop(i, None)
            idle.put_nowait(i)

    def _count(self, res: EvalResult) -> None:
        self.done += 1
        self.by_stage[res.stage] += 1
        self.by_reason[res.reason or "ok"] += 1
        self.m_results.inc(tags={"stage": res.stage, "reason": res.reason or "ok"})
        self.m_rate.set(self.done / max(1e-9, (time.monotonic() - self.started) / 60.0))

    def stats(self) -> dict:
        minutes = max(1e-9, (time.monotonic() - self.started) / 60.0)
        return {"queue_depth": self.waiting, "in_flight": self.in_flight, "done": self.done,
                "replaced_workers": self.replaced, "per_stage": dict(self.by_stage),
                "per_reason": dict(self.by_reason), "kernels_per_minute": self.done / minutes,
                "busy_runners": dict(self.busy)}

    def runner_handles(self) -> list:
        """The current runner actors (for fault-injection tests)."""
        return list(self.runners)


def _error_result(task: Any, cfg: Any, detail: str, stage: str = "run") -> EvalResult:
    from kernel_eval.evaluate import _finish
    res = EvalResult(task=task.name, backend=cfg.backend, size_profile=getattr(task, "size_profile", ""),
                     stage=stage, reason="evaluator_error")
    return _finish(res, detail)


def start_evaluator_pool(cfg: Any, name: str = "evaluator-pool") -> Any:
    """Create (or return the existing) named pool actor."""
    try:
        return ray.get_actor(name)
    except ValueError:
        return EvaluatorPool.options(name=name, num_cpus=0, max_concurrency=max(16, cfg.max_in_flight * 2)).remote(
            cfg, name)
