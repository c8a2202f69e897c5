import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

cpp_source = r"""
#include <cmath>

torch::Tensor rmsnorm_rows(torch::Tensor x, torch::Tensor weight, double eps) {
    auto xc = x.contiguous();
    auto wc = weight.contiguous();
    const int64_t d = wc.numel();
    TORCH_CHECK(xc.size(-1) == d, "last dimension must match the weight");
    const int64_t rows = xc.numel() / d;
    auto out = torch::empty_like(xc);
    const float* in = xc.data_ptr<float>();
    const float* w = wc.data_ptr<float>();
    float* o = out.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = in + r * d;
        float ss = 0.0f;
        for (int64_t i = 0; i < d; ++i) ss += xr[i] * xr[i];
        const float inv = 1.0f / std::sqrt(ss / d + static_cast<float>(eps));
        for (int64_t i = 0; i < d; ++i) o[r * d + i] = xr[i] * inv * w[i];
    }
    return out;
}
"""

ext = load_inline(name="builtin_rmsnorm_cpu", cpp_sources=cpp_source, functions=["rmsnorm_rows"],
                  extra_cflags=["-O3"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self, features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.rand(features) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.rmsnorm_rows(x, self.weight, self.eps)
