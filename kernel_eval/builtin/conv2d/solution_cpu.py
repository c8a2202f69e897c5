import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

# Direct convolution, stride 1, zero padding `pad`; taps that fall outside the image are skipped.
cpp_source = r"""
torch::Tensor conv2d_direct(torch::Tensor x, torch::Tensor w, torch::Tensor bias, int64_t pad) {
    auto xc = x.contiguous();
    auto wc = w.contiguous();
    auto bc = bias.contiguous();
    const int64_t N = xc.size(0), C = xc.size(1), H = xc.size(2), W = xc.size(3);
    const int64_t F = wc.size(0), KH = wc.size(2), KW = wc.size(3);
    TORCH_CHECK(wc.size(1) == C, "weight channels must match the input");
    const int64_t OH = H + 2 * pad - KH + 1, OW = W + 2 * pad - KW + 1;
    auto out = torch::empty({N, F, OH, OW}, xc.options());
    const float* in = xc.data_ptr<float>();
    const float* wt = wc.data_ptr<float>();
    const float* bs = bc.data_ptr<float>();
    float* o = out.data_ptr<float>();
    for (int64_t n = 0; n < N; ++n)
        for (int64_t f = 0; f < F; ++f)
            for (int64_t oh = 0; oh < OH; ++oh)
                for (int64_t ow = 0; ow < OW; ++ow) {
                    float acc = bs[f];
                    for (int64_t c = 0; c < C; ++c)
                        for (int64_t kh = 0; kh < KH; ++kh) {
                            const int64_t ih = oh + kh - pad;
                            if (ih < 0 || ih >= H) continue;
                            for (int64_t kw = 0; kw < KW; ++kw) {
                                const int64_t iw = ow + kw - pad;
                                if (iw < 0 || iw >= W) continue;
                                acc += in[((n * C + c) * H + ih) * W + iw] * wt[((f * C + c) * KH + kh) * KW + kw];
                            }
                        }
                    o[((n * F + f) * OH + oh) * OW + ow] = acc;
                }
    return out;
}
"""

ext = load_inline(name="builtin_conv2d_cpu", cpp_sources=cpp_source, functions=["conv2d_direct"],
                  extra_cflags=["-O3"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=1)   # parameters only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.conv2d_direct(x, self.conv.weight, self.conv.bias, 1)
