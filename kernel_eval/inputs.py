"""Inputs for a task module: its own `get_inputs()` or a harder distribution of the same shapes.

Runs inside the sandbox child (the evaluator imports the task module there, never in the controller):

    inputs = make_inputs(task_module, "mixed", seed=1234)
    init = make_init_inputs(task_module, seed=1234)

Distributions
- "task":   the module's own `get_inputs()` under `torch.manual_seed(seed)`.
- "normal": every floating tensor replaced by `randn` of the same shape and dtype.
- "mixed":  mixed sign and scale: `randn * 10**U(-3, 3)` with random signs and ~5% exact zeros. This is what catches
            kernels that are only right on non-negative inputs (KernelBench's activations draw `torch.rand`) or on
            unit-scale values.
Integer and boolean tensors (indices, masks, labels) and non-tensor arguments are always kept as `get_inputs()` made
them, so shape- and range-dependent arguments stay valid. Limits: a task whose float input must satisfy a constraint
(positive variances, probabilities that sum to 1, a symmetric matrix) gets unconstrained values under "normal" and
"mixed"; use "task" only for such tasks (DISTRIBUTIONS_FOR_CONSTRAINED).
"""
from __future__ import annotations

from typing import Any

import torch

DISTRIBUTIONS = ("task", "normal", "mixed")
DISTRIBUTIONS_FOR_CONSTRAINED = ("task",)
MIXED_ZERO_FRACTION = 0.05
MIXED_LOG10_RANGE = 3.0        # magnitudes span 10**-3 .. 10**3


def _mixed_like(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    shape, dtype = t.shape, t.dtype
    base = torch.randn(shape, generator=gen, dtype=torch.float32)                      # [*shape]
    exponent = (torch.rand(shape, generator=gen) * 2.0 - 1.0) * MIXED_LOG10_RANGE       # U(-3, 3)
    sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)
    zero = torch.rand(shape, generator=gen) < MIXED_ZERO_FRACTION
    values = sign * base.abs() * torch.pow(10.0, exponent)
    values = torch.where(zero, torch.zeros_like(values), values)
    return values.to(dtype=dtype)


def _replace_floats(obj: Any, distribution: str, gen: torch.Generator) -> Any:
    """Walk lists/tuples/dicts; replace floating tensors; keep everything else as it is."""
    if isinstance(obj, torch.Tensor):
        if not obj.is_floating_point():
            return obj
        if distribution == "normal":
            return torch.randn(obj.shape, generator=gen, dtype=torch.float32).to(dtype=obj.dtype)
        return _mixed_like(obj, gen)
    if isinstance(obj, (list, tuple)):
        items = [_replace_floats(v, distribution, gen) for v in obj]
        return type(obj)(items) if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        return {k: _replace_floats(v, distribution, gen) for k, v in obj.items()}
    return obj


def make_inputs(module: Any, distribution: str, seed: int) -> list:
    """Inputs for one call of the task's forward, as a list (CPU tensors; the caller moves them to its device).

    `module` is any object with a `get_inputs()` function (an imported task module). Deterministic in `seed`."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown input distribution {distribution!r}; allowed: {', '.join(DISTRIBUTIONS)}")
    if not callable(getattr(module, "get_inputs", None)):
        raise ValueError("task module has no get_inputs() function")
    torch.manual_seed(seed)
    inputs = module.get_inputs()
    if not isinstance(inputs, (list, tuple)):
        raise ValueError(f"get_inputs() returned {type(inputs).__name__}, expected a list")
    inputs = list(inputs)
    if distribution == "task":
        return inputs
    # a separate generator, so that the replacement values do not depend on how many draws get_inputs made
    gen = torch.Generator().manual_seed(seed * 1_000_003 + (1 if distribution == "normal" else 2))
    return _replace_floats(inputs, distribution, gen)


def make_init_inputs(module: Any, seed: int) -> list:
    """Constructor arguments from `get_init_inputs()` under `torch.manual_seed(seed)` (some tasks draw them)."""
    if not callable(getattr(module, "get_init_inputs", None)):
        raise ValueError("task module has no get_init_inputs() function")
    torch.manual_seed(seed)
    init = module.get_init_inputs()
    if not isinstance(init, (list, tuple)):
        raise ValueError(f"get_init_inputs() returned {type(init).__name__}, expected a list")
    return list(init)
