# exploit: the 'kernel' just calls torch::relu (ATen) inside C++
# task: builtin/relu
# backend: cpu
# layer: static
# expect: aten_compute_in_kernel
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

SRC = r"""
torch::Tensor relu_fwd(torch::Tensor x) {
    for (int i = 0; i < 1; ++i) {}
    return torch::relu(x);
}
"""
ext = load_inline(name="adv_aten_relu", cpp_sources=SRC, functions=["relu_fwd"])


class ModelNew(nn.Module):
    def forward(self, x):
        return ext.relu_fwd(x)
