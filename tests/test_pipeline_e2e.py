"""End to end on CPU: the full kernel pipeline through launch.py (tiny random model, CPU evaluator, built-in tasks,
local Ray, Ray Tune), plus the correct/speedup path with a scripted rollout, and the controller's memory bound.

The tiny random model never writes a compiling kernel, so the launch.py run mostly exercises format failures. The
correct/speedup path uses `ReplayRolloutWorker`: a real RolloutWorker whose engine is replaced by a deterministic
REPLAY engine (a test fixture) that answers every prompt with a known-good built-in solution.

    python -m pytest tests/test_pipeline_e2e.py -q
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

import pytest
import ray

from runtime.config import load_config
from runtime.metrics import metric_names, read_jsonl
from test_evaluator import TEST_CACHE          # one build cache shared by the test session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny_test.yaml")


# ------------------------------------------------------------------------------------------- the replay fixture
class ReplayEngine:
    """TEST FIXTURE, not a model: answers every prompt with `text` (token ids of `token_text`, logprob -1 each)."""

    def __init__(self, tokenizer, text: str, token_text: str):
        self.text = text
        self.ids = tokenizer(token_text, add_special_tokens=False)["input_ids"]
        self.weight_version = 0

    def generate(self, prompts, params):
        from engines.base import Generation
        return [Generation(prompt_ids=list(p), token_ids=list(self.ids), logprobs=[-1.0] * len(self.ids),
                           text=self.text, finish_reason="stop") for p in prompts]

    def generate_each(self, prompts, params):
        return self.generate(prompts, params[0] if params else None)

    def load_weights(self, state):
        pass

    def sleep(self, level=1):
        pass

    def wake_up(self):
        pass

    def close(self):
        pass


def replay_worker(cfg, solution: str, padding_chars: int = 0, name: str = "replay-0"):
    from ray import cloudpickle
    from actors.rollout import RolloutWorker
    cloudpickle.register_pickle_by_value(sys.modules[__name__])     # Ray workers cannot import tests/ modules

    class ReplayRolloutWorker(RolloutWorker):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.set_padding(padding_chars)

        def set_padding(self, chars: int) -> None:
            """Answer with `chars` extra characters of text after the summary (the token ids stay the same)."""
            answer = f"```python\n{solution}\n```\nA C++ kernel replaces the operator."
            self.engine = ReplayEngine(self.tokenizer, answer + " " + "x" * chars, answer)

    return ray.remote(ReplayRolloutWorker).options(name=name, num_cpus=0, max_concurrency=256).remote(
        cfg.model, cfg.rollout, seed=0, name=name)


def tiny_cfg(tmp_path, *overrides):
    return load_config(TINY, [f"run.output_dir={tmp_path}", f"evaluator.cache_dir={TEST_CACHE}", *overrides])


# ------------------------------------------------------------------------------------------- launch.py end to end
def test_launch_train_two_steps_end_to_end(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, WANDB_MODE="disabled")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "train", "--config", TINY,
                        f"run.output_dir={tmp_path}", f"evaluator.cache_dir={TEST_CACHE}"], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                       timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rd = tmp_path / "tiny-test"
    assert (rd / "config.yaml").exists() and "tasks_per_step: 2" in (rd / "config.yaml").read_text()
    rows = read_jsonl(str(rd / "metrics.jsonl"))
    assert [m["step"] for m in rows] == [0, 1]
    for m in rows:
        for k in ("reward", "correct_per_turn", "speedup_per_turn", "best_at_g_correct", "avg_at_g_correct",
                  "rejections", "not_okay_per_turn", "response_tokens_mean", "tokens_per_s", "time_generate_s",
                  "time_evaluate_s", "time_train_s", "time_sync_s", "eval_stall_fraction", "weight_sync_s"):
            assert k in m, k
        assert 0.0 <= m["eval_stall_fraction"] <= 1.0
        assert sum(m["rejections"].values()) == m["samples"] - round(m["correct"] * m["samples"])
    assert [m["weight_version"] for m in rows] == [1, 2]
    assert rows[1]["sampled_weight_versions"] == [1]          # step 1 sampled under the weights of step 0's update
    traj = [json.loads(x) for x in (rd / "trajectories.jsonl").read_text().splitlines()]
    assert len(traj) == 2 * 2 * 2 * 2                          # steps x tasks x trajectories x turns
    for rec in traj:
        for k in ("prompt", "response", "kernel", "eval", "score", "return", "advantage", "weight_version"):
            assert k in rec, k
    assert {(t["step"], t["trajectory_id"], t["turn"]) for t in traj}.__len__() == len(traj)
    for png in ("reward.png", "correctness.png", "speedup.png"):
        assert (rd / "plots" / png).stat().st_size > 1000
    assert "steps finished: 2 of 2" in (rd / "summary.md").read_text()
    assert "step 1/2 reward" in r.stdout                       # one progress line per step


# ------------------------------------------------------------------------------------------- scripted rollout
@pytest.fixture(scope="module")
def pipeline_actors(ray_local, tmp_path_factory):
    from actors.evaluator import start_evaluator_pool
    from actors.learner import LearnerGroup
    from actors.reward import RewardAggregator
    from kernel_eval.tasks import builtin_solution, get_task
    tmp = tmp_path_factory.mktemp("replay")
    # a cold build (precompiled header + extension) can take minutes on a busy 2-core machine
    cfg = tiny_cfg(tmp, "algo.tasks_per_step=1", "algo.trajectories_per_task=2", "algo.max_turns=2",
                   "evaluator.compile_timeout_s=900")
    task = get_task(_relu_name(), size_profile="cpu_small")
    solution = builtin_solution(task.name, "cpu")
    pool = start_evaluator_pool(cfg.evaluator, name="evaluator-pool-test")
    warm = pool.evaluate.remote(task, solution, True)      # builds into the session cache while the actors load
    worker = replay_worker(cfg, solution)              # starts while the learner loads
    learner = LearnerGroup(cfg, name="learner-test")
    agg = RewardAggregator.remote(cfg.algo, "replay", str(tmp / "trajectories.jsonl"), 120)
    first = ray.get(warm, timeout=1200)
    assert first.correct, first.feedback[-2000:]
    yield cfg, task, worker, pool, learner, agg, tmp


def _relu_name() -> str:
    from kernel_eval.tasks import builtin_task_names
    names = builtin_task_names()
    return next((n for n in names if "relu" in n.lower()), names[0])


def test_replay_rollout_covers_correct_and_speedup_path(pipeline_actors):
    from pipelines.kernel_grpo import KernelGRPO
    from runtime.plots import write_plots
    from runtime.rundir import RunDir
    from runtime.metrics import append_jsonl
    cfg, task, worker, pool, learner, agg, tmp = pipeline_actors
    ray.get(worker.set_padding.remote(0), timeout=60)
    ctl = KernelGRPO(cfg, [task], [worker], pool, learner, agg, RunDir(str(tmp)), progress=False)
    m = ctl.train_step()
    assert m["correct_per_turn"] == [1.0, 1.0], m["rejections"]
    assert all(s > 0 for s in m["speedup_per_turn"]) and m["best_at_g_speedup"] > 0
    assert m["reward"] > 0.3 and m["weight_version"] == 1
    lines = [json.loads(x) for x in open(tmp / "trajectories.jsonl")]
    assert len(lines) == 4 and all(x["eval"]["correct"] for x in lines)
    assert all(x["score"] == pytest.approx(0.3 + min(x["eval"]["speedup"], 10.0)) for x in lines)
    # returns: turn 0 = s0 + 0.4 s1; advantages are centred over the group
    by_traj = {}
    for x in lines:
        by_traj.setdefault(x["trajectory_id"], []).append(x)
    for t in by_traj.values():
        t.sort(key=lambda x: x["turn"])
        assert t[0]["return"] == pytest.approx(t[0]["score"] + 0.4 * t[1]["score"])
    assert abs(sum(x["advantage"] for x in lines)) < 1e-6
    rd = RunDir(str(tmp))
    append_jsonl(rd.metrics, m)
    assert len(write_plots(rd)) == 3


def test_controller_memory_does_not_grow_with_response_size(pipeline_actors):
    """The controller holds refs only: 8 responses of 2 MB each must not show up in its Python heap."""
    from pipelines.kernel_grpo import KernelGRPO, run_trajectories
    cfg, task, worker, pool, learner, agg, tmp = pipeline_actors
    peaks = {}
    for size in (0, 2_000_000):
        ray.get(worker.set_padding.remote(size), timeout=60)
        make = KernelGRPO(cfg, [task], [worker], pool, learner, agg, None, progress=False).make_request(0)
        tracemalloc.start()
        trajs, _ = run_trajectories([task], 4, 2, [worker], pool, make, timeout_s=300, progress=False)
        peaks[size] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert all(len(t.results) == 2 for t in trajs)
        payload = ray.get(trajs[0].refs[0], timeout=60)       # the payload really is that large (test side only)
        assert len(payload.text) >= size
    # 8 turns x 2 MB = 16 MB of payload; the controller's peak may differ by noise, not by payloads
    assert peaks[2_000_000] - peaks[0] < 1_000_000, peaks


def test_dashboard_shows_every_metric():
    text = open(os.path.join(ROOT, "dashboards", "grafana_sandbox_rl.json")).read()
    json.loads(text)
    for name in metric_names():
        assert name in text, name
