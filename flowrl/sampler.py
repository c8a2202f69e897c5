"""Mixed ODE/SDE sampling for flow-matching GRPO (MIXGRPO.md "Conventions", "MixGRPO-Flash").

Pure torch functions plus one rollout routine. A *model* is any callable `model(x [N, *D], s [N], cond) -> v [N, *D]`
predicting the velocity v ~ eps - x0; `cond` is a tensor (or a dict of tensors) indexed along dim 0.

Steps (s_i -> s_{i+1}, d_i = s_{i+1} - s_i < 0):
  Euler ODE      x' = x + d v
  SDE            mu = x + d [v + g^2 / (2 s) (x + (1 - s) v)],  x' = mu + g sqrt(-d) N(0, I)
                 g = eta sqrt(s / (1 - s)) (Flow-GRPO; s_1 replaces s_0 = 1) or g = eta (DanceGRPO)
  DPM-Solver++   1st order and 2nd-order multistep (2M) in lambda = log((1 - s) / s), data prediction D = x - s v
The policy log-prob of an SDE step is the Gaussian log-density of x' under N(mu, g^2 |d| I), averaged over latent
elements, in float32; x' is detached, the gradient flows through mu (through v).

All G samples of a prompt share the initial noise, so the ODE prefix before the first SDE step is computed once per
prompt and fanned out into G branches there (`Rollout.model_rows` counts the saving). Noise is drawn per prompt from
its own generator on the CPU, so splitting prompts over workers or devices does not change a sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from flowrl.schedule import FLASH_RATIO, flash_tail_points

Cond = Any   # torch.Tensor or dict[str, torch.Tensor], indexed along dim 0


# ------------------------------------------------------------------------------------------------------- cond helpers
def cond_index(cond: Cond, idx: torch.Tensor) -> Cond:
    if isinstance(cond, dict):
        return {k: v[idx.to(v.device)] for k, v in cond.items()}
    return cond[idx.to(cond.device)]


def cond_repeat(cond: Cond, g: int) -> Cond:
    """[P, ...] -> [P * G, ...], each prompt's rows adjacent (prompt-major, like the samples)."""
    if isinstance(cond, dict):
        return {k: v.repeat_interleave(g, 0) for k, v in cond.items()}
    return cond.repeat_interleave(g, 0)


def cond_cat(conds: Sequence[Cond]) -> Cond:
    if isinstance(conds[0], dict):
        return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}
    return torch.cat(list(conds))


# ---------------------------------------------------------------------------------------------------------- step math
def sde_noise_level(s: float, s_first: float, eta: float, form: str) -> float:
    """g of one step starting at s. `s_first` (= s_1 of the schedule) replaces s = 1, where s / (1 - s) is infinite."""
    if form == "dance_grpo":
        return eta
    if form != "flow_grpo":
        raise ValueError(f"unknown sde form {form!r} (flow_grpo or dance_grpo)")
    s_eff = s_first if s >= 1.0 else s
    return eta * math.sqrt(s_eff / (1.0 - s_eff))


def sde_mean_std(x: torch.Tensor, v: torch.Tensor, s: float, s_next: float, g: float) -> tuple[torch.Tensor, float]:
    """Mean [N, *D] (float32) and std (scalar) of the SDE step s -> s_next."""
    d = s_next - s
    x32, v32 = x.float(), v.float()
    mu = x32 + d * (v32 + (g * g / (2.0 * s)) * (x32 + (1.0 - s) * v32))     # [N, *D]
    return mu, g * math.sqrt(-d)


def gaussian_logp_mean(x_next: torch.Tensor, mu: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x_next; mu, std^2 I) averaged over the latent elements of each sample -> [N] (float32)."""
    z = (x_next.detach().float() - mu) / std                                  # [N, *D]
    logp = -0.5 * z * z - math.log(std) - 0.5 * math.log(2.0 * math.pi)     # [N, *D]
    return logp.flatten(1).mean(1)                                            # [N]


def euler_step(x: torch.Tensor, v: torch.Tensor, s: float, s_next: float) -> torch.Tensor:
    return x + (s_next - s) * v.to(x.dtype)


def _lam(s: float) -> float:
    return math.log((1.0 - s) / s) if 0.0 < s < 1.0 else (math.inf if s <= 0.0 else -math.inf)


def dpm_step(x: torch.Tensor, d_cur: torch.Tensor, s: float, t: float,
             d_prev: Optional[torch.Tensor] = None, s_prev: Optional[float] = None) -> torch.Tensor:
    """DPM-Solver++ step s -> t with data prediction D(s) = x - s v; second order (2M) when the previous point is given.

    1st order: x_t = (t/s) x - alpha_t (e^-h - 1) D(s), with e^-h = (1-s) t / (s (1-t)) computed directly, so the
    endpoints s = 1 and t = 0 need no infinities (at t = 0 the step returns D, as it should).
    2M: D1 = (D(s) - D(s_prev)) / r0, r0 = h0 / h; x_t += -0.5 alpha_t (e^-h - 1) D1. It falls back to 1st order when
    a lambda is infinite (previous point at s = 1, or t = 0: the final step is first order).
    """
    alpha_t = 1.0 - t
    exp_neg_h = (1.0 - s) * t / (s * (1.0 - t))
    out = (t / s) * x - alpha_t * (exp_neg_h - 1.0) * d_cur
    if d_prev is not None and s_prev is not None and 0.0 < t and s_prev < 1.0:
        h = _lam(t) - _lam(s)
        h0 = _lam(s) - _lam(s_prev)
        d1 = (d_cur - d_prev) / (h0 / h)
        out = out - 0.5 * alpha_t * (exp_neg_h - 1.0) * d1
    return out


def ode_solve(velocity: Callable[[torch.Tensor, float], torch.Tensor], x: torch.Tensor, points: Sequence[float],
              solver: str = "euler") -> torch.Tensor:
    """Integrate the ODE through `points` (decreasing s) with 'euler', 'dpm1' or 'dpm2m'. velocity(x, s) -> v."""
    d_prev, s_prev = None, None
    for s, t in zip(points[:-1], points[1:]):
        v = velocity(x, s)
        if solver == "euler":
            x = euler_step(x, v, s, t)
            continue
        d_cur = x - s * v
        x = dpm_step(x, d_cur, s, t, d_prev if solver == "dpm2m" else None, s_prev)
        d_prev, s_prev = d_cur, s
    return x


# ------------------------------------------------------------------------------------------------------------ rollout
@dataclass
class SamplePlan:
    """What one iteration samples: SDE steps, the steps that enter the loss, and the ODE tail solver."""
    sde_steps: list[int]            # steps sampled with the SDE (sorted)
    train_steps: list[int]          # subset of sde_steps that enter the loss (sorted)
    flash: str = "off"              # "off" | "flash" | "flash_star": DPM-Solver++ 2M tail after the last SDE step


@dataclass
class SamplerSettings:
    sigmas: list[float]             # s_0 .. s_T
    shift: float
    eta: float
    sde_form: str = "flow_grpo"
    group_size: int = 12
    chunk_rows: int = 0             # rows per model call (0: all at once); training uses the same chunks


@dataclass
class Rollout:
    """One iteration's samples, prompt-major: rows p*G .. p*G+G-1 belong to prompt p."""
    x_steps: torch.Tensor           # [N, K, *D] state at the start of each train step
    x_next: torch.Tensor            # [N, K, *D] sampled next state of each train step
    logp_old: torch.Tensor          # [N, K] float32 sampling log-probs
    train_steps: list[int]          # K step indices
    x_final: torch.Tensor           # [N, *D] the clean sample
    cond: Cond                      # [N, ...]
    prompt_ids: torch.Tensor        # [N] prompt index of each row (into the iteration's prompt list)
    nfe: int                        # model evaluations along one sample's path (the papers' NFE)
    model_rows: int                 # sample-evaluations actually computed (shared prefix counted once per prompt)
    model_rows_unshared: int        # what recomputing the prefix for each of the G branches would cost
    stats: dict = field(default_factory=dict)


class CountingModel:
    """Wraps a model: chunked calls of fixed composition, counting calls and rows."""

    def __init__(self, model: Callable, chunk_rows: int = 0):
        self.model, self.chunk_rows, self.calls, self.rows = model, chunk_rows, 0, 0

    def __call__(self, x: torch.Tensor, s: float, cond: Cond) -> torch.Tensor:
        n = x.shape[0]
        step = self.chunk_rows if self.chunk_rows > 0 else n
        outs = []
        for a in range(0, n, step):
            idx = torch.arange(a, min(a + step, n))
            xs = x[a:a + step]
            s_vec = torch.full((xs.shape[0],), s, dtype=torch.float32, device=xs.device)   # [n]
            outs.append(self.model(xs, s_vec, cond_index(cond, idx)))
            self.calls += 1
            self.rows += xs.shape[0]
        return torch.cat(outs)


def sample_rollout(model: Callable, cond: Cond, prompt_seeds: Sequence[int], latent_shape: Sequence[int],
                   plan: SamplePlan, st: SamplerSettings, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32, share_prefix: bool = True) -> Rollout:
    """Sample G = st.group_size branches for each of the P prompts (cond [P, ...], one seed per prompt).

    share_prefix=False recomputes the ODE prefix for every branch (the reference the shared version must equal).
    """
    sig, T, G = st.sigmas, len(st.sigmas) - 1, st.group_size
    P = len(prompt_seeds)
    gens = [torch.Generator().manual_seed(int(sd)) for sd in prompt_seeds]
    x0_noise = torch.stack([torch.randn(tuple(latent_shape), generator=g) for g in gens])   # [P, *D]
    first_sde = plan.sde_steps[0] if plan.sde_steps else T
    last_sde = plan.sde_steps[-1] if plan.sde_steps else -1
    sde_set, train_set = set(plan.sde_steps), set(plan.train_steps)
    cm = CountingModel(model, st.chunk_rows)

    # ODE prefix: once per prompt, then fan out into G branches at the first SDE step.
    if share_prefix:
        x = x0_noise.to(device=device, dtype=dtype)
        for i in range(first_sde):
            x = euler_step(x, cm(x, sig[i], cond), sig[i], sig[i + 1])
        x = x.repeat_interleave(G, 0)                                     # [P*G, *D]
        cond_g = cond_repeat(cond, G)
    else:
        x = x0_noise.repeat_interleave(G, 0).to(device=device, dtype=dtype)
        cond_g = cond_repeat(cond, G)
        for i in range(first_sde):
            x = euler_step(x, cm(x, sig[i], cond_g), sig[i], sig[i + 1])
    prefix_rows = cm.rows

    xs, xn, lps, nfe = [], [], [], first_sde
    use_tail = plan.flash != "off" and last_sde + 1 < T
    i = first_sde
    while i < T:
        if use_tail and i > last_sde:
            pts = flash_tail_points(T, last_sde, st.shift, FLASH_RATIO[plan.flash])
            vel = lambda z, s: cm(z, s, cond_g)                           # noqa: E731
            x = ode_solve(vel, x, pts, "dpm2m")
            nfe += len(pts) - 1
            break
        v = cm(x, sig[i], cond_g)
        nfe += 1
        if i in sde_set:
            g = sde_noise_level(sig[i], sig[1], st.eta, st.sde_form)
            mu, std = sde_mean_std(x, v, sig[i], sig[i + 1], g)
            noise = torch.stack([torch.randn((G, *latent_shape), generator=gn) for gn in gens])  # [P, G, *D]
            x_new = (mu + std * noise.flatten(0, 1).to(mu.device)).to(dtype)                    # [P*G, *D]
            if i in train_set:
                xs.append(x)
                xn.append(x_new)
                lps.append(gaussian_logp_mean(x_new, mu, std))
            x = x_new
        else:
            x = euler_step(x, v, sig[i], sig[i + 1])
        i += 1

    n = P * G
    empty = torch.zeros((n, 0, *latent_shape), dtype=dtype, device=x.device)
    unshared = cm.rows + (prefix_rows * (G - 1) if share_prefix else 0)
    return Rollout(
        x_steps=torch.stack(xs, 1) if xs else empty, x_next=torch.stack(xn, 1) if xn else empty,
        logp_old=torch.stack(lps, 1) if lps else torch.zeros((n, 0)), train_steps=sorted(train_set),
        x_final=x, cond=cond_g, prompt_ids=torch.arange(P).repeat_interleave(G), nfe=nfe,
        model_rows=cm.rows, model_rows_unshared=unshared, stats={"model_calls": cm.calls})


def step_logprob(model: Callable, x: torch.Tensor, x_next: torch.Tensor, step: int, cond: Cond,
                 st: SamplerSettings) -> torch.Tensor:
    """Training-side log-prob [N] of one SDE step, computed exactly as in `sample_rollout` (same chunks)."""
    sig = st.sigmas
    v = CountingModel(model, st.chunk_rows)(x, sig[step], cond)
    g = sde_noise_level(sig[step], sig[1], st.eta, st.sde_form)
    mu, std = sde_mean_std(x, v, sig[step], sig[step + 1], g)
    return gaussian_logp_mean(x_next, mu, std)
