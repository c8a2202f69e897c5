"""EvaluatorPool on a real local Ray: several candidates in flight, results as they finish, a runner killed mid-run
reported as evaluator_error while the pool keeps working. Reuses the extensions compiled by test_evaluator.py
(same content-hash cache), so nothing new is compiled when that module ran first.

    python -m pytest tests/test_evaluator_pool.py -q
"""
from __future__ import annotations

import time

import pytest

from kernel_eval.tasks import Task
from test_evaluator import RELU_OK, make_cfg, relu_candidate
from test_evaluator import RELU_TASK as _INLINE

# a Task of the package (the inline dataclass of the test module cannot be unpickled in Ray workers)
RELU_TASK = Task(name=_INLINE.name, level=_INLINE.level, source=_INLINE.source, origin=_INLINE.origin,
                 size_profile=_INLINE.size_profile)


@pytest.fixture(scope="module")
def pool(ray_local):
    from actors.evaluator import start_evaluator_pool
    # a generous run limit: the deliberately slow candidate must not time out on a loaded machine; two compile
    # workers on one reserved CPU (evaluator.compile_worker_cpus: oversubscribed on purpose)
    handle = start_evaluator_pool(make_cfg(num_runners=2, max_in_flight=8, run_timeout_s=150.0,
                                           num_compile_workers=2, compile_worker_cpus=0.5),
                                  name="test-evaluator-pool")
    yield handle
    ray_local.kill(handle)


def test_many_in_flight_results_as_they_finish(pool, ray_local):
    ray = ray_local
    slow = relu_candidate("        for _ in range(5000):\n            y = ext.relu_fwd(x)\n        return y")
    refs = [pool.evaluate.remote(RELU_TASK, slow, is_code=True), pool.evaluate.remote(RELU_TASK, RELU_OK, is_code=True),
            pool.evaluate.remote(RELU_TASK, relu_candidate("        return x.clone()"), is_code=True)]
    order, pending = [], list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=600)
        assert ready, "no result within 10 minutes"
        order.append(ready[0])
    results = {i: ray.get(r, timeout=30) for i, r in enumerate(refs)}
    assert results[0].correct and results[1].correct, (results[0].to_dict(), results[1].to_dict())
    assert not results[2].correct and results[2].reason == "torch_compute_in_forward"   # static rule, in the pool
    assert order[-1] == refs[0]                     # the slow one finishes last: results are not in submit order
    stats = ray.get(pool.stats.remote(), timeout=30)
    assert stats["done"] >= 3 and stats["per_reason"].get("torch_compute_in_forward") == 1


def test_response_text_is_parsed(pool, ray_local):
    r = ray_local.get(pool.evaluate.remote(RELU_TASK, "No code here."), timeout=60)
    assert r.stage == "format" and r.reason == "format"


def test_killed_runner_reported_and_pool_keeps_working(pool, ray_local):
    ray = ray_local
    hang = relu_candidate("        while True:\n            y = ext.relu_fwd(x)\n        return y")
    ref = pool.evaluate.remote(RELU_TASK, hang, is_code=True)
    deadline = time.monotonic() + 120
    busy = {}
    while time.monotonic() < deadline and not busy:
        busy = ray.get(pool.stats.remote(), timeout=30)["busy_runners"]
        time.sleep(0.5)
    assert busy, "the hanging candidate never reached a runner"
    runners = ray.get(pool.runner_handles.remote(), timeout=30)
    ray.kill(runners[int(next(iter(busy)))])
    r = ray.get(ref, timeout=120)
    assert r.reason == "evaluator_error" and not r.correct
    ok = ray.get(pool.evaluate.remote(RELU_TASK, RELU_OK, is_code=True), timeout=300)
    assert ok.correct
    assert ray.get(pool.stats.remote(), timeout=30)["replaced_workers"] >= 1
