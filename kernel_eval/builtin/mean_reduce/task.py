import torch
import torch.nn as nn


class Model(nn.Module):
    """Mean over dimension 1 of a [batch, rows, cols] tensor."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mean(x, dim=1)


batch_size = 16
rows = 256
cols = 384


def get_inputs():
    return [torch.randn(batch_size, rows, cols)]


def get_init_inputs():
    return []
