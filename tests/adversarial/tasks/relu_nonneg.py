"""ReLU whose own inputs are non-negative (like KernelBench level1/19_ReLU): a copy kernel matches it on the task's
distribution, so only the evaluator's extra normal/mixed-sign trials can expose it."""
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


batch_size = 64
dim = 1024


def get_inputs():
    return [torch.rand(batch_size, dim)]


def get_init_inputs():
    return []
