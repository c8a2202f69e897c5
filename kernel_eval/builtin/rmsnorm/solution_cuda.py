import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

# One warp per row (rows are short): shuffle-reduce the sum of squares, no shared memory, no block barrier.
cuda_source = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

constexpr int WARPS_PER_BLOCK = 8;

__global__ void rmsnorm_kernel(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
                               int64_t rows, int d, float eps) {
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * WARPS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= rows) return;                 // whole warp leaves together: the shuffles below stay full-warp
    const float* xr = x + row * d;
    float* yr = y + row * d;
    float ss = 0.0f;
    for (int i = lane; i < d; i += 32) ss += xr[i] * xr[i];
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float inv = rsqrtf(ss / d + eps);
    for (int i = lane; i < d; i += 32) yr[i] = xr[i] * inv * w[i];
}

torch::Tensor rmsnorm_rows(torch::Tensor x, torch::Tensor weight, double eps) {
    TORCH_CHECK(x.is_cuda() && weight.is_cuda(), "inputs must be CUDA tensors");
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, "expected float32");
    auto xc = x.contiguous();
    auto wc = weight.contiguous();
    const int64_t d = wc.numel();
    TORCH_CHECK(d > 0 && xc.size(-1) == d, "last dimension must match the weight");
    auto y = torch::empty_like(xc);
    const int64_t rows = xc.numel() / d;
    if (rows == 0) return y;
    const int64_t blocks = (rows + WARPS_PER_BLOCK - 1) / WARPS_PER_BLOCK;
    rmsnorm_kernel<<<(unsigned)blocks, WARPS_PER_BLOCK * 32, 0, at::cuda::getCurrentCUDAStream()>>>(
        xc.data_ptr<float>(), wc.data_ptr<float>(), y.data_ptr<float>(), rows, (int)d, (float)eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}
"""
cpp_source = "torch::Tensor rmsnorm_rows(torch::Tensor x, torch::Tensor weight, double eps);"

ext = load_inline(name="builtin_rmsnorm_cuda", cpp_sources=cpp_source, cuda_sources=cuda_source,
                  functions=["rmsnorm_rows"], extra_cuda_cflags=["-O3"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self, features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.rand(features) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.rmsnorm_rows(x, self.weight, self.eps)
