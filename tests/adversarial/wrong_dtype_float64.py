# exploit: correct ReLU values returned as float64 (more precise, wrong dtype)
# task: builtin/relu
# backend: cpu
# layer: runtime
# expect: wrong_dtype
import torch
from torch.utils.cpp_extension import load_inline

SRC = r"""
torch::Tensor kern(torch::Tensor x) {
    auto xc = x.contiguous();
    auto out = torch::empty(xc.sizes(), xc.options().dtype(torch::kFloat64));
    const float* p = xc.data_ptr<float>();
    double* q = out.data_ptr<double>();
    for (int64_t i = 0; i < xc.numel(); ++i) q[i] = p[i] > 0.f ? p[i] : 0.0;
    return out;
}
"""
ext = load_inline(name="adv_wrong_dtype_float64", cpp_sources=SRC, functions=["kern"], extra_cflags=["-O2"])


class ModelNew(torch.nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.kern(x)
