"""launch.py: configuration errors exit with code 2, name the key, and start nothing (no Ray, no run directory).

    python -m pytest tests/test_launch.py -q
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from runtime.trainer import resource_bundles
from runtime.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args: str, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, WANDB_MODE="disabled")
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, must_name", [
    (["algo.trajectories_per_tsk=4"], ["algo.trajectories_per_tsk", "algo.trajectories_per_task"]),
    (["algo.max_turns=many"], ["algo.max_turns", "int"]),
    (["rollout.engine=tgi"], ["rollout.engine", "'hf'", "'vllm'"]),
    (["algo.gamma=1.5"], ["algo.gamma"]),
    (["runn.total_steps=3"], ["runn", "run"]),
    (["evaluator.compile_worker_cpus=-1"], ["evaluator.compile_worker_cpus"]),
])
def test_bad_override_exits_2_naming_the_key(tmp_path, args, must_name):
    r = _launch("train", "--config", os.path.join(ROOT, "configs", "tiny_test.yaml"),
                f"run.output_dir={tmp_path}", *args, cwd=str(tmp_path))
    assert r.returncode == 2, r.stderr
    for s in must_name:
        assert s in r.stderr, (s, r.stderr)
    assert not os.path.exists(os.path.join(tmp_path, "tiny-test")), "a run directory was created"
    assert "ray" not in r.stdout.lower() or "Started a local Ray" not in r.stdout


def test_bad_yaml_key_names_the_closest(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("algo:\n  tasks_per_stp: 2\nrun:\n  output_dir: %s\n" % tmp_path)
    r = _launch("train", "--config", str(cfg), cwd=str(tmp_path))
    assert r.returncode == 2
    assert "algo.tasks_per_stp" in r.stderr and "algo.tasks_per_step" in r.stderr
    assert os.listdir(tmp_path) == ["bad.yaml"]


@pytest.mark.parametrize("args, must_name", [
    (["tasks.source=dir", "tasks.path=/no/such/kernelbench"], ["tasks", "/no/such/kernelbench"]),
    (["tasks.names=[no_such_task]"], ["tasks", "no_such_task"]),
])
def test_missing_tasks_exit_2_before_anything_starts(tmp_path, args, must_name):
    r = _launch("train", "--config", os.path.join(ROOT, "configs", "tiny_test.yaml"),
                f"run.output_dir={tmp_path}", *args, cwd=str(tmp_path))
    assert r.returncode == 2, r.stderr
    for s in must_name:
        assert s in r.stderr, (s, r.stderr)
    assert "Traceback" not in r.stderr
    assert not os.path.exists(os.path.join(tmp_path, "tiny-test")), "a run directory was created"


def test_resume_of_a_missing_run_exits_2(tmp_path):
    r = _launch("train", "--resume", str(tmp_path / "nothing-here"), cwd=str(tmp_path))
    assert r.returncode == 2 and "nothing-here" in r.stderr


def test_every_shipped_config_validates_and_plans_bundles():
    for name in ("demo_cpu", "tiny_test", "kevin_qwq32b", "coder_1gpu"):
        cfg = load_config(os.path.join(ROOT, "configs", f"{name}.yaml"))
        bundles = resource_bundles(cfg)
        assert bundles[0] == {"CPU": 1.0}                  # the controller's own bundle comes first
        gpus = sum(b.get("GPU", 0) for b in bundles)
        if cfg.placement.mode == "colocated" and gpus:
            assert all(b["GPU"] == 1.0 for b in bundles[1:])   # one bundle per shared GPU
    kevin = load_config(os.path.join(ROOT, "configs", "kevin_qwq32b.yaml"))
    assert (kevin.algo.tasks_per_step, kevin.algo.trajectories_per_task, kevin.algo.max_turns) == (8, 16, 4)
    assert sum(b.get("GPU", 0) for b in resource_bundles(kevin)) == 8


# ------------------------------------------------------------------------------------------- resource planner check
def _not_fitting(tmp_path) -> list[str]:
    """tiny_test on a node the planner is told has 1 MiB of memory: the CPU-memory check must fail."""
    return ["train", "--config", os.path.join(ROOT, "configs", "tiny_test.yaml"), f"run.output_dir={tmp_path}",
            "placement.cpu_memory_gib=0.001"]


def test_a_config_that_does_not_fit_exits_2_and_starts_nothing(tmp_path):
    r = _launch(*_not_fitting(tmp_path), cwd=str(tmp_path))
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "will run out of memory" in r.stderr and "CPU memory" in r.stderr, r.stderr
    assert "run.skip_fit_check=true" in r.stderr                 # the message says how to start anyway
    assert os.listdir(tmp_path) == [], "a run directory was created"
    assert "Started a local Ray" not in r.stdout + r.stderr


def test_skip_fit_check_proceeds_past_the_check(tmp_path):
    # an existing run of the same name stops start-up at the next check, so nothing heavy starts
    os.makedirs(tmp_path / "tiny-test" / "tune")
    r = _launch(*_not_fitting(tmp_path), "run.skip_fit_check=true", cwd=str(tmp_path))
    assert r.returncode == 2
    assert "starting anyway" in r.stderr                         # the planner's verdict is still shown
    assert "already holds a run" in r.stderr                     # ... and start-up went on past it
    assert "Started a local Ray" not in r.stdout + r.stderr


def test_the_kevin_recipe_passes_the_planner_check():
    from planner.cli import check_fits
    report = check_fits(load_config(os.path.join(ROOT, "configs", "kevin_qwq32b.yaml")))
    assert report.fits, report.message
