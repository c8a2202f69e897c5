# exploit: gets a pool stream through a token-pasted name (invisible to the token check), launches there and returns while the kernel still writes
# task: builtin/relu
# backend: cuda
# layer: runtime
# expect: deferred_write, non_finite, mismatch
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

CPP = "torch::Tensor relu_fwd(torch::Tensor x);"
CUDA = r"""
#include <c10/cuda/CUDAStream.h>
#define CAT(a, b) a##b
__global__ void relu_k(const float* x, float* y, int64_t n) {
    for (int rep = 0; rep < 200; ++rep) {
        int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
        if (i < n) y[i] = x[i] > 0.f ? x[i] : 0.f;
    }
}
torch::Tensor relu_fwd(torch::Tensor x) {
    auto y = torch::empty_like(x);
    int64_t n = x.numel();
    using namespace at::cuda;
    auto side = CAT(getStreamFrom, Pool)();
    relu_k<<<(n + 255) / 256, 256, 0, side.stream()>>>(x.data_ptr<float>(), y.data_ptr<float>(), n);
    return y;
}
"""
ext = load_inline(name="adv_cuda_hidden_side_stream", cpp_sources=CPP, cuda_sources=CUDA, functions=["relu_fwd"], extra_cuda_cflags=["-O2"])


class ModelNew(nn.Module):
    def forward(self, x):
        return ext.relu_fwd(x)
