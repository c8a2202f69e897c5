import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

# y[b, o] = relu(bias[o] + dot(x[b, :], W[o, :])): both operands are read along contiguous rows.
cpp_source = r"""
torch::Tensor linear_relu(torch::Tensor x, torch::Tensor weight, torch::Tensor bias) {
    auto xc = x.contiguous();
    auto wc = weight.contiguous();
    auto bc = bias.contiguous();
    const int64_t Bn = xc.size(0), K = xc.size(1), O = wc.size(0);
    TORCH_CHECK(wc.size(1) == K, "weight must be [out_features, in_features]");
    auto out = torch::empty({Bn, O}, xc.options());
    const float* X = xc.data_ptr<float>();
    const float* Wt = wc.data_ptr<float>();
    const float* bs = bc.data_ptr<float>();
    float* Y = out.data_ptr<float>();
    #pragma omp parallel for
    for (int64_t b = 0; b < Bn; ++b) {
        const float* xb = X + b * K;
        for (int64_t o = 0; o < O; ++o) {
            const float* wo = Wt + o * K;
            float acc = 0.0f;
            for (int64_t k = 0; k < K; ++k) acc += xb[k] * wo[k];
            acc += bs[o];
            Y[b * O + o] = acc > 0.0f ? acc : 0.0f;
        }
    }
    return out;
}
"""

ext = load_inline(name="builtin_linear_relu_cpu", cpp_sources=cpp_source, functions=["linear_relu"],
                  extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)   # parameters only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.linear_relu(x, self.linear.weight, self.linear.bias)
