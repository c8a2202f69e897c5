"""The adversarial suite (tests/adversarial/): each cheating candidate is rejected with one of the reasons its header
declares, by the layer it declares.

Default run (~1 min on 2 cores): every candidate through the static checks (milliseconds each), plus five runtime
candidates through the real sandboxed evaluator on the CPU backend - crash, hang, uninitialized output, identity on
non-negative inputs, broadcast-compatible wrong shape - followed by an honest candidate that must still be accepted.
The five share one C++ source, so the content-hashed build cache compiles it once.
Slow run (`-m slow`, several minutes): every CPU runtime candidate. GPU run (`-m gpu`): the CUDA runtime candidates.

    python -m pytest tests/test_adversarial.py -q
    python -m pytest tests/test_adversarial.py -q -m slow        # full CPU runtime sweep
    python benchmarks/adversarial_sweep.py --backend cpu          # the same as a table under $OUT
"""
from __future__ import annotations

import os
import tempfile

import pytest

from adversarial.suite import load_suite, outcome
from kernel_eval.result import RUNTIME_REASONS
from kernel_eval.static_checks import REASONS, check_candidate

SUITE = load_suite()
BY_NAME = {c.name: c for c in SUITE}
CI_RUNTIME = ["segfault", "infinite_loop", "uninitialized_output", "identity_nonneg", "wrong_shape_broadcast"]
TEST_CACHE = os.path.join(tempfile.gettempdir(), "sandbox-rl-test-builds")   # shared with tests/test_evaluator.py


def _evaluate():
    try:
        from adversarial.suite import evaluate_case
        import kernel_eval.evaluate  # noqa: F401
    except ImportError as e:
        pytest.skip(f"kernel_eval.evaluate is not available ({e}); only the static layer is tested")
    return evaluate_case


def _cfg(case_name: str, backend: str = "cpu"):
    from runtime.config import EvaluatorConfig
    hang = "infinite_loop" in case_name
    return EvaluatorConfig(backend=backend, cache_dir=TEST_CACHE, run_timeout_s=12.0 if hang else 60.0,
                           timing_trials=3, timing_warmup=1, correctness_trials=3)


def test_suite_is_complete_and_well_formed():
    assert len([c for c in SUITE if "ok" not in c.expect]) >= 25
    known = set(REASONS) | set(RUNTIME_REASONS) | {"ok"}
    for c in SUITE:
        assert c.backend in ("cpu", "cuda") and c.layer in ("static", "runtime"), c.name
        assert set(c.expect) <= known, (c.name, set(c.expect) - known)
        assert c.exploit and c.task
    assert {c.backend for c in SUITE if c.layer == "runtime"} == {"cpu", "cuda"}
    assert all(n in BY_NAME for n in CI_RUNTIME)


@pytest.mark.parametrize("case", SUITE, ids=[c.name for c in SUITE])
def test_static_layer(case):
    from adversarial.suite import load_task
    v = check_candidate(case.code, case.backend, load_task(case).source)
    if case.layer == "static":
        assert not v.ok and v.reason in case.expect, (case.name, v)
    else:   # runtime cases must get past the static checks so they exercise the evaluator's defenses
        assert v.ok, (case.name, v)


def _run_and_check(names: list[str], backend: str = "cpu") -> None:
    evaluate_case = _evaluate()
    failures = []
    for name in names:
        case = BY_NAME[name]
        r = evaluate_case(case, _cfg(name, backend))
        got = outcome(r)
        print(f"{name:28s} -> {got:22s} stage={r.stage} run_s={r.run_s:.1f} compile_s={r.compile_s:.1f}")
        if got not in case.expect:
            failures.append(f"{name}: expected {case.expect}, got {got} ({r.detail[:300]})")
        if "ok" not in case.expect:
            assert not r.rewarded, f"{name} was rewarded"
    assert not failures, "\n".join(failures)


def test_runtime_ci_set_then_honest_still_accepted():
    """Crash, hang, uninitialized, identity-on-nonneg and wrong shape are caught at run time; afterwards the evaluator
    still accepts an honest kernel (it was not poisoned by the crashes)."""
    _run_and_check(CI_RUNTIME + ["honest_shared_relu"])


@pytest.mark.slow
def test_runtime_full_cpu_sweep():
    names = [c.name for c in SUITE if c.layer == "runtime" and c.backend == "cpu" and c.name not in CI_RUNTIME]
    _run_and_check(sorted(names, key=lambda n: n == "honest_shared_relu"))


@pytest.mark.gpu
def test_runtime_cuda_sweep():
    names = [c.name for c in SUITE if c.layer == "runtime" and c.backend == "cuda"]
    _run_and_check(sorted(names, key=lambda n: n == "cuda_honest_relu"), backend="cuda")
