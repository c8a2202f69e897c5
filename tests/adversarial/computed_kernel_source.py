# exploit: kernel source assembled at run time (hides torch::relu from the token check)
# task: builtin/relu
# backend: cpu
# layer: static
# expect: no_kernel
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

SRC = "".join(reversed(['(x); }', 'relu', '::', 'torch', 'torch::Tensor f(torch::Tensor x) { return ']))
ext = load_inline(name="adv_computed", cpp_sources=SRC, functions=["f"])


class ModelNew(nn.Module):
    def forward(self, x):
        return ext.f(x)
