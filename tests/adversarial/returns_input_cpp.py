# exploit: returns the input tensor itself (in place ReLU of the input)
# task: builtin/relu
# backend: cpu
# layer: runtime
# expect: output_aliases_input, input_modified
import torch
from torch.utils.cpp_extension import load_inline

SRC = r"""
torch::Tensor kern(torch::Tensor x) {
    float* q = x.data_ptr<float>();
    const float* p = q;
    const int64_t n = x.numel();
    for (int64_t i = 0; i < n; ++i) q[i] = p[i] > 0.f ? p[i] : 0.f;
    return x;
}
"""
ext = load_inline(name="adv_returns_input_cpp", cpp_sources=SRC, functions=["kern"], extra_cflags=["-O2"])


class ModelNew(torch.nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.kern(x)
