import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

# One thread per output (b, c); neighbouring threads read neighbouring columns, so every row read is coalesced.
cuda_source = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

__global__ void mean_dim1_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t B, int64_t R,
                                 int64_t C) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * C) return;
    const int64_t b = idx / C, c = idx % C;
    const float* col = x + b * R * C + c;
    float acc = 0.0f;
    for (int64_t r = 0; r < R; ++r) acc += col[r * C];
    out[idx] = acc / (float)R;
}

torch::Tensor mean_dim1(torch::Tensor x) {
    TORCH_CHECK(x.is_cuda() && x.scalar_type() == torch::kFloat32, "expected a float32 CUDA tensor");
    TORCH_CHECK(x.dim() == 3, "expected a 3-D input");
    auto xc = x.contiguous();
    const int64_t B = xc.size(0), R = xc.size(1), C = xc.size(2);
    auto out = torch::empty({B, C}, xc.options());
    if (B * C == 0) return out;
    const int threads = 256;
    const int64_t blocks = (B * C + threads - 1) / threads;
    mean_dim1_kernel<<<(unsigned)blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        xc.data_ptr<float>(), out.data_ptr<float>(), B, R, C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}
"""
cpp_source = "torch::Tensor mean_dim1(torch::Tensor x);"

ext = load_inline(name="builtin_mean_reduce_cuda", cpp_sources=cpp_source, cuda_sources=cuda_source,
                  functions=["mean_dim1"], extra_cuda_cflags=["-O3"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.mean_dim1(x)
