# exploit: std::abort() inside the kernel (SIGABRT)
# task: builtin/relu
# backend: cpu
# layer: runtime
# expect: crash
import torch
from torch.utils.cpp_extension import load_inline

SRC = r"""
#include <cstdlib>
torch::Tensor kern(torch::Tensor x) {
    for (int64_t i = 0; i < 1; ++i) std::abort();
    return x;
}
"""
ext = load_inline(name="adv_abort_from_cpp", cpp_sources=SRC, functions=["kern"], extra_cflags=["-O2"])


class ModelNew(torch.nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.kern(x)
