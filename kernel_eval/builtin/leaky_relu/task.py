import torch
import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    """LeakyReLU with a slope given at construction."""

    def __init__(self, negative_slope: float):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, negative_slope=self.negative_slope)


batch_size = 16
channels = 32
length = 256
negative_slope = 0.05


def get_inputs():
    return [torch.randn(batch_size, channels, length)]


def get_init_inputs():
    return [negative_slope]
