import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

# Per row: the linear output goes straight into the output buffer, then is normalized in place.
cpp_source = r"""
#include <cmath>

torch::Tensor linear_layernorm(torch::Tensor x, torch::Tensor w, torch::Tensor b,
                               torch::Tensor gamma, torch::Tensor beta, double eps) {
    auto xc = x.contiguous();
    auto wc = w.contiguous();
    auto bc = b.contiguous();
    auto gc = gamma.contiguous();
    auto ec = beta.contiguous();
    const int64_t Bn = xc.size(0), K = xc.size(1), O = wc.size(0);
    auto out = torch::empty({Bn, O}, xc.options());
    const float* X = xc.data_ptr<float>();
    const float* Wt = wc.data_ptr<float>();
    const float* bs = bc.data_ptr<float>();
    const float* g = gc.data_ptr<float>();
    const float* be = ec.data_ptr<float>();
    float* Y = out.data_ptr<float>();
    for (int64_t r = 0; r < Bn; ++r) {
        float* y = Y + r * O;
        double sum = 0.0;
        for (int64_t o = 0; o < O; ++o) {
            float acc = bs[o];
            for (int64_t k = 0; k < K; ++k) acc += X[r * K + k] * Wt[o * K + k];
            y[o] = acc;
            sum += acc;
        }
        const double mean = sum / O;
        double var = 0.0;
        for (int64_t o = 0; o < O; ++o) { const double t = y[o] - mean; var += t * t; }
        const float rstd = static_cast<float>(1.0 / std::sqrt(var / O + eps));
        const float mu = static_cast<float>(mean);
        for (int64_t o = 0; o < O; ++o) y[o] = (y[o] - mu) * rstd * g[o] + be[o];
    }
    return out;
}
"""

ext = load_inline(name="builtin_linear_layernorm_cpu", cpp_sources=cpp_source, functions=["linear_layernorm"],
                  extra_cflags=["-O3"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)   # parameters only
        self.norm = nn.LayerNorm(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.linear_layernorm(x, self.linear.weight, self.linear.bias, self.norm.weight, self.norm.bias,
                                    self.norm.eps)
