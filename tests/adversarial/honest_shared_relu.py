# exploit: none: the honest control built from the shared library; must be accepted after every crash/hang of the suite (the evaluator keeps working) [default CI set]
# task: builtin/relu
# backend: cpu
# layer: runtime
# expect: ok
import torch
from torch.utils.cpp_extension import load_inline

# One extension source shared by the runtime candidates of the default test run (identical text = one build in the
# content-hashed cache); each candidate calls a different function of it.
LIB_SRC = r"""
#include <cstdint>
torch::Tensor relu_ok(torch::Tensor x) {
    auto xc = x.contiguous();
    auto out = torch::empty_like(xc);
    const float* p = xc.data_ptr<float>();
    float* q = out.data_ptr<float>();
    for (int64_t i = 0; i < xc.numel(); ++i) q[i] = p[i] > 0.f ? p[i] : 0.f;
    return out;
}
torch::Tensor relu_copy(torch::Tensor x) {
    auto xc = x.contiguous();
    auto out = torch::empty_like(xc);
    const float* p = xc.data_ptr<float>();
    float* q = out.data_ptr<float>();
    for (int64_t i = 0; i < xc.numel(); ++i) q[i] = p[i];
    return out;
}
torch::Tensor relu_uninit(torch::Tensor x) {
    return torch::empty_like(x.contiguous());
}
torch::Tensor relu_segfault(torch::Tensor x) {
    float* volatile bad = nullptr;
    for (int64_t i = 0; i < x.numel(); ++i) bad[i] = 1.f;
    return x;
}
torch::Tensor relu_hang(torch::Tensor x) {
    volatile int64_t spin = 0;
    while (spin >= 0) spin = spin + 1 - 1;
    return x;
}
torch::Tensor relu_wide(torch::Tensor x) {
    auto xc = x.contiguous();
    std::vector<int64_t> shape{1};
    for (auto s : xc.sizes()) shape.push_back(s);
    auto out = torch::empty(shape, xc.options());
    const float* p = xc.data_ptr<float>();
    float* q = out.data_ptr<float>();
    for (int64_t i = 0; i < xc.numel(); ++i) q[i] = p[i] > 0.f ? p[i] : 0.f;
    return out;
}
"""
lib = load_inline(name="adversarial_relu_lib", cpp_sources=LIB_SRC,
                  functions=["relu_ok", "relu_copy", "relu_uninit", "relu_segfault", "relu_hang", "relu_wide"],
                  extra_cflags=["-O2"])


class ModelNew(torch.nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lib.relu_ok(x)
