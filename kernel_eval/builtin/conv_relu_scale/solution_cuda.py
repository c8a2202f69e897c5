import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

# Grid (pixel blocks, F, N): the block's filter (C*KH*KW weights) is staged in shared memory once, then each thread
# computes one output pixel of plane (n, f) and applies ReLU and the scale before its single store.
cuda_source = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

__global__ void conv_relu_scale_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                       const float* __restrict__ bias, float* __restrict__ y,
                                       int C, int H, int W, int KH, int KW, int OH, int OW, float scale) {
    extern __shared__ float wsh[];
    const int f = blockIdx.y, n = blockIdx.z, F = gridDim.y;
    const int taps = C * KH * KW;
    for (int i = threadIdx.x; i < taps; i += blockDim.x) wsh[i] = w[(int64_t)f * taps + i];
    __syncthreads();
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= OH * OW) return;
    const int oh = p / OW, ow = p % OW;
    float acc = bias[f];
    for (int c = 0; c < C; ++c) {
        const float* xp = x + ((int64_t)n * C + c) * H * W + (int64_t)oh * W + ow;
        const float* wp = wsh + c * KH * KW;
        for (int kh = 0; kh < KH; ++kh)
            for (int kw = 0; kw < KW; ++kw) acc += xp[kh * W + kw] * wp[kh * KW + kw];
    }
    y[(((int64_t)n * F + f) * OH + oh) * OW + ow] = fmaxf(acc, 0.0f) * scale;
}

torch::Tensor conv_relu_scale(torch::Tensor x, torch::Tensor w, torch::Tensor bias, double scale) {
    TORCH_CHECK(x.is_cuda() && w.is_cuda() && bias.is_cuda(), "inputs must be CUDA tensors");
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, "expected float32");
    TORCH_CHECK(x.dim() == 4 && w.dim() == 4 && w.size(1) == x.size(1), "expected x [N, C, H, W], w [F, C, KH, KW]");
    auto xc = x.contiguous();
    auto wc = w.contiguous();
    auto bc = bias.contiguous();
    const int N = xc.size(0), C = xc.size(1), H = xc.size(2), W = xc.size(3);
    const int F = wc.size(0), KH = wc.size(2), KW = wc.size(3);
    const int OH = H - KH + 1, OW = W - KW + 1;
    TORCH_CHECK(OH > 0 && OW > 0, "input smaller than the kernel");
    TORCH_CHECK(F <= 65535 && N <= 65535, "grid y/z limit");
    const size_t smem = (size_t)C * KH * KW * sizeof(float);
    TORCH_CHECK(smem <= 48 * 1024, "filter too large for shared memory");
    auto y = torch::empty({N, F, OH, OW}, xc.options());
    if (N == 0 || F == 0) return y;
    const int threads = 128;
    const dim3 grid((OH * OW + threads - 1) / threads, F, N);
    conv_relu_scale_kernel<<<grid, threads, smem, at::cuda::getCurrentCUDAStream()>>>(
        xc.data_ptr<float>(), wc.data_ptr<float>(), bc.data_ptr<float>(), y.data_ptr<float>(),
        C, H, W, KH, KW, OH, OW, (float)scale);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}
"""
cpp_source = "torch::Tensor conv_relu_scale(torch::Tensor x, torch::Tensor w, torch::Tensor bias, double scale);"

ext = load_inline(name="builtin_conv_relu_scale_cuda", cpp_sources=cpp_source, cuda_sources=cuda_source,
                  functions=["conv_relu_scale"], extra_cuda_cflags=["-O3"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, scale: float):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size)   # parameters only
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.conv_relu_scale(x, self.conv.weight, self.conv.bias, self.scale)
