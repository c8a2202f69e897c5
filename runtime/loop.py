"""The trial's loop (inside the Ray Tune function trainable of runtime/trainer.py), one per pipeline:

- `run.pipeline: kernel_grpo`: build the actors, restore Tune's checkpoint if any, run KernelGRPO steps.
- `run.pipeline: mixgrpo`: MixGRPOPipeline (pipelines/mixgrpo.py) in the trial's process, same run directory layout,
  checkpoints and resume.

Both append one line per step to metrics.jsonl, print one progress line per step, rewrite plots/ and summary.md,
and report `tune.report(metrics, checkpoint=...)` every run.checkpoint_every_steps steps and after the last one. A
resumed trial first drops the lines of steps after its checkpoint (they are redone: nothing is counted twice).

    python launch.py train --config configs/tiny_test.yaml
    python launch.py train --config configs/mixgrpo_toy.yaml
"""
from __future__ import annotations

import os
import pickle
import random
import shutil
import tempfile
import time
from typing import Callable, Optional

import numpy as np
import torch

from runtime.rundir import RunDir, truncate_jsonl


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Reporter:
    """tune.report with a checkpoint written by `save(dir)` into a temporary directory (Tune copies it)."""

    def __init__(self, save: Callable[[str], None]):
        self.save = save

    def __call__(self, m: dict, with_checkpoint: bool, step: int) -> None:
        from ray import tune
        scalars = {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not with_checkpoint:
            tune.report(scalars)
            return
        t0 = time.time()
        d = tempfile.mkdtemp(prefix="ckpt-")
        try:
            self.save(d)
            tune.report(scalars, checkpoint=tune.Checkpoint.from_directory(d))
        finally:
            shutil.rmtree(d, ignore_errors=True)
        print(f"checkpoint at step {step} ({time.time() - t0:.1f}s)", flush=True)


def _finish_stopped(reporter: _Reporter, step: int, ctrl) -> None:
    """A stop request: final checkpoint, tell the driver, then wait for Tune to end the trial (SIGUSR1)."""
    reporter({"step": step, "stopped": 1}, with_checkpoint=True, step=step)
    if ctrl is not None:
        ctrl.mark_stopped.remote(step)
        time.sleep(float(os.environ.get("SANDBOX_RL_STOP_WAIT_S", "600")))


def run_training(cfg, rd: RunDir, stop, ctrl=None) -> None:
    if cfg.run.pipeline == "mixgrpo":
        return run_mixgrpo(cfg, rd, stop, ctrl)
    return run_kernel_grpo(cfg, rd, stop, ctrl)


# ---------------------------------------------------------------------------------------------------- kernel GRPO
def run_kernel_grpo(cfg, rd: RunDir, stop, ctrl=None) -> None:
    """Build actors, restore the checkpoint (if Tune has one), run steps, report checkpoints."""
    import ray
    from ray import tune

    from pipelines.kernel_grpo import KernelGRPO, build_actors
    from runtime import plots, wandb_log
    from runtime.metrics import append_jsonl, progress_line

    timeout = cfg.ray.get_timeout_s
    _seed_everything(cfg.run.seed)
    t0 = time.time()
    actors = build_actors(cfg, rd)
    print(f"actors ready in {time.time() - t0:.1f}s: {len(actors.workers)} rollout worker(s), learner, evaluator "
          f"pool, {len(actors.tasks)} tasks", flush=True)
    controller = KernelGRPO(cfg, actors.tasks, actors.workers, actors.pool, actors.learner, actors.aggregator, rd,
                            stop=stop)
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            controller.restore(d)
        print(f"resumed from checkpoint: next step {controller.step}, weight version {controller.weight_version}",
              flush=True)
    # a resumed run redoes every step after its checkpoint: drop what those steps had written (nothing twice)
    truncate_jsonl(rd.metrics, controller.step)
    ray.get(actors.aggregator.truncate_trajectories.remote(controller.step), timeout=timeout)
    wb = wandb_log.start(cfg, rd)
    report = _Reporter(controller.save)
    stopped = False
    every, total = cfg.run.checkpoint_every_steps, cfg.run.total_steps
    while controller.step < total:
        m = None if stop() else controller.train_step()
        if m is None:
            stopped = True
            break
        # metrics line first, checkpoint right after: a kill in between resumes from the previous checkpoint and
        # that step's line is dropped and redone (truncate_jsonl above), so nothing is lost or counted twice
        append_jsonl(rd.metrics, m)
        print(progress_line(m, total), flush=True)
        report(m, (every > 0 and controller.step % every == 0) or controller.step == total, controller.step)
        actors.aggregator.publish.remote(m)
        plots.write_plots(rd)
        plots.write_summary(rd, cfg)
        wb.log(m)
    plots.write_summary(rd, cfg)
    wb.finish()
    if stopped:
        _finish_stopped(report, controller.step, ctrl)


# --------------------------------------------------------------------------------------------------------- MixGRPO
MIXGRPO_STATE = "mixgrpo.pt"


def run_mixgrpo(cfg, rd: RunDir, stop, ctrl=None) -> None:
    """MixGRPO iterations in the trial's process (the controller trains the flow model itself)."""
    from ray import tune

    from pipelines.mixgrpo import MixGRPOPipeline
    from runtime import plots, wandb_log
    from runtime.metrics import append_jsonl, mixgrpo_progress_line

    _seed_everything(cfg.run.seed)
    pipe = MixGRPOPipeline(cfg)

    def save(d: str) -> None:
        tmp = os.path.join(d, MIXGRPO_STATE + ".tmp")
        torch.save({"pipeline": pipe.state_dict(), "rng": _rng_states()}, tmp)
        os.replace(tmp, os.path.join(d, MIXGRPO_STATE))

    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            state = torch.load(os.path.join(d, MIXGRPO_STATE), weights_only=False)
        pipe.load_state_dict(state["pipeline"])
        _set_rng_states(state["rng"])
        print(f"resumed from checkpoint: next step {pipe.iteration}", flush=True)
    truncate_jsonl(rd.metrics, pipe.iteration)
    wb = wandb_log.start(cfg, rd)
    report = _Reporter(save)
    every, total = cfg.run.checkpoint_every_steps, cfg.run.total_steps
    log_every = max(1, total // 20)
    stopped = False
    try:
        while pipe.iteration < total:
            if stop():
                stopped = True
                break
            m = pipe.step()
            m["step"] = m["iteration"]
            append_jsonl(rd.metrics, m)
            if m["step"] % log_every == 0 or pipe.iteration == total:
                print(mixgrpo_progress_line(m, total), flush=True)
            wb.log(m)
            ckpt = (every > 0 and pipe.iteration % every == 0) or pipe.iteration == total
            if ckpt:
                plots.write_plots(rd, pipeline="mixgrpo")
            report(m, ckpt, pipe.iteration)
        plots.write_plots(rd, pipeline="mixgrpo")
        plots.write_summary(rd, cfg)
        wb.finish()
        if stopped:
            _finish_stopped(report, pipe.iteration, ctrl)
    finally:
        pipe.close()


def _rng_states() -> bytes:
    from runtime.checkpoint import rng_states
    return pickle.dumps(rng_states())


def _set_rng_states(b: Optional[bytes]) -> None:
    from runtime.checkpoint import set_rng_states
    if b:
        set_rng_states(pickle.loads(b))
