# exploit: copy kernel on a task whose inputs are >= 0
# task: tests/adversarial/tasks/relu_nonneg.py
# backend: cuda
# layer: runtime
# expect: mismatch
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

CPP = "torch::Tensor relu_fwd(torch::Tensor x);"
CUDA = r"""
#include <c10/cuda/CUDAStream.h>
__global__ void relu_k(const float* x, float* y, int64_t n) {
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i];
}
torch::Tensor relu_fwd(torch::Tensor x) {
    auto y = torch::empty_like(x);
    int64_t n = x.numel();
    relu_k<<<(n + 255) / 256, 256>>>(x.data_ptr<float>(), y.data_ptr<float>(), n);
    return y;
}
"""
ext = load_inline(name="adv_cuda_identity_nonneg", cpp_sources=CPP, cuda_sources=CUDA, functions=["relu_fwd"], extra_cuda_cflags=["-O2"])


class ModelNew(nn.Module):
    def forward(self, x):
        return ext.relu_fwd(x)
