import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

cpp_source = r"""
torch::Tensor scaled_add(torch::Tensor x, torch::Tensor y, double alpha) {
    TORCH_CHECK(x.sizes() == y.sizes(), "x and y must have the same shape");
    auto xc = x.contiguous();
    auto yc = y.contiguous();
    auto out = torch::empty_like(xc);
    const float* a = xc.data_ptr<float>();
    const float* b = yc.data_ptr<float>();
    float* o = out.data_ptr<float>();
    const float s = static_cast<float>(alpha);
    const int64_t n = xc.numel();
    for (int64_t i = 0; i < n; ++i) o[i] = a[i] + s * b[i];
    return out;
}
"""

ext = load_inline(name="builtin_scaled_add_cpu", cpp_sources=cpp_source, functions=["scaled_add"],
                  extra_cflags=["-O3"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ext.scaled_add(x, y, self.alpha)
