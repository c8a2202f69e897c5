"""RolloutWorker on a real local Ray: concurrent requests batched into engine calls, history refs resolved into the
prompt (thought stripped, feedback paired), queueing while asleep, and weight updates that bump the version and
make the sampling log-probs those of the new weights (and not before)."""
from __future__ import annotations

import time

import pytest
import torch

from actors.rollout import TurnRequest, _fallback_parse, parse_turn, start_rollout_worker
from engines.base import SamplingParams
from engines.models import load_model
from rlcore.losses import token_logprobs
from rlcore.types import TurnSample
from runtime.config import load_config

TIMEOUT_S = 120
SRC = ("import torch\nimport torch.nn as nn\n\n"
       "class Model(nn.Module):\n    def forward(self, x):\n        return x * 2\n")


@pytest.fixture(scope="module")
def cfg():
    return load_config(overrides=["model.tiny_random=true", "rollout.batch_wait_ms=300",
                                  "rollout.max_concurrent_sequences=8", "rollout.max_context_tokens=4096"])


@pytest.fixture(scope="module")
def worker(ray_local, cfg):
    w = start_rollout_worker(cfg.model, cfg.rollout, seed=0, name="rollout-test", get_timeout_s=30)
    ray_local.get(w.stats.remote(), timeout=TIMEOUT_S)     # constructed
    yield w
    ray_local.kill(w)


def request(traj: int, turn: int = 0, refs=(), feedback=(), seed: int = 0, max_new: int = 6) -> TurnRequest:
    return TurnRequest(task_name="builtin/double", task_source=SRC, backend="cpu", trajectory_id=traj, turn=turn,
                       history_refs=list(refs), feedback=list(feedback),
                       params=SamplingParams(temperature=1.0, max_new_tokens=max_new, seed=seed))


def test_parse_fallback():
    code, summary, thought = _fallback_parse("<think>plan</think>text\n```python\nA\n```\n```cpp\nB\n```\nDone.")
    assert (code, summary, thought) == ("B\n", "Done.", "plan")
    assert _fallback_parse("no code here")[0] is None
    code, summary, thought = parse_turn("<think>plan</think>```python\nclass ModelNew: pass\n```\nsum")
    assert "class ModelNew" in code and summary == "sum" and "plan" not in summary


def test_named_and_repr(ray_local, worker):
    assert ray_local.get_actor("rollout-test") is not None
    s = ray_local.get(worker.stats.remote(), timeout=TIMEOUT_S)
    assert s["name"] == "rollout-test" and s["weight_version"] == 0


def test_concurrent_turns_are_batched(ray_local, worker):
    before = ray_local.get(worker.stats.remote(), timeout=TIMEOUT_S)
    refs = [worker.generate_turn.remote(request(traj=i, seed=i)) for i in range(6)]
    samples = ray_local.get(refs, timeout=TIMEOUT_S)
    after = ray_local.get(worker.stats.remote(), timeout=TIMEOUT_S)
    assert after["sequences"] - before["sequences"] == 6
    assert after["engine_calls"] - before["engine_calls"] < 6 and after["batch_size_max"] > 1
    for i, s in enumerate(samples):
        assert isinstance(s, TurnSample) and s.trajectory_id == i and s.turn == 0 and s.weight_version == 0
        assert len(s.token_ids) == len(s.logprobs) <= 6 and s.finish_reason in ("stop", "length")
        assert "C++ CPU kernels" in s.prompt_text and "<|im_start|>assistant" in s.prompt_text
    # seeded: a request alone (not batched with the others) samples the same tokens
    again = ray_local.get(worker.generate_turn.remote(request(traj=3, seed=3)), timeout=TIMEOUT_S)
    assert again.token_ids == samples[3].token_ids and again.prompt_ids == samples[3].prompt_ids
    assert after["tokens_generated"] > before["tokens_generated"] and after["tokens_per_s"] > 0


def test_history_refs_resolved_into_prompt(ray_local, worker):
    prev = [TurnSample(task_name="builtin/double", trajectory_id=9, turn=t, prompt_ids=[1], token_ids=[2],
                       logprobs=[-1.0], text="", finish_reason="stop", weight_version=0,
                       kernel=f"MY_KERNEL_{t}", summary=f"MY_SUMMARY_{t}", thought=f"MY_THOUGHT_{t}")
            for t in range(2)]
    refs = [ray_local.put(p) for p in prev]
    s = ray_local.get(worker.generate_turn.remote(request(9, 2, refs, ["FEEDBACK_0", "FEEDBACK_1"])),
                      timeout=TIMEOUT_S)
    for t in range(2):
        assert f"MY_KERNEL_{t}" in s.prompt_text and f"MY_SUMMARY_{t}" in s.prompt_text
        assert f"FEEDBACK_{t}" in s.prompt_text and f"MY_THOUGHT_{t}" not in s.prompt_text
    assert s.prompt_text.index("MY_KERNEL_0") < s.prompt_text.index("FEEDBACK_0") < s.prompt_text.index("MY_KERNEL_1")
    assert s.dropped_turns == 0 and s.turn == 2
    with pytest.raises(Exception, match="feedback"):
        ray_local.get(worker.generate_turn.remote(request(9, 2, refs, ["only one"])), timeout=TIMEOUT_S)


def test_requests_wait_while_asleep(ray_local, worker):
    ray_local.get(worker.sleep.remote(1), timeout=TIMEOUT_S)
    ref = worker.generate.remote([[1, 2, 3]], SamplingParams(max_new_tokens=3, seed=0))
    ready, _ = ray_local.wait([ref], timeout=1.0)
    assert not ready and ray_local.get(worker.stats.remote(), timeout=TIMEOUT_S)["asleep"]
    ray_local.get(worker.wake_up.remote(), timeout=TIMEOUT_S)
    (g,) = ray_local.get(ref, timeout=TIMEOUT_S)
    assert len(g.token_ids) >= 1


def _forward_logprobs(model, gens, temperature=1.0):
    out = []
    with torch.no_grad():
        for g in gens:
            ids = torch.tensor([g.prompt_ids + g.token_ids])
            logits = model(ids).logits[:, len(g.prompt_ids) - 1:-1]                      # [1, T, V]
            out.append(token_logprobs(logits, torch.tensor([g.token_ids]), temperature)[0])
    return out


def test_weight_update_bumps_version_and_syncs_logprobs(ray_local, worker, cfg):
    # the learner's state dict: a modified copy of the same tiny model's weights
    updated = load_model(cfg.model, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in updated.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    state = {k: v.clone() for k, v in updated.state_dict().items()}
    prompts = [[1, 10, 20, 30], [1, 5, 6]]
    params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=4)

    stale = ray_local.get(worker.generate.remote(prompts, params), timeout=TIMEOUT_S)
    for got, ref in zip(stale, _forward_logprobs(updated, stale)):
        assert (torch.tensor(got.logprobs) - ref).abs().max() > 1e-2          # old weights: no match

    version = ray_local.get(worker.update_weights.remote([ray_local.put(state)], 3), timeout=TIMEOUT_S)
    assert version == 3
    fresh = ray_local.get(worker.generate.remote(prompts, params), timeout=TIMEOUT_S)
    for got, ref in zip(fresh, _forward_logprobs(updated, fresh)):
        assert torch.allclose(torch.tensor(got.logprobs), ref, atol=1e-4)
    s = ray_local.get(worker.generate_turn.remote(request(1)), timeout=TIMEOUT_S)
    assert s.weight_version == 3
    stats = ray_local.get(worker.stats.remote(), timeout=TIMEOUT_S)
    assert stats["weight_updates"] == 1 and stats["weight_version"] == 3

    # a plain dict works too; a wrong payload is refused and the worker keeps serving
    assert ray_local.get(worker.update_weights.remote(state, 4), timeout=TIMEOUT_S) == 4
    with pytest.raises(Exception, match="state dict"):
        ray_local.get(worker.update_weights.remote("not weights", 5), timeout=TIMEOUT_S)
    t = time.time()
    ray_local.get(worker.generate.remote([[1, 2]], SamplingParams(max_new_tokens=2)), timeout=TIMEOUT_S)
    assert time.time() - t < 30

    # weights still being produced when the update arrives: a turn sent right after the update waits for it (it
    # used to start during the fetch and run under the old weights), and a ref to anything else is refused
    def state_after(weights: dict, seconds: float) -> dict:      # nested: shipped by value to the Ray worker
        time.sleep(seconds)
        return weights
    slow = ray_local.remote(state_after).remote(state, 1.5)
    update = worker.update_weights.remote([slow], 6)
    late = worker.generate_turn.remote(request(2))
    assert ray_local.get(update, timeout=TIMEOUT_S) == 6
    assert ray_local.get(late, timeout=TIMEOUT_S).weight_version == 6
    with pytest.raises(Exception, match="state dict"):
        ray_local.get(worker.update_weights.remote([ray_local.put("not weights")], 7), timeout=TIMEOUT_S)
    assert ray_local.get(worker.generate_turn.remote(request(3)), timeout=TIMEOUT_S).weight_version == 6


def test_streaming_worker_update_waits_for_turns_in_flight(ray_local, cfg):
    """Continuous-batching path (hf streaming engine): turns in flight when an update arrives finish under the old
    weights and carry the old version; the worker's stats show the drain and the streaming mode."""
    w = start_rollout_worker(cfg.model, cfg.rollout, seed=0, name="rollout-stream-test", get_timeout_s=30,
                             hf_streaming=True)
    try:
        ray_local.get(w.stats.remote(), timeout=TIMEOUT_S)
        state = {k: v.clone() for k, v in load_model(cfg.model, seed=0).state_dict().items()}
        state["model.norm.weight"] = state["model.norm.weight"] * 3.0
        state_ref = ray_local.put(state)        # in the object store before the turns start: the update is quick
        early = [w.generate_turn.remote(request(traj=i, seed=i, max_new=100)) for i in range(2)]
        deadline = time.time() + TIMEOUT_S
        while ray_local.get(w.stats.remote(), timeout=TIMEOUT_S)["engine_calls"] < 2 and time.time() < deadline:
            time.sleep(0.02)
        update = w.update_weights.remote([state_ref], 1)
        late = w.generate_turn.remote(request(traj=5, seed=5, max_new=3))
        assert ray_local.get(update, timeout=TIMEOUT_S) == 1
        first = ray_local.get(early, timeout=TIMEOUT_S)
        assert [s.weight_version for s in first] == [0, 0] and all(len(s.token_ids) == 100 for s in first)
        assert ray_local.get(late, timeout=TIMEOUT_S).weight_version == 1
        # same turn, same seed: the old weights' tokens are not what the new weights sample
        again = ray_local.get(w.generate_turn.remote(request(traj=0, seed=0, max_new=10)), timeout=TIMEOUT_S)
        assert again.weight_version == 1 and again.logprobs != first[0].logprobs[:10]
        s = ray_local.get(w.stats.remote(), timeout=TIMEOUT_S)
        assert s["streaming"] and s["drains"] == 1 and s["sequences"] == 4 and s["in_flight"] == 0
    finally:
        ray_local.kill(w)
