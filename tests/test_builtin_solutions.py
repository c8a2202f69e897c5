"""Every built-in task's known-good solutions are right.

Two layers:
- direct: import each C++ solution (real load_inline build), compare ModelNew with the reference Model on the task's own
  inputs and on "normal" and "mixed" inputs. Independent of the evaluator, so a broken solution is told apart from a
  broken evaluator.
- evaluator: `evaluate_candidate` must accept every C++ solution (cpu backend) and, on a GPU, every CUDA solution.

Building one extension costs ~25 s on 2 cores, so the default run covers a representative subset (DEFAULT_SUBSET:
an elementwise op, a row reduction, a level-2 GEMM fusion and a convolution fusion); `-m slow` covers all tasks.
Builds are shared through TORCH_EXTENSIONS_DIR (direct layer) and the evaluator's content-hash cache.

    python -m pytest tests/test_builtin_solutions.py -q            # subset
    python -m pytest tests/test_builtin_solutions.py -q -m slow    # every task
    python -m pytest tests/test_builtin_solutions.py -q -m gpu     # CUDA solutions, on a GPU machine
"""
from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
import sys
import types
from concurrent.futures import ProcessPoolExecutor

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kernel_eval.tasks import builtin_solution, builtin_task_names, get_task  # noqa: E402

DEFAULT_SUBSET = ["builtin/relu", "builtin/softmax", "builtin/linear_relu", "builtin/conv_relu_scale"]
ALL = builtin_task_names()
REST = [n for n in ALL if n not in DEFAULT_SUBSET]
EXT_DIR = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "sandbox-rl",
                                                                 "test-extensions")


def _module(name: str, source: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    exec(compile(source, f"<{name}>", "exec"), mod.__dict__)
    return mod


def _check_direct(task_name: str) -> dict:
    """Runs in a worker process: build the C++ solution, compare with the reference on three distributions."""
    os.environ["TORCH_EXTENSIONS_DIR"] = EXT_DIR
    import torch
    from kernel_eval.inputs import make_init_inputs, make_inputs
    torch.set_num_threads(1)
    task = get_task(task_name)
    ref_mod = _module("task_" + task_name.split("/")[-1], task.source)
    sol_mod = _module("sol_" + task_name.split("/")[-1], builtin_solution(task_name, "cpu"))
    worst = 0.0
    for i, dist in enumerate(("task", "normal", "mixed")):
        seed = 1000 + i
        init = make_init_inputs(ref_mod, seed)
        torch.manual_seed(seed)
        ref = ref_mod.Model(*init)
        torch.manual_seed(seed)
        new = sol_mod.ModelNew(*init)
        inputs = make_inputs(ref_mod, dist, seed)
        with torch.no_grad():
            got = new(*[t.clone() if isinstance(t, torch.Tensor) else t for t in inputs])
            want = ref(*inputs)
        if got.shape != want.shape or got.dtype != want.dtype:
            return {"task": task_name, "ok": False, "detail": f"{dist}: {got.shape}/{got.dtype} vs {want.shape}"}
        # error relative to the output's scale: mixed inputs span 1e-3..1e3 and sums reorder legitimately
        scale = want.abs().max().item() + 1e-6
        err = ((got - want).abs().max().item()) / scale
        worst = max(worst, err)
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * scale):
            return {"task": task_name, "ok": False, "detail": f"{dist}: max error {err:.3g} of the output scale"}
    return {"task": task_name, "ok": True, "detail": f"worst relative error {worst:.2g}"}


def _run_parallel(names: list[str]) -> list[dict]:
    workers = max(1, min(len(names), os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_check_direct, names))


def _assert_all_ok(results: list[dict]) -> None:
    bad = [r for r in results if not r["ok"]]
    assert not bad, bad


def test_cpu_solutions_match_reference_subset():
    _assert_all_ok(_run_parallel(DEFAULT_SUBSET))


@pytest.mark.slow
def test_cpu_solutions_match_reference_all():
    _assert_all_ok(_run_parallel(REST))


def _evaluate(names: list[str], backend: str) -> list:
    evaluate = pytest.importorskip("kernel_eval.evaluate")
    from runtime.config import EvaluatorConfig
    cfg = EvaluatorConfig(backend=backend, gpus_per_runner=1.0 if backend == "cuda" else 0.0,
                          correctness_trials=3, timing_trials=5, timing_warmup=1)
    results = []
    for name in names:
        task = get_task(name)
        res = evaluate.evaluate_candidate(task, builtin_solution(name, backend), cfg)
        print(f"{name:32s} {backend} stage={res.stage} correct={res.correct} reason={res.reason} "
              f"speedup={res.speedup}")
        results.append((name, res))
    return results


def _assert_accepted(results: list) -> None:
    bad = [(n, r.stage, r.reason, r.detail[:300]) for n, r in results if not (r.correct and r.reason is None)]
    assert not bad, bad


def test_evaluator_accepts_cpu_solutions_subset():
    _assert_accepted(_evaluate(DEFAULT_SUBSET, "cpu"))


@pytest.mark.slow
def test_evaluator_accepts_cpu_solutions_all():
    _assert_accepted(_evaluate(REST, "cpu"))


@pytest.mark.gpu
def test_evaluator_accepts_cuda_solutions():
    _assert_accepted(_evaluate(ALL, "cuda"))
