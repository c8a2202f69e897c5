import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

# Accumulate whole rows into the output so memory is read in order (no strided walk down dimension 1).
cpp_source = r"""
torch::Tensor mean_dim1(torch::Tensor x) {
    TORCH_CHECK(x.dim() == 3, "expected a 3-D input");
    auto xc = x.contiguous();
    const int64_t B = xc.size(0), R = xc.size(1), C = xc.size(2);
    auto out = torch::zeros({B, C}, xc.options());
    const float* in = xc.data_ptr<float>();
    float* o = out.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) {
        float* ob = o + b * C;
        for (int64_t r = 0; r < R; ++r) {
            const float* row = in + (b * R + r) * C;
            for (int64_t c = 0; c < C; ++c) ob[c] += row[c];
        }
        const float inv = 1.0f / static_cast<float>(R);
        for (int64_t c = 0; c < C; ++c) ob[c] *= inv;
    }
    return out;
}
"""

ext = load_inline(name="builtin_mean_reduce_cpu", cpp_sources=cpp_source, functions=["mean_dim1"],
                  extra_cflags=["-O3"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.mean_dim1(x)
