# exploit: allocates and touches 64 GiB inside the kernel
# task: builtin/relu
# backend: cpu
# layer: runtime
# expect: memory_limit, runtime_error, crash
import torch
from torch.utils.cpp_extension import load_inline

SRC = r"""
#include <cstdlib>
#include <cstring>
torch::Tensor kern(torch::Tensor x) {
    const size_t bytes = size_t(64) << 30;
    char* big = (char*)std::malloc(bytes);
    for (size_t i = 0; i < bytes; i += 4096) big[i] = 1;
    auto out = torch::empty_like(x);
    out.zero_();
    return out;
}
"""
ext = load_inline(name="adv_huge_allocation", cpp_sources=SRC, functions=["kern"], extra_cflags=["-O2"])


class ModelNew(torch.nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.kern(x)
