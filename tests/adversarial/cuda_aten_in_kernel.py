# exploit: the CUDA 'kernel' file calls at::relu on the host
# task: builtin/relu
# backend: cuda
# layer: static
# expect: aten_compute_in_kernel
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

CPP = "torch::Tensor relu_fwd(torch::Tensor x);"
CUDA = r"""
#include <c10/cuda/CUDAStream.h>
__global__ void relu_k(const float* x, float* y, int64_t n) {
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] > 0.f ? x[i] : 0.f;
}

torch::Tensor relu_fwd(torch::Tensor x) {
    return at::relu(x);
}
"""
ext = load_inline(name="adv_cuda_aten_in_kernel", cpp_sources=CPP, cuda_sources=CUDA, functions=["relu_fwd"], extra_cuda_cflags=["-O2"])


class ModelNew(nn.Module):
    def forward(self, x):
        return ext.relu_fwd(x)
