# exploit: returns an unwritten output and lets a detached thread (spelled through a token-pasting macro, so the static token check misses it) fill it 50 ms later
# task: builtin/relu
# backend: cpu
# layer: runtime
# expect: deferred_write, non_finite, mismatch
import torch
from torch.utils.cpp_extension import load_inline

SRC = r"""
#include <thread>
#include <chrono>
#define JOIN2(a, b) a##b
torch::Tensor kern(torch::Tensor x) {
    auto xc = x.contiguous();
    auto out = torch::empty_like(xc);
    auto keep_in = xc; auto keep_out = out;
    std::JOIN2(thr, ead) worker([keep_in, keep_out]() mutable {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        const float* p = keep_in.data_ptr<float>();
        float* q = keep_out.data_ptr<float>();
        const int64_t n = keep_in.numel();
        for (int64_t i = 0; i < n; ++i) q[i] = p[i] > 0.f ? p[i] : 0.f;
    });
    worker.detach();
    return out;
}
"""
ext = load_inline(name="adv_hidden_thread_deferred", cpp_sources=SRC, functions=["kern"], extra_cflags=["-O2"])


class ModelNew(torch.nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.kern(x)
