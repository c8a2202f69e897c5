"""Weight sync end to end on a local Ray: LearnerGroup (torch backend) -> one ray.put of rank 0's weights ->
RolloutWorker.update_weights(ref, version). After the sync the engine's sampling log-probs equal the learner's own
log-probs on the same tokens; a sample taken before the sync does not match the trained learner (stale weights would
be caught)."""
import os

import numpy as np
import ray

from actors.learner import LearnerGroup
from actors.rollout import TurnRequest, start_rollout_worker
from engines.base import SamplingParams
from kernel_eval.tasks import get_task
from runtime.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _request(task, seed: int) -> TurnRequest:
    return TurnRequest(task_name=task.name, task_source=task.source, backend="cpu", trajectory_id=seed, turn=0,
                       params=SamplingParams(temperature=1.0, max_new_tokens=12, seed=seed))


def _max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def test_engine_logprobs_match_the_learner_after_sync(ray_local):
    cfg = load_config(os.path.join(ROOT, "configs", "tiny_test.yaml"),
                      ["rollout.temperature=1.0", "learner.lr=0.01", "learner.warmup_ratio=0.0",
                       "learner.max_grad_norm=1.0", "algo.gradient_steps_per_batch=1",
                       "learner.micro_batch_samples=2"])
    task = get_task("builtin/relu", size_profile="cpu_small")
    learner = LearnerGroup(cfg, name="sync-learner")
    worker = start_rollout_worker(cfg.model, cfg.rollout, seed=cfg.run.seed, name="sync-rollout")
    timeout = 300

    # version 0: engine and learner start from the same weights (same seed), so they agree before training
    before = [worker.generate_turn.remote(_request(task, s)) for s in range(4)]
    samples = ray.get(before, timeout=timeout)
    assert all(s.weight_version == 0 for s in samples)
    lp0 = learner.get(learner.async_logprobs(before[:1]))[0]
    assert _max_abs_diff(lp0, samples[0].logprobs) < 1e-4

    # one optimizer step with non-zero advantages changes the learner's weights
    learner.get(learner.async_train(before, [1.0, -1.0, 0.5, -0.5]))
    stale = learner.get(learner.async_logprobs(before[:1]))[0]
    assert _max_abs_diff(stale, samples[0].logprobs) > 1e-3, "training did not change the learner's log-probs"

    # sync: one ray.put on rank 0, the worker loads it in place and bumps its version
    ray.get(worker.update_weights.remote(learner.async_weights(), 1), timeout=timeout)
    after = worker.generate_turn.remote(_request(task, 11))
    sample = ray.get(after, timeout=timeout)
    assert sample.weight_version == 1
    fresh = learner.get(learner.async_logprobs([after]))[0]
    assert _max_abs_diff(fresh, sample.logprobs) < 1e-4, "the engine samples with weights the learner does not have"
