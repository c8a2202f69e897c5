"""MixGRPO on the 2-D toy (MIXGRPO.md "Testing"): ratio identity, learning on every seed, negative controls,
per-group normalization, checkpoint/resume, and the Ray actor version against the single-process reference.

    python -m pytest tests/test_mixgrpo.py -q
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flowrl.toy import toy_reward
from pipelines.mixgrpo import MixGRPOPipeline, run_mixgrpo_local
from runtime.config import load_config

CONFIG = "configs/mixgrpo_toy.yaml"


def toy_cfg(*overrides: str):
    return load_config(CONFIG, list(overrides))


def train(pipe: MixGRPOPipeline, iters: int) -> list[dict]:
    return [pipe.step() for _ in range(iters)]


def test_ratio_is_exactly_one_before_the_first_update():
    for mode in ("progressive", "all", "random_subset"):
        pipe = MixGRPOPipeline(toy_cfg(f"flow.window_mode={mode}", "flow.sde_form=dance_grpo"
                                       if mode == "random_subset" else "flow.sde_form=flow_grpo"))
        m = pipe.step()
        assert m["train/ratio_dev_first"] < 1e-6, (mode, m["train/ratio_dev_first"])
    # micro-batches (gradient accumulation inside an optimizer step) keep it exact too
    m = MixGRPOPipeline(toy_cfg("flow.micro_batch_samples=16")).step()
    assert m["train/ratio_dev_first"] < 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learning_on_every_seed(seed):
    pipe = MixGRPOPipeline(toy_cfg(f"run.seed={seed}"))
    before = pipe.evaluate(256)
    train(pipe, 110)
    after = pipe.evaluate(256)
    assert after["reward"] - before["reward"] >= 0.3, (before, after)
    assert after["hit"] - before["hit"] >= 0.3, (before, after)


def test_flipped_advantage_collapses_reward():
    pipe = MixGRPOPipeline(toy_cfg(), control="flip")
    before = pipe.evaluate(256)
    train(pipe, 60)
    after = pipe.evaluate(256)
    assert after["reward"] < before["reward"] - 0.3 and after["hit"] < 0.2, (before, after)


def test_shuffled_advantages_leave_reward_flat():
    pipe = MixGRPOPipeline(toy_cfg(), control="shuffle")
    before = pipe.evaluate(256)
    train(pipe, 80)
    after = pipe.evaluate(256)
    assert abs(after["reward"] - before["reward"]) < 0.15, (before, after)


def test_detached_logprob_leaves_parameters_bit_identical():
    pipe = MixGRPOPipeline(toy_cfg(), control="detach")
    start = {k: v.clone() for k, v in pipe.bundle.model.state_dict().items()}
    train(pipe, 3)
    assert all(torch.equal(start[k], v) for k, v in pipe.bundle.model.state_dict().items())


SCALE = torch.tensor([1.0, 10.0, 0.1, 3.0])
OFFSET = torch.tensor([0.0, 100.0, -50.0, 7.0])


def skewed_reward(x, prompts):
    c = torch.as_tensor(prompts)
    return toy_reward(x, c) * SCALE[c] + OFFSET[c]


def test_per_group_normalization_survives_reward_scales():
    good = MixGRPOPipeline(toy_cfg(), rewards={"analytic": skewed_reward})
    bad = MixGRPOPipeline(toy_cfg(), rewards={"analytic": skewed_reward}, control="global")
    train(good, 110)
    train(bad, 110)
    hit_good, hit_bad = good.evaluate(256)["hit"], bad.evaluate(256)["hit"]
    assert hit_good >= 0.9 and hit_bad < 0.7, (hit_good, hit_bad)


def test_flash_and_decay_variants_run_and_learn():
    pipe = MixGRPOPipeline(toy_cfg("flow.flash=flash_star", "flow.window_mode=frozen"))
    before = pipe.evaluate(256)["hit"]
    ms = train(pipe, 60)
    assert ms[0]["nfe"] == 8 and ms[0]["train/ratio_dev_first"] < 1e-6        # 4 window + 4 tail calls
    assert pipe.evaluate(256)["hit"] - before >= 0.2
    m = MixGRPOPipeline(toy_cfg("flow.flash=flash", "flow.window_decay=true")).step()
    assert m["nfe"] == 4 + 8 and m["train/ratio_dev_first"] < 1e-6              # floor(22 * 0.4) tail calls


def test_checkpoint_resume_gives_the_same_next_step():
    pipe = MixGRPOPipeline(toy_cfg())
    train(pipe, 3)
    state = pipe.state_dict()
    nxt = pipe.step()
    for _ in range(2):                             # resuming twice from one checkpoint gives the same next step
        other = MixGRPOPipeline(toy_cfg())
        other.load_state_dict(state)
        again = other.step()
        for k, v in nxt.items():
            if not k.startswith("time/"):
                assert again[k] == v, k


def test_bad_batch_split_is_named():
    with pytest.raises(ValueError, match="flow.micro_batch_samples"):
        MixGRPOPipeline(toy_cfg("flow.micro_batch_samples=5"))


def test_ray_actors_match_the_single_process_reference(ray_local):
    ref = run_mixgrpo_local(toy_cfg("run.seed=4"), steps=6, log_every=0)
    cfg = toy_cfg("run.seed=4", "flow.use_actors=true", "flow.num_reward_workers=2", "run.name=raytest")
    got = run_mixgrpo_local(cfg, steps=6, log_every=0)
    for a, b in zip(ref, got):
        for k, v in a.items():
            if not k.startswith("time/"):
                assert b[k] == v, (a["iteration"], k, v, b[k])
    # two samplers split the prompts: same noise per prompt, so rewards agree up to batching round-off
    cfg2 = toy_cfg("run.seed=4", "flow.use_actors=true", "flow.num_sampler_workers=2", "run.name=raytest2")
    got2 = run_mixgrpo_local(cfg2, steps=2, log_every=0)
    assert abs(got2[0]["reward"] - ref[0]["reward"]) < 1e-4 and got2[0]["train/ratio_dev_first"] < 1e-6
    assert np.isfinite(got2[1]["reward"])


def test_baseline_configs_learn():
    # Flow-GRPO (all 25 steps trained) and DanceGRPO (14 random steps) learn more slowly on the toy than MixGRPO;
    # measured reward rise after 60 iterations: ~0.24 and ~0.22 (seeds 0, 1).
    for path, trained in (("configs/flow_grpo_toy.yaml", 25), ("configs/dance_grpo_toy.yaml", 14)):
        pipe = MixGRPOPipeline(load_config(path))
        before = pipe.evaluate(256)["reward"]
        ms = train(pipe, 60)
        assert ms[0]["train/ratio_dev_first"] < 1e-6 and ms[0]["trained_steps"] == trained, path
        assert pipe.evaluate(256)["reward"] - before >= 0.12, path


@pytest.mark.gpu
def test_tiny_flux_on_gpu_ratio_and_steps():
    pytest.importorskip("diffusers")
    cfg = load_config(None, ["run.pipeline=mixgrpo", "flow.model=flux_tiny_random", "flow.reward_weights={latent: 1.0}",
                             "flow.device=cuda", "flow.group_size=4", "flow.prompts_per_iter=4",
                             "flow.window_interval_iters=1"])
    pipe = MixGRPOPipeline(cfg)
    ms = train(pipe, 3)
    print("tiny Flux |ratio - 1| before the first update:", ms[0]["train/ratio_dev_first"])
    # exact on CPU; on a GPU autograd may pick another attention kernel than the no-grad rollout did
    assert ms[0]["train/ratio_dev_first"] < 1e-4
    assert ms[1]["window_start"] == 1 and ms[1]["model_rows"] < ms[1]["model_rows_unshared"]
    assert all(np.isfinite(m["reward"]) for m in ms)
