"""`launch.py train`: the run as a Ray Tune function trainable, with checkpoints, resume and graceful stop.

    python launch.py train --config configs/demo_cpu.yaml [key=value ...]
    python launch.py train --resume runs/<name>                 # continue from the last checkpoint
    ray job submit --working-dir . -- python launch.py train --config configs/kevin_qwq32b.yaml

- Start-up: the resource planner's memory check (planner.cli.check_fits) runs before the run directory, Ray or any
  actor exists; a configuration that does not fit exits with code 2 and the planner's message unless
  run.skip_fit_check=true.
- The trial's loop is runtime/loop.py (`run.pipeline`: kernel_grpo or mixgrpo).
- Ray: a new local Ray (ray.num_cpus / ray.num_gpus) unless ray.address is set or RAY_ADDRESS is in the environment
  (`ray job submit`), then it connects to that cluster without resource arguments.
- Tune: one trial, `tune.with_resources(trainable, PlacementGroupFactory(bundles))`. The first bundle is the trainable
  (the controller); one more bundle per actor it starts (rollout workers, learner ranks, evaluator pool, compile
  workers, runners). Tune creates the placement group with child-task capture, so the actors the controller starts land
  in it and the trial waits until the whole group fits; `resource_bundles` prints what it asks for.
- Checkpoints: every run.checkpoint_every_steps steps `tune.report(metrics, checkpoint=...)` with the full state
  (runtime/checkpoint.py). RunConfig(failure_config=FailureConfig(max_failures=run.max_failures)) restarts a crashed
  trial from its last checkpoint; `--resume RUN_DIR` is Tuner.restore(<run dir>/tune, resume_errored=True).
- SIGINT/SIGTERM: the controller abandons the step in progress (its state is the one from before the step), writes a
  final checkpoint, then Tune ends the experiment (SIGUSR1, Tune's graceful stop) so the trial stays resumable.
  A second signal exits at once. Under `ray job submit` put RAY_JOB_STOP_SIGNAL=SIGINT and a longer
  RAY_JOB_STOP_WAIT_TIME_S in the job's runtime_env env_vars (docs/operations.md).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Optional

import ray
import yaml

from runtime.rundir import RunDir, run_dir_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STOP_POLL_S = 1.0


# ----------------------------------------------------------------------------------------------------- stop requests
@ray.remote(num_cpus=0)
class RunControl:
    """Carries a stop request from the driver (signal handler) to the controller inside the trial."""

    def __init__(self, name: str):
        self.name, self.stop_requested, self.stopped_at = name, False, None

    def __repr__(self) -> str:
        return f"RunControl({self.name}, stop={self.stop_requested})"

    def request_stop(self) -> None:
        self.stop_requested = True

    def should_stop(self) -> bool:
        return self.stop_requested

    def mark_stopped(self, step: int) -> None:
        self.stopped_at = step

    def stopped(self) -> Optional[int]:
        return self.stopped_at


def control_name(run_name: str) -> str:
    return f"run-control:{run_name}"


class StopFlag:
    """Callable for the controller: True once a stop was requested (polled at most every STOP_POLL_S)."""

    def __init__(self, handle):
        self.handle, self.last, self.value = handle, 0.0, False

    def __call__(self) -> bool:
        if self.handle is None or self.value:
            return self.value
        if time.time() - self.last >= STOP_POLL_S:
            self.last = time.time()
            try:
                self.value = bool(ray.get(self.handle.should_stop.remote(), timeout=10))
            except Exception:       # noqa: BLE001 - the driver is gone: keep going, Tune decides
                self.handle = None
        return self.value


# ------------------------------------------------------------------------------------------------------- resources
def resource_bundles(cfg) -> list[dict]:
    """Placement-group bundles of one trial: the controller first, then every actor the run starts."""
    return bundle_plan(cfg)[0]


def bundle_plan(cfg) -> tuple[list[dict], dict]:
    """(bundles, role -> bundle index per actor). Disaggregated: one bundle per actor, so roles never share a GPU and
    their phases overlap across steps. Colocated (with GPUs): one bundle per GPU; rollout worker i and learner rank i
    are pinned to GPU bundle i, runners and compile workers fill the rest (the engine sleeps while kernels are timed
    and while the learner trains), so gpus_per_worker + gpus_per_rank + gpus_per_runner should add up to <= 1."""
    def b(cpu: float, gpu: float = 0.0) -> dict:
        out = {"CPU": float(cpu)}
        if gpu > 0:
            out["GPU"] = float(gpu)
        return out
    if cfg.run.pipeline == "mixgrpo":
        return _mixgrpo_bundles(cfg, b)
    ro, le, ev = cfg.rollout, cfg.learner, cfg.evaluator
    roles = [("rollout", b(ro.cpus_per_worker, ro.gpus_per_worker), ro.num_workers),
             ("learner", b(le.cpus_per_rank, le.gpus_per_rank), le.num_ranks),
             ("compile", b(ev.compile_jobs), ev.num_compile_workers),
             ("runner", b(1, ev.gpus_per_runner), ev.num_runners)]
    bundles, index = [b(1)], {}                                           # controller (+ 0-CPU small actors)
    for role, bundle, n in roles:
        index[role] = list(range(len(bundles), len(bundles) + n))
        bundles += [dict(bundle) for _ in range(n)]
    if cfg.placement.mode != "colocated" or not any("GPU" in x for x in bundles):
        return bundles, index
    rest = bundles[1:]
    gpus = max(1, int(round(sum(x.get("GPU", 0.0) for x in rest))))
    cpu_per_gpu = sum(x["CPU"] for x in rest) / gpus
    index = {"rollout": [1 + i % gpus for i in range(ro.num_workers)],
             "learner": [1 + i % gpus for i in range(le.num_ranks)]}
    return [bundles[0]] + [{"CPU": cpu_per_gpu, "GPU": 1.0} for _ in range(gpus)], index


def _mixgrpo_bundles(cfg, b) -> tuple[list[dict], dict]:
    """MixGRPO: the controller trains the flow model in its own process (one GPU when it runs on CUDA); with
    flow.use_actors, one bundle per sampler (its GPU too) and per reward actor."""
    import torch
    fc = cfg.flow
    on_gpu = fc.device == "cuda" or (fc.device == "auto" and (cfg.ray.num_gpus or 0) > 0) or \
        (fc.device == "auto" and cfg.ray.num_gpus is None and torch.cuda.is_available())
    bundles, index = [b(1, 1.0 if on_gpu else 0.0)], {}
    if fc.use_actors:
        index["sampler"] = list(range(1, 1 + fc.num_sampler_workers))
        bundles += [b(1, 1.0 if on_gpu else 0.0) for _ in range(fc.num_sampler_workers)]
        index["reward"] = list(range(len(bundles), len(bundles) + fc.num_reward_workers))
        bundles += [b(1) for _ in range(fc.num_reward_workers)]
    return bundles, index


# --------------------------------------------------------------------------------------------------------- trainable
def trainable(config: dict) -> None:
    """The Tune function trainable: builds the actors, restores the checkpoint if any, runs the steps."""
    from runtime.config import config_from_dict
    from runtime.loop import run_training
    cfg = config_from_dict(config["cfg"])
    try:
        ctrl = ray.get_actor(control_name(cfg.run.name))
    except ValueError:
        ctrl = None
    run_training(cfg, RunDir(config["run_dir"]), StopFlag(ctrl), ctrl)


# -------------------------------------------------------------------------------------------------------------- main
def main(cfg, args) -> int:
    """Resolve, print and save the config; start or join Ray; run (or resume) the Tune experiment."""
    from runtime.config import ConfigError, config_from_dict
    resume = getattr(args, "resume", None)
    if resume:
        rd = RunDir(os.path.abspath(resume))
        if not os.path.isdir(rd.experiment):
            print(f"config error: --resume {resume}: no Tune experiment at {rd.experiment}", file=sys.stderr)
            return 2
        try:
            with open(rd.config) as fh:
                cfg = config_from_dict(yaml.safe_load(fh))
        except (OSError, ConfigError) as e:
            print(f"config error: --resume {resume}: {e}", file=sys.stderr)
            return 2
    if not _fits(cfg) or not _tasks_ok(cfg):          # before anything starts or is written
        return 2
    if not resume:
        rd = run_dir_for(cfg)
        if os.path.isdir(rd.experiment):
            print(f"config error: run.name: {rd.root} already holds a run; resume it with --resume {rd.root} "
                  f"or choose another run.name", file=sys.stderr)
            return 2
    rd.make()
    text = cfg.to_yaml()
    print(f"run directory: {rd.root}\n--- resolved config ---\n{text}-----------------------", flush=True)
    if not resume:
        with open(rd.config, "w") as fh:
            fh.write(text)
    init_ray(cfg)
    try:
        return _fit(cfg, rd, resume=bool(resume))
    finally:
        ray.shutdown()


def _fits(cfg) -> bool:
    """The resource planner's memory check, before anything starts (run.skip_fit_check=true starts anyway). The
    planner models the kernel pipeline's LLM roles; MixGRPO is not checked."""
    from planner.cli import check_fits
    if cfg.run.pipeline != "kernel_grpo":
        return True
    report = check_fits(cfg)
    if not report.fits and not cfg.run.skip_fit_check:
        print(report.message, file=sys.stderr)
        return False
    if not report.fits:
        print(f"{report.message}\nrun.skip_fit_check=true: starting anyway", file=sys.stderr, flush=True)
    elif not report.checked:
        print(report.message, flush=True)
    return True


def _tasks_ok(cfg) -> bool:
    """Load the task list once here (AST checks only, no size profile) so a missing directory or a broken task file
    is a config error before anything starts, not a failed trial. The trainable loads them again where it runs:
    under `ray job submit`, tasks.path must exist on that node too."""
    if cfg.run.pipeline != "kernel_grpo":
        return True
    import dataclasses
    from kernel_eval.tasks import TaskError, load_tasks
    try:
        load_tasks(dataclasses.replace(cfg.tasks, size_profile="as_published"))
    except TaskError as e:
        print(f"config error: tasks: {e}", file=sys.stderr)
        return False
    return True


def init_ray(cfg) -> None:
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")      # our handler checkpoints first, then stops Tune
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune saves its experiment state (which lists the trial's checkpoints) at most this often; the default ("auto",
    # >= 10 s) could lose the last checkpoint when the driver is killed. The state of one trial is a few kB.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    env = {"env_vars": {"PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}}
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:      # a cluster (ray job submit): its resources are what they are
        ray.init(address=address, runtime_env=None if os.environ.get("RAY_JOB_ID") else env)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus, include_dashboard=cfg.ray.dashboard,
                 runtime_env=env)


def _fit(cfg, rd: RunDir, resume: bool) -> int:
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    bundles = resource_bundles(cfg)
    print(f"trial placement group ({cfg.placement.mode}): {bundles}; cluster: {ray.cluster_resources()}", flush=True)
    ctrl = RunControl.options(name=control_name(cfg.run.name)).remote(cfg.run.name)
    trial_fn = tune.with_resources(trainable, tune.PlacementGroupFactory(bundles))
    if resume:
        tuner = tune.Tuner.restore(rd.experiment, trainable=trial_fn, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trial_fn, param_space={"cfg": cfg.to_dict(), "run_dir": rd.root},
            tune_config=tune.TuneConfig(num_samples=1),
            run_config=tune.RunConfig(
                name=os.path.basename(rd.experiment), storage_path=rd.root, verbose=0,
                callbacks=[JsonLoggerCallback()],      # result.json per trial (Tune's result grid reads it)
                failure_config=tune.FailureConfig(max_failures=cfg.run.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints)))
    stopper = _install_signal_handlers(ctrl)
    results = tuner.fit()
    if stopper.requested:
        step = _get(ctrl.stopped.remote())
        print(f"stopped after a final checkpoint at step {step}; resume with: python launch.py train --resume "
              f"{rd.root}", flush=True)
        return 0
    errors = [r.error for r in results if r.error]
    if errors:
        print(f"run failed: {errors[0]}", file=sys.stderr)
        return 1
    print(f"done: {rd.root} (metrics.jsonl, trajectories.jsonl, plots/, summary.md)", flush=True)
    return 0


def _get(ref, timeout: float = 10.0):
    try:
        return ray.get(ref, timeout=timeout)
    except Exception:   # noqa: BLE001
        return None


class _Stopper:
    requested = False


def _install_signal_handlers(ctrl) -> _Stopper:
    """First SIGINT/SIGTERM: ask the controller for a final checkpoint, then let Tune stop gracefully (SIGUSR1).
    Second signal: exit at once."""
    state = _Stopper()

    def wait_then_stop_tune() -> None:
        deadline = time.time() + float(os.environ.get("SANDBOX_RL_STOP_WAIT_S", "600"))
        while time.time() < deadline and _get(ctrl.stopped.remote(), 5) is None:
            time.sleep(0.5)
        time.sleep(2.0)     # let Tune register the checkpoint report before the experiment state is saved
        os.kill(os.getpid(), signal.SIGUSR1)

    def handler(signum, frame) -> None:
        if state.requested:
            print("second signal: exiting without waiting", file=sys.stderr, flush=True)
            os._exit(130)
        state.requested = True
        print(f"{signal.Signals(signum).name}: writing a final checkpoint, then stopping", flush=True)
        ctrl.request_stop.remote()
        threading.Thread(target=wait_then_stop_tune, daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    return state
