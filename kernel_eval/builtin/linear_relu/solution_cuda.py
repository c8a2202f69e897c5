import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

# Tiled X @ W^T: both tiles are loaded along K (coalesced rows of X and of W); bias and ReLU in the epilogue.
# The W tile is padded by one column so reading it down a column does not hit one shared-memory bank.
cuda_source = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

constexpr int T = 16;

__global__ void linear_relu_kernel(const float* __restrict__ X, const float* __restrict__ Wt,
                                   const float* __restrict__ bias, float* __restrict__ Y, int B, int K, int O) {
    __shared__ float Xs[T][T + 1];
    __shared__ float Ws[T][T + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * T + ty;          // batch index of this thread's output
    const int col = blockIdx.x * T + tx;          // output feature of this thread's output
    const int wrow = blockIdx.x * T + ty;         // output feature whose weights this thread loads
    float acc = 0.0f;
    for (int t = 0; t < K; t += T) {
        Xs[ty][tx] = (row < B && t + tx < K) ? X[(int64_t)row * K + t + tx] : 0.0f;
        Ws[ty][tx] = (wrow < O && t + tx < K) ? Wt[(int64_t)wrow * K + t + tx] : 0.0f;
        __syncthreads();
        #pragma unroll
        for (int k = 0; k < T; ++k) acc += Xs[ty][k] * Ws[tx][k];
        __syncthreads();
    }
    if (row < B && col < O) Y[(int64_t)row * O + col] = fmaxf(acc + bias[col], 0.0f);
}

torch::Tensor linear_relu(torch::Tensor x, torch::Tensor weight, torch::Tensor bias) {
    TORCH_CHECK(x.is_cuda() && weight.is_cuda() && bias.is_cuda(), "inputs must be CUDA tensors");
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, "expected float32");
    TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && weight.size(1) == x.size(1), "expected x [B, K], W [O, K]");
    auto xc = x.contiguous();
    auto wc = weight.contiguous();
    auto bc = bias.contiguous();
    const int B = xc.size(0), K = xc.size(1), O = wc.size(0);
    auto y = torch::empty({B, O}, xc.options());
    if (B == 0 || O == 0) return y;
    const dim3 block(T, T);
    const dim3 grid((O + T - 1) / T, (B + T - 1) / T);
    linear_relu_kernel<<<grid, block, 0, at::cuda::getCurrentCUDAStream()>>>(
        xc.data_ptr<float>(), wc.data_ptr<float>(), bc.data_ptr<float>(), y.data_ptr<float>(), B, K, O);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}
"""
cpp_source = "torch::Tensor linear_relu(torch::Tensor x, torch::Tensor weight, torch::Tensor bias);"

ext = load_inline(name="builtin_linear_relu_cuda", cpp_sources=cpp_source, cuda_sources=cuda_source,
                  functions=["linear_relu"], extra_cuda_cflags=["-O3"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)   # parameters only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.linear_relu(x, self.linear.weight, self.linear.bias)
