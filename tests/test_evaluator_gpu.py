"""Evaluator on a CUDA GPU (marked `gpu`: skipped without one): honest built-in CUDA solutions accepted with sane
event timings after the L2 flush, and the runtime layer alone (static checks off) catching a kernel left running on
an unsynchronized extra stream, a kernel that keeps writing the outputs after the call returned, and an illegal memory
access, after which the next candidate still passes (a CUDA fault dies with its process).

All cheats share ONE extension (candidates differ only in Python); every build runs in parallel up front.

    python -m pytest tests/test_evaluator_gpu.py -q -m gpu
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import tempfile

import pytest

pytestmark = pytest.mark.gpu

HONEST_TASKS = ("builtin/relu", "builtin/softmax", "builtin/matmul")

CHEAT_EXT = r'''
import torch
from torch.utils.cpp_extension import load_inline
CUDA_SRC = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>

__device__ void spin(long long cycles) { long long t0 = clock64(); while (clock64() - t0 < cycles) {} }

__global__ void relu_k(const float* x, float* y, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = fmaxf(x[i], 0.f);
}
__global__ void late_relu_k(const float* x, float* y, int64_t n) {       // waits ~20 ms, then writes
    spin(40000000LL);
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = fmaxf(x[i], 0.f);
}
__global__ void late_zero_k(float* y, int64_t n) {                       // waits ~20 ms, then overwrites
    spin(40000000LL);
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = 0.f;
}
__global__ void wild_k(float* y, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) ((float*)0x10)[i * 4096] = 1.f;                            // far outside any allocation
}

static cudaStream_t side() {
    static cudaStream_t s = nullptr;
    if (!s) cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    return s;
}

torch::Tensor relu_extra_stream(torch::Tensor x) {      // all the work on another stream, no synchronization
    auto y = torch::empty_like(x);
    int64_t n = x.numel();
    late_relu_k<<<(n + 255) / 256, 256, 0, side()>>>(x.data_ptr<float>(), y.data_ptr<float>(), n);
    return y;
}
torch::Tensor relu_deferred(torch::Tensor x) {          // correct at return, overwritten afterwards
    auto y = torch::empty_like(x);
    int64_t n = x.numel();
    relu_k<<<(n + 255) / 256, 256, 0, at::cuda::getCurrentCUDAStream()>>>(x.data_ptr<float>(), y.data_ptr<float>(), n);
    late_zero_k<<<(n + 255) / 256, 256, 0, side()>>>(y.data_ptr<float>(), n);
    return y;
}
torch::Tensor relu_illegal(torch::Tensor x) {
    auto y = torch::empty_like(x);
    int64_t n = x.numel();
    wild_k<<<(n + 255) / 256, 256, 0, at::cuda::getCurrentCUDAStream()>>>(y.data_ptr<float>(), n);
    return y;
}
"""
CPP_SRC = """
torch::Tensor relu_extra_stream(torch::Tensor x);
torch::Tensor relu_deferred(torch::Tensor x);
torch::Tensor relu_illegal(torch::Tensor x);
"""
ext = load_inline(name="gpu_cheat_ext", cpp_sources=CPP_SRC, cuda_sources=CUDA_SRC,
                  functions=["relu_extra_stream", "relu_deferred", "relu_illegal"], extra_cuda_cflags=["-O2"])
'''


def cheat(fn: str) -> str:
    return CHEAT_EXT + f'''
class ModelNew(torch.nn.Module):
    def __init__(self):
        super().__init__()
    def forward(self, x):
        return ext.{fn}(x)
'''


@pytest.fixture(scope="module")
def env():
    import torch
    from kernel_eval.build import compile_candidate
    from kernel_eval.tasks import builtin_solution, get_task
    from runtime.config import EvaluatorConfig
    cache = tempfile.mkdtemp(prefix="sandbox-rl-gpu-test-")
    cfg = EvaluatorConfig(backend="cuda", cache_dir=cache, run_timeout_s=120.0, compile_timeout_s=600.0,
                          correctness_trials=3, timing_warmup=5, timing_trials=30, compile_jobs=4)
    honest = {name: (get_task(name), builtin_solution(name, "cuda")) for name in HONEST_TASKS}
    sources = [code for _, code in honest.values()] + [cheat("relu_extra_stream")]
    with cf.ThreadPoolExecutor(len(sources)) as ex:             # build everything at once; runs reuse the cache
        builds = list(ex.map(lambda c: compile_candidate(c, "cuda", cfg, torch.__version__), sources))
    for b in builds:
        assert b.ok, b.log[-3000:]
    yield cfg, honest
    shutil.rmtree(cache, ignore_errors=True)


@pytest.mark.parametrize("name", HONEST_TASKS)
def test_honest_cuda_solution_accepted(env, name):
    from kernel_eval.evaluate import evaluate_candidate
    cfg, honest = env
    task, code = honest[name]
    r = evaluate_candidate(task, code, cfg)
    assert r.correct and r.rewarded and r.stage == "done", r.to_dict()
    assert r.ref_ms > 0.001 and r.kernel_ms > 0.001          # events around a device-wide sync: never ~0
    assert "faster_than_hardware" not in r.flags
    print(f"{name}: ref {r.ref_ms:.4f} ms, kernel {r.kernel_ms:.4f} ms, speedup {r.speedup:.2f}x, "
          f"run {r.run_s:.2f}s (start-up {r.startup_s:.2f}s)")
    if name == "builtin/relu":
        assert 0.2 <= r.speedup <= 5.0, r.speedup            # a one-pass elementwise kernel vs torch.relu


def test_extra_stream_work_is_not_rewarded(env):
    """Outputs filled ~20 ms later on a non-blocking stream: the fingerprint at return differs from the one after
    a device-wide synchronize (or the values are wrong at return)."""
    from kernel_eval.evaluate import evaluate_candidate
    cfg, honest = env
    r = evaluate_candidate(honest["builtin/relu"][0], cheat("relu_extra_stream"), cfg, static=False)
    assert not r.correct and not r.rewarded and r.reason in ("deferred_write", "non_finite", "mismatch"), r.to_dict()


def test_deferred_write_detected(env):
    """Correct when the call returns, overwritten afterwards by a kernel still running on another stream."""
    from kernel_eval.evaluate import evaluate_candidate
    cfg, honest = env
    r = evaluate_candidate(honest["builtin/relu"][0], cheat("relu_deferred"), cfg, static=False)
    assert not r.correct and r.reason in ("deferred_write", "mismatch"), r.to_dict()


def test_illegal_memory_access_does_not_poison_the_evaluator(env):
    from kernel_eval.evaluate import evaluate_candidate
    cfg, honest = env
    task, code = honest["builtin/relu"]
    r = evaluate_candidate(task, cheat("relu_illegal"), cfg, static=False)
    assert not r.correct and r.reason in ("runtime_error", "crash"), r.to_dict()
    assert "illegal" in r.detail.lower() or r.reason == "crash", r.detail[-500:]
    ok = evaluate_candidate(task, code, cfg)                 # a fresh process, a fresh CUDA context
    assert ok.correct and ok.rewarded, ok.to_dict()


def test_cuda_visible_devices_reaches_the_sandbox(monkeypatch):
    """The scrubbed environment keeps CUDA_VISIBLE_DEVICES (a Ray GPU runner's assignment), drops secrets."""
    from kernel_eval.sandbox import scrubbed_env
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "0"))
    monkeypatch.setenv("HF_TOKEN", "secret")
    env = scrubbed_env(tempfile.gettempdir(), 1)
    assert env["CUDA_VISIBLE_DEVICES"] == os.environ["CUDA_VISIBLE_DEVICES"] and "HF_TOKEN" not in env


def test_side_stream_hold_verifies_itself():
    """kernel_eval.child.SideStreamHold, in this process (no compile): work a call leaves on a pool stream has not
    run when the return fingerprint is taken; a call whose current-stream work outlasts the hold is reported as
    inconclusive until the hold is long enough; a call that synchronizes the device (so waits for the spin)
    stands as it is."""
    from kernel_eval.child import probe_side_stream_hold
    r = probe_side_stream_hold("cuda:0")
    two_n = 2.0 * r["n"]
    assert all(fp == two_n and ok for fp, ok, *_ in r["fast"]), r["fast"]
    assert r["streams"] >= 32, r                     # 128 on an H100 (4 priorities x 32)
    assert r["deferred"][:2] == (two_n, True), r["deferred"]   # the + 1 had not run: a deferred write shows
    assert r["sync"][1], r["sync"]                   # it waited for the spin: stands
    assert r["slow"][:2] == (two_n, False), r["slow"]          # current-stream work outlasted the hold
    assert r["slow16"][1], r["slow16"]
