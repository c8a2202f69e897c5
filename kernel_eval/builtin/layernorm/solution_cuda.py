import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

# One block per row; two reductions (mean, then variance about the mean) through shared memory.
cuda_source = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

constexpr int THREADS = 256;   // power of two: the tree reduction halves it

__device__ float block_sum(float v, float* buf) {
    buf[threadIdx.x] = v;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
        __syncthreads();
    }
    const float total = buf[0];
    __syncthreads();           // buf is reused by the next reduction
    return total;
}

__global__ void layernorm_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                 const float* __restrict__ b, float* __restrict__ y, int d, float eps) {
    __shared__ float buf[THREADS];
    const float* xr = x + (int64_t)blockIdx.x * d;
    float* yr = y + (int64_t)blockIdx.x * d;
    float s = 0.0f;
    for (int i = threadIdx.x; i < d; i += THREADS) s += xr[i];
    const float mean = block_sum(s, buf) / d;
    float v = 0.0f;
    for (int i = threadIdx.x; i < d; i += THREADS) { const float t = xr[i] - mean; v += t * t; }
    const float rstd = rsqrtf(block_sum(v, buf) / d + eps);
    for (int i = threadIdx.x; i < d; i += THREADS) yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
}

torch::Tensor layernorm_rows(torch::Tensor x, torch::Tensor weight, torch::Tensor bias, double eps) {
    TORCH_CHECK(x.is_cuda() && weight.is_cuda() && bias.is_cuda(), "inputs must be CUDA tensors");
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, "expected float32");
    auto xc = x.contiguous();
    auto wc = weight.contiguous();
    auto bc = bias.contiguous();
    const int64_t d = wc.numel();
    TORCH_CHECK(d > 0 && xc.size(-1) == d, "last dimension must match the weight");
    auto y = torch::empty_like(xc);
    const int64_t rows = xc.numel() / d;
    if (rows == 0) return y;
    layernorm_kernel<<<(unsigned)rows, THREADS, 0, at::cuda::getCurrentCUDAStream()>>>(
        xc.data_ptr<float>(), wc.data_ptr<float>(), bc.data_ptr<float>(), y.data_ptr<float>(), (int)d, (float)eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}
"""
cpp_source = "torch::Tensor layernorm_rows(torch::Tensor x, torch::Tensor weight, torch::Tensor bias, double eps);"

ext = load_inline(name="builtin_layernorm_cuda", cpp_sources=cpp_source, cuda_sources=cuda_source,
                  functions=["layernorm_rows"], extra_cuda_cflags=["-O3"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.norm = nn.LayerNorm(features)   # holds the parameters; the reference initializes them the same way
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.layernorm_rows(x, self.norm.weight, self.norm.bias, self.norm.eps)
