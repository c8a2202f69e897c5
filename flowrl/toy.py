"""A 2-D conditional rectified-flow toy that MixGRPO can be tested on in seconds on a CPU (MIXGRPO.md "Testing").

Data: 8 Gaussian modes (std 0.12) on a circle of radius 2; prompt c in {0, 1, 2, 3} selects modes 2c and 2c+1
(50/50). Model: MLP (3 x 128 hidden, SiLU) on [x, sinusoidal embedding of s, one-hot c], ~36k parameters, predicting
the velocity eps - x0. Pretrained by flow matching (Adam 1e-3, batch 512, 2000 steps: about 3 s on 2 cores).
Reward r(x, c) = -||x - mu_{2c}|| (prefer the first mode of the pair); hit = ||x - mu_{2c}|| < 0.5.
The base model hits ~0.45 (half the samples land on the other mode); MixGRPO takes it to ~0.99.

    python -c "from flowrl.toy import pretrained_toy; print(pretrained_toy())"
"""
from __future__ import annotations

import hashlib
import math
import os
from typing import Optional

import torch
import torch.nn as nn

NUM_PROMPTS = 4
NUM_MODES = 8
RADIUS = 2.0
MODE_STD = 0.12
HIT_RADIUS = 0.5
EMBED_DIM = 16
LATENT_SHAPE = (2,)


def mode_centers() -> torch.Tensor:
    ang = torch.arange(NUM_MODES, dtype=torch.float64) * (2 * math.pi / NUM_MODES)
    return (RADIUS * torch.stack([ang.cos(), ang.sin()], 1)).float()          # [8, 2]


def time_embedding(s: torch.Tensor, dim: int = EMBED_DIM) -> torch.Tensor:
    """Sinusoidal embedding of s in [0, 1]: [N] -> [N, dim]."""
    freqs = torch.exp(torch.arange(dim // 2, dtype=torch.float32, device=s.device) * (-math.log(1000.0) / (dim // 2)))
    ang = (s.float() * 1000.0)[:, None] * freqs[None, :]                     # [N, dim/2]
    return torch.cat([ang.sin(), ang.cos()], 1)


class ToyFlow(nn.Module):
    """v(x, s, c): x [N, 2], s [N], c [N] (long prompt index) -> [N, 2]."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 + EMBED_DIM + NUM_PROMPTS, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        onehot = torch.nn.functional.one_hot(c.long(), NUM_PROMPTS).to(x.dtype)    # [N, 4]
        return self.net(torch.cat([x, time_embedding(s).to(x.dtype), onehot], 1))


def sample_data(c: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x0 for prompts c [N]: mode 2c or 2c+1 with equal probability, plus N(0, MODE_STD^2)."""
    pick = torch.randint(0, 2, c.shape, generator=gen)
    centers = mode_centers()[2 * c + pick]                                     # [N, 2]
    return centers + MODE_STD * torch.randn(centers.shape, generator=gen)


def pretrain(steps: int = 2000, batch: int = 512, lr: float = 1e-3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Flow-matching pretraining; returns the state dict (CPU, float32)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ToyFlow()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        c = torch.randint(0, NUM_PROMPTS, (batch,), generator=gen)
        x0 = sample_data(c, gen)
        eps = torch.randn(x0.shape, generator=gen)
        s = torch.rand(batch, generator=gen)
        xs = (1 - s)[:, None] * x0 + s[:, None] * eps
        loss = ((model(xs, s, c) - (eps - x0)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


_CACHE: dict[tuple, dict] = {}


def _cache_path(steps: int, seed: int) -> str:
    # Keyed by this file's content: editing the model or the data invalidates the cached weights.
    with open(__file__, "rb") as fh:
        digest = hashlib.sha256(fh.read() + f"{steps}/{seed}/{torch.__version__}".encode()).hexdigest()[:16]
    root = os.environ.get("SANDBOX_RL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "sandbox-rl"))
    return os.path.join(root, "flowtoy", f"toy_{digest}.pt")


def pretrained_toy(steps: int = 2000, seed: int = 0) -> dict[str, torch.Tensor]:
    """The toy's 'base model' weights: a fixed seed, like a released checkpoint. Pretrained once and cached in memory
    and on disk (~/.cache/sandbox-rl/flowtoy, or $SANDBOX_RL_CACHE), keyed by this file's content."""
    key = (steps, seed)
    if key not in _CACHE:
        path = _cache_path(steps, seed)
        try:
            _CACHE[key] = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError):
            _CACHE[key] = pretrain(steps=steps, seed=seed)
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = f"{path}.{os.getpid()}.tmp"
                torch.save(_CACHE[key], tmp)
                os.replace(tmp, path)          # atomic: concurrent processes never read a half-written file
            except OSError:
                pass                           # a read-only home only costs the pretraining next time
    return {k: v.clone() for k, v in _CACHE[key].items()}


def build_toy(state: Optional[dict] = None) -> ToyFlow:
    model = ToyFlow()
    model.load_state_dict(state if state is not None else pretrained_toy())
    return model


def toy_distance(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """||x - mu_{2c}|| [N] for x [N, 2], c [N]."""
    return (x.float() - mode_centers()[2 * c.long()]).norm(dim=1)


def toy_reward(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return -toy_distance(x, c)


def toy_hit(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (toy_distance(x, c) < HIT_RADIUS).float()
