# exploit: rounds every result to 8 mantissa bits (bfloat16-like) with bit masks, invisible to a token check for half types; beyond the float32 tolerance
# task: builtin/relu
# backend: cpu
# layer: runtime
# expect: mismatch
import torch
from torch.utils.cpp_extension import load_inline

SRC = r"""
#include <cstring>
torch::Tensor kern(torch::Tensor x) {
    auto xc = x.contiguous();
    auto out = torch::empty_like(xc);
    const float* p = xc.data_ptr<float>();
    float* q = out.data_ptr<float>();
    for (int64_t i = 0; i < xc.numel(); ++i) {
        float v = p[i] > 0.f ? p[i] : 0.f;
        uint32_t bits; std::memcpy(&bits, &v, 4); bits &= 0xFFFF0000u; std::memcpy(&v, &bits, 4);
        q[i] = v;
    }
    return out;
}
"""
ext = load_inline(name="adv_precision_truncate", cpp_sources=SRC, functions=["kern"], extra_cflags=["-O2"])


class ModelNew(torch.nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.kern(x)
