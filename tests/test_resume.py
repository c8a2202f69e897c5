"""Resume: a driver SIGKILLed in the middle of a step resumes with the same next step and tasks as an uninterrupted
run, nothing counted twice or lost; resuming twice from one checkpoint gives the same next step.

    python -m pytest tests/test_resume.py -q
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipelines.kernel_grpo import TaskSampler
from runtime.config import load_config
from runtime.metrics import read_jsonl
from test_evaluator import TEST_CACHE          # one build cache shared by the test session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny_test.yaml")


def _expected_tasks(cfg, names: list[str], steps: int) -> list[list[str]]:
    sampler = TaskSampler(len(names), cfg.run.seed)
    return [[names[i] for i in sampler.draw(cfg.algo.tasks_per_step)] for _ in range(steps)]


def test_task_sampler_state_round_trip():
    a = TaskSampler(5, 3)
    a.draw(4)
    state = json.loads(json.dumps(a.state_dict()))    # survives a JSON/pickle round trip
    b, c = TaskSampler(5, 3), TaskSampler(5, 3)
    b.load_state_dict(state), c.load_state_dict(state)
    assert a.draw(7) == b.draw(7) == c.draw(7)


def test_sigkill_mid_step_then_resume(tmp_path):
    from kernel_eval.tasks import load_tasks
    env = dict(os.environ, PYTHONPATH=ROOT, WANDB_MODE="disabled")
    cmd = [sys.executable, os.path.join(ROOT, "launch.py"), "train", "--config", TINY, f"run.output_dir={tmp_path}",
           "run.total_steps=3", "run.name=killed", f"evaluator.cache_dir={TEST_CACHE}"]
    rd = tmp_path / "killed"
    proc = subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(read_jsonl(str(rd / "metrics.jsonl"))) < 1:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.5)
        time.sleep(3.0)                          # step 1 is under way (checkpoint of step 0 written meanwhile)
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)        # the driver only
        proc.wait(30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the local Ray this driver started (same session)
        except ProcessLookupError:
            pass
    r = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "train", "--resume", str(rd)],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resumed from checkpoint" in r.stdout + r.stderr
    rows = read_jsonl(str(rd / "metrics.jsonl"))
    assert [m["step"] for m in rows] == [0, 1, 2]                 # nothing twice, nothing lost
    cfg = load_config(str(rd / "config.yaml"))
    names = [t.name for t in load_tasks(cfg.tasks)]
    assert [m["tasks"] for m in rows] == _expected_tasks(cfg, names, 3)   # = the uninterrupted run's draws
    assert [m["weight_version"] for m in rows] == [1, 2, 3]
    traj = [json.loads(x) for x in open(rd / "trajectories.jsonl")]
    keys = [(t["step"], t["trajectory_id"], t["turn"]) for t in traj]
    assert len(keys) == len(set(keys)) == 3 * 2 * 2 * 2


def test_resuming_twice_from_one_checkpoint_gives_the_same_next_step(ray_local, tmp_path):
    from pipelines.kernel_grpo import KernelGRPO, build_actors
    from runtime.rundir import RunDir
    cfg = load_config(TINY, [f"run.output_dir={tmp_path}", "run.name=twice", f"evaluator.cache_dir={TEST_CACHE}"])
    rd = RunDir(str(tmp_path / "twice")).make()
    a = build_actors(cfg, rd)
    ctl = KernelGRPO(cfg, a.tasks, a.workers, a.pool, a.learner, a.aggregator, rd, progress=False)
    ctl.train_step()
    ctl.save(str(tmp_path / "ckpt"))
    runs = []
    for _ in range(2):
        ctl.restore(str(tmp_path / "ckpt"))
        runs.append(ctl.train_step())
    keys = ("step", "tasks", "weight_version", "reward", "rejections", "response_tokens_total", "loss")
    assert [{k: r.get(k) for k in keys} for r in runs][0] == [{k: r.get(k) for k in keys} for r in runs][1]
    assert runs[0]["step"] == 1


def test_mixgrpo_runs_in_the_trainer_stops_on_sigint_and_resumes(tmp_path):
    """run.pipeline=mixgrpo through launch.py: the same Tune trainable, a final checkpoint on SIGINT, and a resume that
    continues at the next iteration (metrics lines 0..N-1 exactly once)."""
    env = dict(os.environ, PYTHONPATH=ROOT, WANDB_MODE="disabled")
    total = 200
    cmd = [sys.executable, os.path.join(ROOT, "launch.py"), "train", "--config",
           os.path.join(ROOT, "configs", "mixgrpo_toy.yaml"), f"run.output_dir={tmp_path}", "run.name=flow",
           f"run.total_steps={total}", "run.checkpoint_every_steps=100", "ray.num_cpus=2", "ray.dashboard=false"]
    rd = tmp_path / "flow"
    proc = subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(read_jsonl(str(rd / "metrics.jsonl"))) < 5:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    assert "stopped after a final checkpoint at step" in out, out[-3000:]
    stopped_at = len(read_jsonl(str(rd / "metrics.jsonl")))
    assert 5 <= stopped_at < total, "the run was not stopped mid-way"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "train", "--resume", str(rd)],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"resumed from checkpoint: next step {stopped_at}" in r.stdout + r.stderr
    rows = read_jsonl(str(rd / "metrics.jsonl"))
    assert [m["step"] for m in rows] == list(range(total))
    hit = [m["hit"] for m in rows]                                   # it learns (MIXGRPO.md: hit 0.45 -> ~0.99)
    assert sum(hit[-20:]) / 20 > sum(hit[:20]) / 20 + 0.1, (hit[:20], hit[-20:])
    assert (rd / "plots" / "reward.png").stat().st_size > 1000
    assert f"steps finished: {total} of {total}" in (rd / "summary.md").read_text()
