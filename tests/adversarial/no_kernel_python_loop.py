# exploit: no extension at all: a Python loop
# task: builtin/relu
# backend: cpu
# layer: static
# expect: no_kernel
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def forward(self, x):
        out = torch.empty_like(x)
        flat, res = x.reshape(-1), out.reshape(-1)
        for i in range(flat.numel()):
            res[i] = max(float(flat[i]), 0.0)
        return out
