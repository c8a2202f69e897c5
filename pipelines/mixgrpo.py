"""The MixGRPO controller loop (`run.pipeline: mixgrpo`), on the toy 2-D flow (CPU, seconds) or FLUX.

One iteration (`MixGRPOPipeline.step`):
  1. the window scheduler gives the plan: SDE steps, trained steps, ODE tail solver (flowrl/window.py)
  2. draw `prompts_per_iter` prompts and one noise seed per prompt (RNG keyed by (run.seed, iteration))
  3. samplers (Ray actors, or in-process) sample G branches per prompt: shared ODE prefix, SDE window, ODE/DPM tail
  4. reward workers score the decoded samples with every weighted reward
  5. advantages per prompt group (rlcore.multi_reward_advantages) -> clipped ratio loss over the window steps
     (rlcore.clipped_policy_loss), `optimizer_steps_per_iter` AdamW steps, in the controller process
  6. the new weights go to the samplers as one ObjectRef with a version number
The controller trains the flow model itself (it is the learner here; under Ray Tune its trainable holds the GPU).
Everything random is keyed by (seed, iteration), so `state_dict()` (weights, optimizer, iteration) resumes exactly.

    python -c "from runtime.config import load_config; from pipelines.mixgrpo import run_mixgrpo_local; \
               run_mixgrpo_local(load_config('configs/mixgrpo_toy.yaml'))"
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import Optional

import numpy as np
import torch

from flowrl.grpo import CONTROLS, FlowTrainer, autocast_wrapper, group_advantages_multi
from flowrl.window import WindowScheduler
from flowrl.worker import RewardCore, SamplerCore, concat_rollouts, sampler_settings


class MixGRPOPipeline:
    """`step() -> metrics`, `state_dict()`, `load_state_dict()`; `close()` stops the actors it started.

    `rewards` overrides reward functions by name (in-process only); `control` is a negative control for tests
    (see flowrl/grpo.py), never set in a real run; `bundle` replaces the model named by flow.model (benchmarks).
    """

    def __init__(self, cfg, rewards: Optional[dict] = None, control: Optional[str] = None, bundle=None):
        fc = cfg.flow
        if control not in CONTROLS:
            raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
        self.cfg, self.fc, self.control, self.iteration = cfg, fc, control, 0
        if fc.model == "toy2d":
            # The toy's matrices are tiny: intra-op threads only add overhead (10x slower on a busy 2-core box).
            torch.set_num_threads(1)
        self.weights = {k: float(w) for k, w in fc.reward_weights.items() if w}
        self.window = WindowScheduler(fc.window_mode, fc.num_steps, fc.window_size, fc.window_interval_iters,
                                      fc.window_stride, fc.window_decay, fc.subset_steps, cfg.run.seed, fc.flash)
        n = fc.prompts_per_iter * fc.group_size
        if n % fc.optimizer_steps_per_iter:
            raise ValueError(f"flow.optimizer_steps_per_iter: {fc.optimizer_steps_per_iter} does not divide the "
                             f"{n} samples of an iteration (prompts_per_iter * group_size)")
        part = n // fc.optimizer_steps_per_iter
        self.chunk_rows = fc.micro_batch_samples or part
        if part % self.chunk_rows:
            raise ValueError(f"flow.micro_batch_samples: {fc.micro_batch_samples} does not divide the {part} samples "
                             f"of one optimizer step")
        if fc.use_actors and (rewards or bundle is not None):
            raise ValueError("custom rewards and bundles run in-process only (flow.use_actors=false)")

        self.local = SamplerCore(fc, bundle)              # the controller's copy: the one that is trained
        self.bundle = self.local.bundle
        self.trainer = FlowTrainer(self.bundle.model, sampler_settings(fc, self.chunk_rows), fc.lr, fc.weight_decay,
                                   fc.clip_eps, fc.optimizer_steps_per_iter, fc.max_grad_norm,
                                   wrap=autocast_wrapper(fc.precision, torch.device(self.bundle.device).type))
        self.samplers: list = []
        self.reward_actors: list = []
        self.reward_core = None
        if fc.use_actors:
            self._start_actors()
        else:
            self.reward_core = RewardCore(list(self.weights), rewards)

    # ------------------------------------------------------------------------------------------------------ actors
    def _start_actors(self) -> None:
        import ray
        from actors.flow import start_flow_actors
        if not ray.is_initialized():
            ray.init(address=self.cfg.ray.address, num_cpus=self.cfg.ray.num_cpus, include_dashboard=False)
        self.samplers, self.reward_actors = start_flow_actors(
            self.fc, self.cfg.run.name, torch_threads=torch.get_num_threads(),
            sampler_gpus=1.0 if self.bundle.device.startswith("cuda") else 0.0)
        ray.get([a.ping.remote() for a in self.samplers + self.reward_actors], timeout=self.cfg.ray.get_timeout_s)
        self._weights_ref, self._version = None, -1

    def close(self) -> None:
        if self.samplers or self.reward_actors:
            import ray
            for a in self.samplers + self.reward_actors:
                ray.kill(a)
            self.samplers, self.reward_actors = [], []

    # ----------------------------------------------------------------------------------------------------- one step
    def _draw_prompts(self) -> tuple[list[int], list[int]]:
        rng = np.random.default_rng([self.cfg.run.seed, self.iteration, 7])
        idx = rng.integers(0, len(self.bundle.prompts), self.fc.prompts_per_iter)
        seeds = rng.integers(0, 2**31 - 1, self.fc.prompts_per_iter)
        return [int(i) for i in idx], [int(s) for s in seeds]

    def _sample_and_score(self, plan, idx, seeds):
        prompts = [self.bundle.prompts[i] for i in idx]
        if not self.fc.use_actors:
            ro, decoded = self.local.sample(plan, idx, seeds, self.chunk_rows)
            return ro, self.reward_core.score(decoded, _rows(prompts, self.fc.group_size))
        import ray
        timeout = self.cfg.ray.get_timeout_s
        if self._version != self.iteration:       # weights changed since the last ray.put
            self._weights_ref = ray.put({k: v.detach().cpu() for k, v in self.bundle.model.state_dict().items()})
            self._version = self.iteration
        k = len(self.samplers)
        bounds = np.linspace(0, len(idx), k + 1).astype(int)
        ro_refs, score_refs = [], []
        for w, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            if a == b:
                continue
            ro_ref, dec_ref = self.samplers[w].sample.options(num_returns=2).remote(
                [self._weights_ref], self._version, plan, idx[a:b], seeds[a:b], self.chunk_rows)
            ro_refs.append(ro_ref)
            rw = self.reward_actors[len(score_refs) % len(self.reward_actors)]
            score_refs.append(rw.score.remote(dec_ref, _rows(prompts[a:b], self.fc.group_size)))
        parts = ray.get(ro_refs, timeout=timeout)
        scores = ray.get(score_refs, timeout=timeout)
        merged = {name: [v for s in scores for v in s[name]] for name in scores[0]}
        return concat_rollouts(parts), merged

    def step(self) -> dict:
        t0 = time.perf_counter()
        plan = self.window.plan(self.iteration)
        idx, seeds = self._draw_prompts()
        ro, rewards = self._sample_and_score(plan, idx, seeds)
        t1 = time.perf_counter()
        adv = group_advantages_multi(rewards, self.weights, self.fc.group_size, self.fc.adv_clip, self.control,
                                     seed=self.cfg.run.seed * 100003 + self.iteration)
        train = self.trainer.train(ro, torch.as_tensor(adv, dtype=torch.float32), self.control)
        t2 = time.perf_counter()
        prompts = _rows([self.bundle.prompts[i] for i in idx], self.fc.group_size)
        m = {"iteration": self.iteration, "window_start": plan.sde_steps[0] if plan.sde_steps else -1,
             "trained_steps": len(plan.train_steps), "nfe": ro.nfe, "model_rows": ro.model_rows,
             "model_rows_unshared": ro.model_rows_unshared}
        for name, vals in rewards.items():
            m[f"reward/{name}"] = float(np.mean(vals))
        m["reward"] = float(sum(self.weights[k] * m[f"reward/{k}"] for k in self.weights) / sum(self.weights.values()))
        m.update(self.bundle.extra_metrics(ro.x_final, prompts))
        m.update({f"train/{k}": v for k, v in train.items()})
        m.update({"time/sample_s": t1 - t0, "time/train_s": t2 - t1, "time/iteration_s": t2 - t0})
        self.iteration += 1
        return m

    @torch.no_grad()
    def evaluate(self, num_prompts: int = 32, seed: int = 12345) -> dict:
        """Deterministic ODE samples (no SDE, G = 1 per seed) of a fixed prompt set: reward and extra metrics."""
        from flowrl.sampler import SamplePlan, sample_rollout
        rng = np.random.default_rng(seed)
        idx = [int(i) for i in rng.integers(0, len(self.bundle.prompts), num_prompts)]
        seeds = [int(s) for s in rng.integers(0, 2**31 - 1, num_prompts)]
        st = sampler_settings(self.fc, 0)
        st.group_size = 1
        prompts = [self.bundle.prompts[i] for i in idx]
        ro = sample_rollout(self.local.call, self.bundle.make_cond(prompts), seeds, self.bundle.latent_shape,
                            SamplePlan([], []), st, device=self.bundle.device, dtype=self.bundle.dtype)
        scores = (self.reward_core or RewardCore(list(self.weights))).score(self.bundle.decode(ro.x_final), prompts)
        m = {f"reward/{k}": float(np.mean(v)) for k, v in scores.items()}
        m["reward"] = float(sum(self.weights[k] * m[f"reward/{k}"] for k in self.weights) / sum(self.weights.values()))
        m.update(self.bundle.extra_metrics(ro.x_final, prompts))
        return m

    # ------------------------------------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        return {"iteration": self.iteration,
                "model": {k: v.detach().cpu().clone() for k, v in self.bundle.model.state_dict().items()},
                "optimizer": copy.deepcopy(self.trainer.opt.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        self.bundle.model.load_state_dict(state["model"])
        # torch adopts the given state tensors without copying; a deep copy keeps `state` reusable (resume twice).
        self.trainer.opt.load_state_dict(copy.deepcopy(state["optimizer"]))
        if self.samplers:
            self._version = -1                    # force a fresh weights ref for the actors


def _rows(prompts: list, g: int) -> list:
    """Per-prompt list -> per-sample list (prompt-major, G rows each)."""
    return [p for p in prompts for _ in range(g)]


def run_mixgrpo_local(cfg, out_dir: Optional[str] = None, steps: Optional[int] = None,
                      log_every: int = 10, **kw) -> list[dict]:
    """Run `run.total_steps` iterations without Tune (what tests and quick runs call); one line per `log_every`
    iterations on stdout, every metric to <out_dir>/metrics.jsonl when out_dir is given. Returns the metrics."""
    pipe = MixGRPOPipeline(cfg, **kw)
    history = []
    fh = None
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        fh = open(os.path.join(out_dir, "metrics.jsonl"), "a")
    try:
        for _ in range(steps if steps is not None else cfg.run.total_steps):
            m = pipe.step()
            history.append(m)
            if fh:
                fh.write(json.dumps(m) + "\n")
                fh.flush()
            if log_every and (m["iteration"] % log_every == 0):
                extra = f" hit {m['hit']:.3f}" if "hit" in m else ""
                print(f"[mixgrpo] it {m['iteration']:4d} window {m['window_start']:2d} reward {m['reward']:+.4f}{extra}"
                      f" clip {m['train/clip_fraction']:.3f} nfe {m['nfe']} {m['time/iteration_s']*1e3:.0f} ms",
                      flush=True)
    finally:
        if fh:
            fh.close()
        pipe.close()
    return history
