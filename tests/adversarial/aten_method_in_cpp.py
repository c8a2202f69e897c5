# exploit: matmul done by ATen's Tensor::mm inside C++ (only the loop over rows is 'custom')
# task: builtin/matmul
# backend: cpu
# layer: static
# expect: aten_compute_in_kernel
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

SRC = r"""
torch::Tensor mm_fwd(torch::Tensor a, torch::Tensor b) {
    auto out = torch::empty({a.size(0), b.size(1)}, a.options());
    for (int64_t r = 0; r < 1; ++r) out = a.mm(b);
    return out;
}
"""
ext = load_inline(name="adv_aten_mm", cpp_sources=SRC, functions=["mm_fwd"])


class ModelNew(nn.Module):
    def forward(self, A, B):
        return ext.mm_fwd(A, B)
