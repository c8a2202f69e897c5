# exploit: kernel spins forever on the GPU
# task: builtin/relu
# backend: cuda
# layer: runtime
# expect: timeout
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

CPP = "torch::Tensor relu_fwd(torch::Tensor x);"
CUDA = r"""
#include <c10/cuda/CUDAStream.h>
// spins on a flag in device memory that nothing ever sets: the compiler cannot prove the loop ends (a spin on a
// volatile local was compiled away by nvcc -O2 on sm_90: the kernel returned at once)
__global__ void relu_k(const float* x, float* y, int64_t n, volatile const int* flag) {
    while (*flag == 0) { }
    y[0] = x[0];
}
torch::Tensor relu_fwd(torch::Tensor x) {
    auto y = torch::empty_like(x);
    auto flag = torch::zeros({1}, x.options().dtype(torch::kInt32));
    relu_k<<<1, 1>>>(x.data_ptr<float>(), y.data_ptr<float>(), x.numel(), flag.data_ptr<int>());
    return y;
}
"""
ext = load_inline(name="adv_cuda_infinite_loop", cpp_sources=CPP, cuda_sources=CUDA, functions=["relu_fwd"], extra_cuda_cflags=["-O2"])


class ModelNew(nn.Module):
    def forward(self, x):
        return ext.relu_fwd(x)
