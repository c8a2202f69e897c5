import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

# Valid convolution with ReLU and scale applied while the accumulator is still in a register.
cpp_source = r"""
torch::Tensor conv_relu_scale(torch::Tensor x, torch::Tensor w, torch::Tensor bias, double scale) {
    auto xc = x.contiguous();
    auto wc = w.contiguous();
    auto bc = bias.contiguous();
    const int64_t N = xc.size(0), C = xc.size(1), H = xc.size(2), W = xc.size(3);
    const int64_t F = wc.size(0), KH = wc.size(2), KW = wc.size(3);
    const int64_t OH = H - KH + 1, OW = W - KW + 1;
    TORCH_CHECK(OH > 0 && OW > 0, "input smaller than the kernel");
    auto out = torch::empty({N, F, OH, OW}, xc.options());
    const float* in = xc.data_ptr<float>();
    const float* wt = wc.data_ptr<float>();
    const float* bs = bc.data_ptr<float>();
    float* o = out.data_ptr<float>();
    const float s = static_cast<float>(scale);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t f = 0; f < F; ++f) {
            float* of = o + (n * F + f) * OH * OW;
            for (int64_t i = 0; i < OH * OW; ++i) of[i] = bs[f];
            // accumulate one input plane x one kernel tap at a time: contiguous inner loop over ow
            for (int64_t c = 0; c < C; ++c)
                for (int64_t kh = 0; kh < KH; ++kh)
                    for (int64_t kw = 0; kw < KW; ++kw) {
                        const float wv = wt[((f * C + c) * KH + kh) * KW + kw];
                        const float* plane = in + (n * C + c) * H * W;
                        for (int64_t oh = 0; oh < OH; ++oh) {
                            const float* src = plane + (oh + kh) * W + kw;
                            float* dst = of + oh * OW;
                            for (int64_t ow = 0; ow < OW; ++ow) dst[ow] += wv * src[ow];
                        }
                    }
            for (int64_t i = 0; i < OH * OW; ++i) of[i] = of[i] > 0.0f ? of[i] * s : 0.0f;
        }
    return out;
}
"""

ext = load_inline(name="builtin_conv_relu_scale_cpu", cpp_sources=cpp_source, functions=["conv_relu_scale"],
                  extra_cflags=["-O3"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, scale: float):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size)   # parameters only
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.conv_relu_scale(x, self.conv.weight, self.conv.bias, self.scale)
