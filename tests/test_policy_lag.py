"""algo.max_policy_lag_steps=1: the next step's rollouts are generated while the learner trains, one weight version
behind; the buffered batch goes into the checkpoint, so a resumed run trains on exactly the batch the uninterrupted
run would have (and resuming twice gives the same next step). Tiny random model, CPU evaluator, local Ray.

    python -m pytest tests/test_policy_lag.py -q
"""
from __future__ import annotations

import os

import pytest

from runtime.config import ConfigError, load_config
from test_evaluator import TEST_CACHE          # one build cache shared by the test session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny_test.yaml")
KEYS = ("step", "tasks", "weight_version", "sampled_weight_versions", "reward", "rejections",
        "response_tokens_total", "loss")


def test_policy_lag_needs_disaggregated_placement():
    with pytest.raises(ConfigError, match="placement.mode=disaggregated"):
        load_config(TINY, ["algo.max_policy_lag_steps=1"])
    with pytest.raises(ConfigError, match="0 or 1"):
        load_config(TINY, ["algo.max_policy_lag_steps=2", "placement.mode=disaggregated"])


def test_lag_one_overlaps_and_checkpoints_its_buffered_batch(ray_local, tmp_path):
    from pipelines.kernel_grpo import BUFFERED_SAMPLES, KernelGRPO, build_actors
    from runtime.rundir import RunDir
    cfg = load_config(TINY, [f"run.output_dir={tmp_path}", "run.name=lag", f"evaluator.cache_dir={TEST_CACHE}",
                             "placement.mode=disaggregated", "algo.max_policy_lag_steps=1", "run.total_steps=3",
                             "algo.tasks_per_step=1"])
    rd = RunDir(str(tmp_path / "lag")).make()
    a = build_actors(cfg, rd)
    ctl = KernelGRPO(cfg, a.tasks, a.workers, a.pool, a.learner, a.aggregator, rd, progress=False)
    m0 = ctl.train_step()
    assert m0["sampled_weight_versions"] == [0] and m0["time_overlap_rollout_s"] > 0
    m1 = ctl.train_step()                 # its batch was generated during step 0, under version 0
    assert m1["sampled_weight_versions"] == [0] and m1["policy_lag_steps"] == 1 and m1["weight_version"] == 2
    assert 0.0 <= m1["eval_stall_fraction"] <= 1.0
    ckpt = str(tmp_path / "ckpt")
    ctl.save(ckpt)                        # step 2's batch (generated under version 1) is buffered
    assert os.path.exists(os.path.join(ckpt, BUFFERED_SAMPLES))
    uninterrupted = ctl.train_step()
    assert uninterrupted["sampled_weight_versions"] == [1] and uninterrupted["time_overlap_rollout_s"] == 0.0
    resumed = []
    for _ in range(2):
        ctl.restore(ckpt)
        assert ctl.step == 2 and ctl.weight_version == 2
        resumed.append(ctl.train_step())
    pick = [{k: r.get(k) for k in KEYS} for r in (uninterrupted, *resumed)]
    assert pick[0]["step"] == 2
    assert pick[1] == pick[0] and pick[2] == pick[0]
