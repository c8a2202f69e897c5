import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

# Two passes per row (mean, then variance about the mean) in double, as LayerNorm is sensitive to cancellation.
cpp_source = r"""
#include <cmath>

torch::Tensor layernorm_rows(torch::Tensor x, torch::Tensor weight, torch::Tensor bias, double eps) {
    auto xc = x.contiguous();
    auto wc = weight.contiguous();
    auto bc = bias.contiguous();
    const int64_t d = wc.numel();
    TORCH_CHECK(xc.size(-1) == d, "last dimension must match the weight");
    const int64_t rows = xc.numel() / d;
    auto out = torch::empty_like(xc);
    const float* in = xc.data_ptr<float>();
    const float* w = wc.data_ptr<float>();
    const float* b = bc.data_ptr<float>();
    float* o = out.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = in + r * d;
        double mean = 0.0;
        for (int64_t i = 0; i < d; ++i) mean += xr[i];
        mean /= d;
        double var = 0.0;
        for (int64_t i = 0; i < d; ++i) { const double t = xr[i] - mean; var += t * t; }
        var /= d;
        const float rstd = static_cast<float>(1.0 / std::sqrt(var + eps));
        const float mu = static_cast<float>(mean);
        for (int64_t i = 0; i < d; ++i) o[r * d + i] = (xr[i] - mu) * rstd * w[i] + b[i];
    }
    return out;
}
"""

ext = load_inline(name="builtin_layernorm_cpu", cpp_sources=cpp_source, functions=["layernorm_rows"],
                  extra_cflags=["-O3"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.norm = nn.LayerNorm(features)   # holds the parameters; the reference initializes them the same way
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.layernorm_rows(x, self.norm.weight, self.norm.bias, self.norm.eps)
