"""Evaluator on CPU: honest C++ kernels accepted (incl. a long float32 reduction over mixed-scale inputs), runtime
cheats and failures caught by the sandbox with the right reason, the evaluator still working afterwards, the
content-hash build cache, pre-spawned sandboxes, the precision-downgrade policy and the speed-of-light gate.

CI cost: ONE C++ extension is compiled per pytest session (relu, half-relu and row-sum in one .so; the candidates
differ only in Python), into a session-scoped cache dir shared with test_evaluator_pool.py and test_eval_cli.py
(set SANDBOX_RL_TEST_CACHE to keep builds across sessions). The compile-error case stops at the first error
(-Wfatal-errors before any header). The precompiled-header build is under `-m slow`.

    python -m pytest tests/test_evaluator.py -q
"""
from __future__ import annotations

import atexit
import os
import signal
import shutil
import tempfile
import time
from dataclasses import dataclass

import pytest
import torch

from kernel_eval.evaluate import apply_static, compare_tensor, evaluate_candidate, speed_of_light_ms
from kernel_eval.feedback import RESTART
from kernel_eval.result import EvalResult
from kernel_eval.sandbox import SandboxLimits, WarmPool
from runtime.config import EvaluatorConfig

TEST_CACHE = os.environ.get("SANDBOX_RL_TEST_CACHE") or tempfile.mkdtemp(prefix="sandbox-rl-test-builds-")
if not os.environ.get("SANDBOX_RL_TEST_CACHE"):
    atexit.register(shutil.rmtree, TEST_CACHE, True)


@dataclass(frozen=True)
class InlineTask:
    name: str
    level: int
    source: str
    origin: str = "inline"
    size_profile: str = "as_published"


RELU_TASK = InlineTask("inline/relu", 1, '''
import torch
class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
    def forward(self, x):
        return torch.relu(x)
def get_inputs():
    return [torch.rand(64, 1024)]
def get_init_inputs():
    return []
''')

SUM_TASK = InlineTask("inline/long_sum", 1, '''
import torch
class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
    def forward(self, x):
        return x.sum(dim=1)
def get_inputs():
    return [torch.randn(8, 262144) * 1000.0]
def get_init_inputs():
    return []
''')

# one extension, three kernels: every candidate below shares this build and differs only in Python
RELU_EXT = '''
import torch
from torch.utils.cpp_extension import load_inline
SRC = """
torch::Tensor relu_fwd(torch::Tensor x) {
  auto xc = x.contiguous();
  auto y = torch::empty_like(xc);
  const float* p = xc.data_ptr<float>(); float* q = y.data_ptr<float>();
  for (int64_t i = 0; i < xc.numel(); ++i) q[i] = p[i] > 0.f ? p[i] : 0.f;
  return y;
}
// writes only the first half of the output: passes only if the rest holds stale reference values
torch::Tensor relu_half(torch::Tensor x) {
  auto xc = x.contiguous();
  auto y = torch::empty_like(xc);
  const float* p = xc.data_ptr<float>(); float* q = y.data_ptr<float>();
  for (int64_t i = 0; i < xc.numel() / 2; ++i) q[i] = p[i] > 0.f ? p[i] : 0.f;
  return y;
}
// sequential float32 accumulation: a different summation order than torch's (vectorized, pairwise)
torch::Tensor row_sum(torch::Tensor x) {
  auto xc = x.contiguous();
  int64_t rows = xc.size(0), cols = xc.size(1);
  auto y = torch::empty({rows}, xc.options());
  const float* p = xc.data_ptr<float>(); float* q = y.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) { float acc = 0.f; for (int64_t c = 0; c < cols; ++c) acc += p[r * cols + c]; q[r] = acc; }
  return y;
}
"""
ext = load_inline(name="test_ext", cpp_sources=SRC, functions=["relu_fwd", "relu_half", "row_sum"],
                  extra_cflags=["-O3"])
'''


def relu_candidate(forward_body: str, prelude: str = "") -> str:
    """A candidate built on the shared extension (one compile) with a different forward."""
    return RELU_EXT + prelude + f'''
class ModelNew(torch.nn.Module):
    def __init__(self):
        super().__init__()
    def forward(self, x):
{forward_body}
'''


RELU_OK = relu_candidate("        return ext.relu_fwd(x)")
SUM_OK = relu_candidate("        return ext.row_sum(x)")
RELU_PARTIAL = relu_candidate("        return ext.relu_half(x)")


def make_cfg(**kw) -> EvaluatorConfig:
    base = dict(cache_dir=TEST_CACHE, run_timeout_s=40.0, timing_trials=5, timing_warmup=1, correctness_trials=3,
                precompiled_header=False, warm_sandboxes=1)   # one build: the header would cost more than it saves
    base.update(kw)
    return EvaluatorConfig(**base)


@pytest.fixture(scope="module")
def relu_ok():
    """The honest relu, evaluated once (compiles the shared extension if the cache lacks it)."""
    return evaluate_candidate(RELU_TASK, RELU_OK, make_cfg())


# ------------------------------------------------------------------------------------------------- pure (ms)
def test_tolerance_accepts_reordered_float32_reduction_rejects_wrong():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1 << 18, generator=g) * torch.pow(10.0, torch.empty(4, 1 << 18).uniform_(-3, 3, generator=g))
    ref, ref64 = x.sum(1), x.double().sum(1)
    seq = torch.zeros(4)
    for c in x.split(1024, dim=1):                  # a different (blocked) order, all in float32
        seq += c.sum(1)
    assert (seq - ref).abs().max() > 1e-4           # a fixed absolute 1e-4 would reject this honest kernel
    assert compare_tensor(seq, ref, ref64) is None
    assert compare_tensor(ref * 1.01, ref, ref64)[0] == "mismatch"
    assert compare_tensor(ref.half(), ref, ref64)[0] == "wrong_dtype"
    assert compare_tensor(ref[None], ref, ref64)[0] == "wrong_shape"
    bad = ref.clone()
    bad[0] = float("nan")
    assert compare_tensor(bad, ref, ref64)[0] == "non_finite"


# ------------------------------------------------------------------------------------------------ sandboxed
def test_honest_relu_accepted_and_timed(relu_ok):
    r = relu_ok
    assert r.correct and r.stage == "done" and r.reason is None and r.rewarded, r.detail
    assert r.ref_ms > 0 and r.kernel_ms > 0 and r.speedup == pytest.approx(r.ref_ms / r.kernel_ms)
    assert "can be made faster" in r.feedback and r.feedback.endswith(RESTART)


def test_long_float32_reduction_not_rejected(relu_ok):
    r = evaluate_candidate(SUM_TASK, SUM_OK, make_cfg(timing_trials=3))
    assert r.correct and r.stage == "done", r.detail


def test_cache_and_prespawned_sandbox(relu_ok):
    """An identical candidate skips the compile process; other Python around the same C++ runs the compile process
    but finds the extension by content hash; the run starts in a pre-spawned process (start-up off the clock)."""
    cfg = make_cfg(timing_trials=1, timing_warmup=0, correctness_trials=1)
    r = evaluate_candidate(RELU_TASK, RELU_OK, cfg)
    assert r.correct and r.cache_hit and r.compile_s == 0.0
    time.sleep(1.0)
    r2 = evaluate_candidate(RELU_TASK, RELU_OK + f"\n# another comment {os.urandom(4).hex()}\n", cfg)
    assert r2.correct and not r2.cache_hit and r2.compile_s < 15.0, r2.compile_s
    assert 0.0 <= r2.startup_s < r2.run_s
    print(f"run stage {r2.run_s:.2f}s of which start-up {r2.startup_s:.2f}s; compile process {r2.compile_s:.2f}s")


def test_run_sandbox_ends_at_its_done_frame_and_is_reaped(monkeypatch):
    """A run sandbox's exchange ends at its "done" frame: the process is not waited for but killed, and reaped on
    a background thread (nothing else polls it while the test holds it)."""
    import kernel_eval.sandbox as sandbox
    ended = []
    original = sandbox._kill_group_async
    monkeypatch.setattr(sandbox, "_kill_group_async", lambda proc: (ended.append(proc), original(proc)))
    r = evaluate_candidate(RELU_TASK, RELU_OK, make_cfg(timing_trials=1, timing_warmup=0, correctness_trials=1))
    assert r.correct and r.stage == "done", r.to_dict()
    assert len(ended) == 1                        # the run ended early; the compile (if any) was waited for
    deadline = time.monotonic() + 15
    while ended[0].returncode is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ended[0].returncode in (0, -signal.SIGKILL)   # reaped: exited on its own first, or killed


def test_warm_pool_serves_one_request_per_process():
    pool = WarmPool(size=1)
    limits = SandboxLimits(wall_s=60.0, memory_mb=None)
    try:
        first = pool.acquire(limits)                   # nothing ready yet: spawned now, and one spawned in reserve
        asked = time.monotonic()
        second = pool.acquire(limits)                  # the reserve: started before it was asked for
        assert second.spawned_at < asked and second.proc.pid != first.proc.pid
        outs = [sb.run("compile", {"code": "x = 1\n", "backend": "cpu", "cache_dir": tempfile.gettempdir(),
                                   "out_dir": sb.workdir, "use_pch": False}) for sb in (first, second)]
        assert all(o.last("done") is not None and o.startup_s is not None for o in outs), [o.frames for o in outs]
        assert outs[1].warm_s > outs[0].warm_s
        with pytest.raises(RuntimeError):
            second.run("compile", {})                  # a process never serves a second candidate
        assert not os.path.exists(first.workdir) and first.proc.poll() is not None
        reserve = pool._ready[pool._key(limits, 1, None)][0]
        reserve.proc.kill()                            # a ready process that died is skipped, not handed out
        reserve.proc.wait()
        third = pool.acquire(limits)
        assert third.alive() and third is not reserve
        third.discard()
    finally:
        pool.close()
    assert all(not q for q in pool._ready.values())


def test_precision_downgrade_policy(relu_ok):
    bad = ("precision_downgrade", "torch.float16 in a float32 task")
    for policy, rejected in (("reward", False), ("no_reward", False), ("reject", True)):
        res = EvalResult(task="t", backend="cpu", size_profile="")
        assert apply_static(res, bad, make_cfg(precision_downgrade=policy)) is rejected
        assert ("precision_downgrade" in res.flags) is not rejected and (res.reason == bad[0]) is rejected
    # default policy: evaluated in full, correct, reported, but not rewarded
    code = RELU_OK.replace("class ModelNew", "HALF = torch.float16\nclass ModelNew")
    r = evaluate_candidate(RELU_TASK, code, make_cfg(timing_trials=1, timing_warmup=0))
    assert r.correct and r.speedup and not r.rewarded, r.to_dict()
    assert r.reason == "precision_downgrade" and "precision_downgrade" in r.flags and "no reward" in r.feedback


def test_speed_of_light_gate(relu_ok):
    sizes = {"input_bytes": 3_350_000_000, "output_bytes": 0}
    assert speed_of_light_ms(sizes, make_cfg(backend="cuda")) == pytest.approx(1.0)   # 3.35 GB at 3350 GB/s: 1 ms
    assert speed_of_light_ms(sizes, make_cfg()) is None                                  # cpu: off by default
    # a device claimed to move 1 MB/s: the honest relu (512 KiB in and out) is "faster than the hardware"
    r = evaluate_candidate(RELU_TASK, RELU_OK, make_cfg(peak_memory_gb_per_s=0.001, timing_trials=1, timing_warmup=0))
    assert r.correct and not r.rewarded and r.reason == "speedup_out_of_bounds", r.to_dict()
    assert "faster_than_hardware" in r.flags


@pytest.mark.parametrize("name, body, prelude, reason", [
    ("identity_nonneg", "        return x.clone()", "", "mismatch"),
    ("returns_input", "        return x", "", "output_aliases_input"),
    ("wrong_dtype", "        return ext.relu_fwd(x).double()", "", "wrong_dtype"),
    ("broadcast_shape", "        return ext.relu_fwd(x)[None]", "", "wrong_shape"),
    ("uninitialized", "        return torch.empty_like(x)", "", "non_finite"),
    ("modifies_input", "        x.mul_(2.0)\n        return ext.relu_fwd(x) / 2.0", "", "input_modified"),
    ("tensor_subclass", "        return ext.relu_fwd(x).as_subclass(Sub)", "class Sub(torch.Tensor):\n    pass\n",
     "wrong_output_type"),
    ("deferred_thread", "        y = torch.zeros_like(x)\n        threading.Timer(0.005, lambda: y.copy_(ext.relu_fwd(x)))"
     ".start()\n        return y", "import threading\n", "mismatch"),
    ("raises", "        raise ValueError('boom')", "", "runtime_error"),
    ("os_exit", "        import os\n        os._exit(0)", "", "process_exit"),
    ("segfault", "        import ctypes\n        ctypes.string_at(0)", "", "crash"),
    ("huge_alloc", "        return torch.empty(1 << 40, dtype=torch.uint8)", "", "memory_limit"),
])
def test_runtime_layer_catches(relu_ok, name, body, prelude, reason):
    """Static checks off: the sandbox and the run protocol alone must catch these (the deferred thread may be caught
    as a mismatch or a deferred write, both correct). One correctness trial per distribution is what the
    identity cheat needs; no timing happens for a rejected candidate."""
    r = evaluate_candidate(RELU_TASK, relu_candidate(body, prelude), make_cfg(), static=False)
    allowed = {reason, "deferred_write"} if name == "deferred_thread" else {reason}
    assert not r.correct and r.reason in allowed, (r.reason, r.detail)
    assert not r.rewarded and r.feedback.endswith(RESTART)


def test_partial_output_relying_on_stale_memory_rejected(relu_ok):
    r = evaluate_candidate(RELU_TASK, RELU_PARTIAL, make_cfg(), static=False)
    assert not r.correct and r.reason in ("non_finite", "mismatch"), (r.reason, r.detail)


def test_hang_times_out_and_evaluator_keeps_working(relu_ok):
    r = evaluate_candidate(RELU_TASK, relu_candidate("        while True:\n            pass"),
                           make_cfg(run_timeout_s=8.0), static=False)
    assert r.reason == "timeout" and not r.correct
    assert evaluate_candidate(RELU_TASK, RELU_OK, make_cfg(timing_trials=1)).correct


def test_compile_error_feedback_has_log():
    """-Wfatal-errors and the error before any header: the compiler stops at once (no 10 s of torch headers)."""
    bad = """
import torch
from torch.utils.cpp_extension import load_inline
ext = load_inline(name="broken_ext", cpp_sources='static_assert(false, "deliberate compile error");\\n',
                  functions=["f"], extra_cflags=["-Wfatal-errors"], no_implicit_headers=True)
class ModelNew(torch.nn.Module):
    def forward(self, x):
        return ext.f(x)
"""
    r = evaluate_candidate(RELU_TASK, bad, make_cfg(), static=False)
    assert r.stage == "compile" and r.reason == "compile_error", r.to_dict()
    assert "deliberate compile error" in r.feedback and "failed to compile" in r.feedback


def test_static_rejection_short_circuits():
    code = RELU_OK.replace("return ext.relu_fwd(x)", "return torch.relu(x)")
    r = evaluate_candidate(RELU_TASK, code, make_cfg())
    assert r.stage == "static" and not r.correct and r.reason, r.to_dict()
    assert r.compile_s == 0.0


@pytest.mark.slow
def test_precompiled_header_build(tmp_path):
    """The torch/extension.h precompiled header (built once per flag set, ~36 s) is used by a C++ build whose
    main.cpp includes torch/extension.h (light host headers off; a light main.cpp does not include it)."""
    cfg = make_cfg(cache_dir=str(tmp_path), precompiled_header=True, light_host_headers=False, timing_trials=1)
    r = evaluate_candidate(RELU_TASK, RELU_OK, cfg)
    assert r.correct, r.detail
    assert any(p.endswith(".gch") for _, _, fs in os.walk(tmp_path / "pch") for p in fs)
