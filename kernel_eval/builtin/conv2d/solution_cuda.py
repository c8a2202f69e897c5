import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

# One thread per output element (n, f, oh, ow); taps outside the zero-padded border are skipped.
cuda_source = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

__global__ void conv2d_direct_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                     const float* __restrict__ bias, float* __restrict__ y,
                                     int N, int C, int H, int W, int F, int KH, int KW, int OH, int OW, int pad) {
    const int64_t total = (int64_t)N * F * OH * OW;
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const int ow = idx % OW;
    const int oh = (idx / OW) % OH;
    const int f = (idx / ((int64_t)OW * OH)) % F;
    const int n = idx / ((int64_t)OW * OH * F);
    float acc = bias[f];
    for (int c = 0; c < C; ++c) {
        const float* xp = x + ((int64_t)n * C + c) * H * W;
        const float* wp = w + ((int64_t)f * C + c) * KH * KW;
        for (int kh = 0; kh < KH; ++kh) {
            const int ih = oh + kh - pad;
            if (ih < 0 || ih >= H) continue;
            for (int kw = 0; kw < KW; ++kw) {
                const int iw = ow + kw - pad;
                if (iw < 0 || iw >= W) continue;
                acc += xp[ih * W + iw] * wp[kh * KW + kw];
            }
        }
    }
    y[idx] = acc;
}

torch::Tensor conv2d_direct(torch::Tensor x, torch::Tensor w, torch::Tensor bias, int64_t pad) {
    TORCH_CHECK(x.is_cuda() && w.is_cuda() && bias.is_cuda(), "inputs must be CUDA tensors");
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, "expected float32");
    TORCH_CHECK(x.dim() == 4 && w.dim() == 4 && w.size(1) == x.size(1), "expected x [N, C, H, W], w [F, C, KH, KW]");
    auto xc = x.contiguous();
    auto wc = w.contiguous();
    auto bc = bias.contiguous();
    const int N = xc.size(0), C = xc.size(1), H = xc.size(2), W = xc.size(3);
    const int F = wc.size(0), KH = wc.size(2), KW = wc.size(3);
    const int OH = H + 2 * (int)pad - KH + 1, OW = W + 2 * (int)pad - KW + 1;
    TORCH_CHECK(OH > 0 && OW > 0, "input smaller than the kernel");
    auto y = torch::empty({N, F, OH, OW}, xc.options());
    const int64_t total = y.numel();
    if (total == 0) return y;
    const int threads = 256;
    conv2d_direct_kernel<<<(unsigned)((total + threads - 1) / threads), threads, 0,
                           at::cuda::getCurrentCUDAStream()>>>(
        xc.data_ptr<float>(), wc.data_ptr<float>(), bc.data_ptr<float>(), y.data_ptr<float>(),
        N, C, H, W, F, KH, KW, OH, OW, (int)pad);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}
"""
cpp_source = "torch::Tensor conv2d_direct(torch::Tensor x, torch::Tensor w, torch::Tensor bias, int64_t pad);"

ext = load_inline(name="builtin_conv2d_cuda", cpp_sources=cpp_source, cuda_sources=cuda_source,
                  functions=["conv2d_direct"], extra_cuda_cflags=["-O3"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=1)   # parameters only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.conv2d_direct(x, self.conv.weight, self.conv.bias, 1)
