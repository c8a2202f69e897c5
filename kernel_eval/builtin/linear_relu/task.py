import torch
import torch.nn as nn


class Model(nn.Module):
    """Linear layer (matmul + bias) followed by ReLU.

    Sized (33 M multiply-adds) so that one call takes milliseconds: timing measures the kernel, not the call overhead."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


batch_size = 128
in_features = 512
out_features = 512


def get_inputs():
    return [torch.randn(batch_size, in_features)]


def get_init_inputs():
    return [in_features, out_features]
