"""Evaluator on CPU: honest C++ kernels accepted (incl. a long float32 reduction over mixed-scale inputs), runtime
cheats and failures caught by the sandbox with the right reason, the evaluator still working afterwards, and the
content-hash build cache. Three distinct C++ sources are compiled (shared across test files through TEST_CACHE).

    python -m pytest tests/test_evaluator.py -q
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass

import pytest
import torch

from kernel_eval.evaluate import compare_tensor, evaluate_candidate
from kernel_eval.feedback import RESTART
from runtime.config import EvaluatorConfig

TEST_CACHE = os.path.join(tempfile.gettempdir(), "sandbox-rl-test-builds")


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
"""
ext = load_inline(name="relu_ext", cpp_sources=SRC, functions=["relu_fwd"], extra_cflags=["-O3"])
'''


def relu_candidate(forward_body: str, prelude: str = "") -> str:
    """A candidate built on the shared relu extension (one compile) with a different forward."""
    return RELU_EXT + prelude + f'''
class ModelNew(torch.nn.Module):
    def __init__(self):
        super().__init__()
    def forward(self, x):
{forward_body}
'''


RELU_OK = relu_candidate("        return ext.relu_fwd(x)")

# sequential float32 accumulation: a different summation order than torch's (vectorized, pairwise)
SUM_OK = '''
import torch
from torch.utils.cpp_extension import load_inline
SRC = """
torch::Tensor row_sum(torch::Tensor x) {
  auto xc = x.contiguous();
  int64_t rows = xc.size(0), cols = xc.size(1);
  auto y = torch::empty({rows}, xc.options());
  const float* p = xc.data_ptr<float>(); float* q = y.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) { float acc = 0.f; for (int64_t c = 0; c < cols; ++c) acc += p[r * cols + c]; q[r] = acc; }
  return y;
}
"""
ext = load_inline(name="row_sum_ext", cpp_sources=SRC, functions=["row_sum"], extra_cflags=["-O3"])
class ModelNew(torch.nn.Module):
    def __init__(self):
        super().__init__()
    def forward(self, x):
        return ext.row_sum(x)
'''

# writes only the first half of the output: passes only if the rest holds stale reference values
RELU_PARTIAL = '''
import torch
from torch.utils.cpp_extension import load_inline
SRC = """
torch::Tensor relu_half(torch::Tensor x) {
  auto xc = x.contiguous();
  auto y = torch::empty_like(xc);
  const float* p = xc.data_ptr<float>(); float* q = y.data_ptr<float>();
  for (int64_t i = 0; i < xc.numel() / 2; ++i) q[i] = p[i] > 0.f ? p[i] : 0.f;
  return y;
}
"""
ext = load_inline(name="relu_half_ext", cpp_sources=SRC, functions=["relu_half"], extra_cflags=["-O3"])
class ModelNew(torch.nn.Module):
    def __init__(self):
        super().__init__()
    def forward(self, x):
        return ext.relu_half(x)
'''


def make_cfg(**kw) -> EvaluatorConfig:
    base = dict(cache_dir=TEST_CACHE, run_timeout_s=40.0, timing_trials=5, timing_warmup=1, correctness_trials=3)
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


def test_long_float32_reduction_not_rejected():
    r = evaluate_candidate(SUM_TASK, SUM_OK, make_cfg(timing_trials=3))
    assert r.correct and r.stage == "done", r.detail


def test_cache_second_evaluation_does_not_recompile(relu_ok):
    t0 = time.monotonic()
    r = evaluate_candidate(RELU_TASK, RELU_OK, make_cfg())
    assert r.correct and r.cache_hit and r.compile_s == 0.0
    # same C++ with other Python around it: the compile process runs, but finds the extension by content hash
    r2 = evaluate_candidate(RELU_TASK, RELU_OK + "\n# another comment\n", make_cfg())
    assert r2.correct and not r2.cache_hit and r2.compile_s < 15.0, r2.compile_s
    print(f"cache hit evaluation {time.monotonic() - t0:.1f}s, run_s {r.run_s:.2f}s")


def test_per_candidate_overhead_recorded(relu_ok):
    """Run-stage wall time of a cached candidate with minimal trials: process start + torch import + checks."""
    r = evaluate_candidate(RELU_TASK, RELU_OK, make_cfg(timing_trials=1, timing_warmup=0, correctness_trials=1))
    assert r.correct
    print(f"per-candidate overhead excluding compilation: {r.run_s:.2f}s")
    assert r.run_s < 20.0


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
    as a mismatch or a deferred write, both correct)."""
    r = evaluate_candidate(RELU_TASK, relu_candidate(body, prelude), make_cfg(), static=False)
    allowed = {reason, "deferred_write"} if name == "deferred_thread" else {reason}
    assert not r.correct and r.reason in allowed, (r.reason, r.detail)
    assert not r.rewarded and r.feedback.endswith(RESTART)


def test_partial_output_relying_on_stale_memory_rejected(relu_ok):
    r = evaluate_candidate(RELU_TASK, RELU_PARTIAL, make_cfg(), static=False)
    assert not r.correct and r.reason in ("non_finite", "mismatch"), (r.reason, r.detail)


def test_hang_times_out_and_evaluator_keeps_working(relu_ok):
    r = evaluate_candidate(RELU_TASK, relu_candidate("        while True:\n            pass"),
                           make_cfg(run_timeout_s=12.0), static=False)
    assert r.reason == "timeout" and not r.correct
    assert evaluate_candidate(RELU_TASK, RELU_OK, make_cfg()).correct


def test_compile_error_feedback_has_log():
    bad = RELU_EXT.replace("return y;", "return y") + "\nclass ModelNew(torch.nn.Module):\n    pass\n"
    r = evaluate_candidate(RELU_TASK, bad, make_cfg(), static=False)
    assert r.stage == "compile" and r.reason == "compile_error"
    assert "error" in r.feedback.lower() and "failed to compile" in r.feedback


def test_static_rejection_short_circuits():
    code = RELU_OK.replace("return ext.relu_fwd(x)", "return torch.relu(x)")
    r = evaluate_candidate(RELU_TASK, code, make_cfg())
    assert r.stage == "static" and not r.correct and r.reason, r.to_dict()
    assert r.compile_s == 0.0
