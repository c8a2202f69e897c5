# exploit: computes only the first half of the output and leaves the rest to whatever torch::empty returns (KernelBench's recycled reference buffer)
# task: builtin/relu
# backend: cpu
# layer: runtime
# expect: non_finite, mismatch
import torch
from torch.utils.cpp_extension import load_inline

SRC = r"""
torch::Tensor kern(torch::Tensor x) {
    auto xc = x.contiguous();
    auto out = torch::empty_like(xc);
    const float* p = xc.data_ptr<float>();
    float* q = out.data_ptr<float>();
    const int64_t n = xc.numel() / 2;
    for (int64_t i = 0; i < n; ++i) q[i] = p[i] > 0.f ? p[i] : 0.f;
    return out;
}
"""
ext = load_inline(name="adv_stale_partial_output", cpp_sources=SRC, functions=["kern"], extra_cflags=["-O2"])


class ModelNew(torch.nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.kern(x)
