# exploit: derives from the reference Model and calls its forward
# task: builtin/relu
# backend: cpu
# layer: static
# expect: subclasses_reference
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

SRC = r"""
torch::Tensor relu_fwd(torch::Tensor x) {
    auto xc = x.contiguous();
    auto out = torch::empty_like(xc);
    const float* p = xc.data_ptr<float>();
    float* q = out.data_ptr<float>();
    for (int64_t i = 0; i < xc.numel(); ++i) q[i] = p[i] > 0.f ? p[i] : 0.f;
    return out;
}
"""
ext = load_inline(name="adv_static_relu", cpp_sources=SRC, functions=["relu_fwd"], extra_cflags=["-O2"])


class ModelNew(Model):
    def forward(self, x):
        ext.relu_fwd(x)
        return super().forward(x)
