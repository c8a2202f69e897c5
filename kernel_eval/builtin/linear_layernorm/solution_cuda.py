import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

# Fully fused: one block per row. The input row is staged in shared memory, each thread computes some output features
# (dot products against rows of W), then the block reduces mean and variance and normalizes in place. A thread only
# re-reads outputs it wrote itself, so no barrier is needed between the GEMM and the normalization passes.
cuda_source = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

constexpr int THREADS = 256;     // a multiple of 32

__device__ float block_sum(float v) {
    __shared__ float partial[THREADS / 32];
    __shared__ float total;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int i = 0; i < THREADS / 32; ++i) s += partial[i];
        total = s;
    }
    __syncthreads();
    return total;
}

__global__ void linear_layernorm_kernel(const float* __restrict__ X, const float* __restrict__ Wt,
                                        const float* __restrict__ b, const float* __restrict__ gamma,
                                        const float* __restrict__ beta, float* __restrict__ Y, int K, int O,
                                        float eps) {
    extern __shared__ float xs[];
    const int64_t r = blockIdx.x;
    for (int k = threadIdx.x; k < K; k += THREADS) xs[k] = X[r * K + k];
    __syncthreads();
    float* y = Y + r * O;
    float s = 0.0f;
    for (int o = threadIdx.x; o < O; o += THREADS) {
        const float* w = Wt + (int64_t)o * K;
        float acc = b[o];
        for (int k = 0; k < K; ++k) acc += xs[k] * w[k];
        y[o] = acc;
        s += acc;
    }
    const float mean = block_sum(s) / O;
    float v = 0.0f;
    for (int o = threadIdx.x; o < O; o += THREADS) { const float d = y[o] - mean; v += d * d; }
    const float rstd = rsqrtf(block_sum(v) / O + eps);
    for (int o = threadIdx.x; o < O; o += THREADS) y[o] = (y[o] - mean) * rstd * gamma[o] + beta[o];
}

torch::Tensor linear_layernorm(torch::Tensor x, torch::Tensor w, torch::Tensor b, torch::Tensor gamma,
                               torch::Tensor beta, double eps) {
    TORCH_CHECK(x.is_cuda() && w.is_cuda() && b.is_cuda() && gamma.is_cuda() && beta.is_cuda(),
                "inputs must be CUDA tensors");
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, "expected float32");
    TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && w.size(1) == x.size(1), "expected x [B, K], W [O, K]");
    auto xc = x.contiguous();
    auto wc = w.contiguous();
    auto bc = b.contiguous();
    auto gc = gamma.contiguous();
    auto ec = beta.contiguous();
    const int B = xc.size(0), K = xc.size(1), O = wc.size(0);
    const size_t smem = (size_t)K * sizeof(float);
    TORCH_CHECK(smem <= 48 * 1024, "in_features too large for the shared-memory row");
    auto y = torch::empty({B, O}, xc.options());
    if (B == 0 || O == 0) return y;
    linear_layernorm_kernel<<<B, THREADS, smem, at::cuda::getCurrentCUDAStream()>>>(
        xc.data_ptr<float>(), wc.data_ptr<float>(), bc.data_ptr<float>(), gc.data_ptr<float>(),
        ec.data_ptr<float>(), y.data_ptr<float>(), K, O, (float)eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}
"""
cpp_source = ("torch::Tensor linear_layernorm(torch::Tensor x, torch::Tensor w, torch::Tensor b, "
              "torch::Tensor gamma, torch::Tensor beta, double eps);")

ext = load_inline(name="builtin_linear_layernorm_cuda", cpp_sources=cpp_source, cuda_sources=cuda_source,
                  functions=["linear_layernorm"], extra_cuda_cflags=["-O3"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)   # parameters only
        self.norm = nn.LayerNorm(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.linear_layernorm(x, self.linear.weight, self.linear.bias, self.norm.weight, self.norm.bias,
                                    self.norm.eps)
