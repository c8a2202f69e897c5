import torch
import torch.nn as nn


class Model(nn.Module):
    """LayerNorm over the last dimension, with learnable weight and bias."""

    def __init__(self, features: int):
        super().__init__()
        self.norm = nn.LayerNorm(features)
        with torch.no_grad():   # non-trivial affine parameters, so a kernel that ignores them fails
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


batch_size = 64
features = 768


def get_inputs():
    return [torch.randn(batch_size, features) * 2.0 + 1.0]


def get_init_inputs():
    return [features]
