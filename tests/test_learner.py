"""Learner tests: padding/alignment by hand, ratio == 1 before the first update, micro-batch gradients == full-batch
gradients (all three normalizations), warm-up schedule, two optimizer steps per batch, the KL path, exact resume from
a checkpoint, the Ray LearnerGroup (1 torch rank, dead rank named), and the DeepSpeed backend on a GPU (-m gpu).

    python -m pytest tests/test_learner.py -q
"""
from __future__ import annotations

import os
import socket

import pytest
import torch

from learners.base import LearnerError, Batch, collate, lr_factor, padding_sample, split_even, warmup_steps
from learners.torch_learner import TorchLearner
from rlcore.types import TrainSample, TurnSample
from runtime.config import load_config
from test_learning_check import sample_group, tiny_model

TEMP = 0.9


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_cfg(**over):
    items = {"run.total_steps": 4, "algo.gradient_steps_per_batch": 1, "algo.tasks_per_step": 1,
             "algo.trajectories_per_task": 8, "algo.max_turns": 1, "rollout.max_new_tokens": 6,
             "rollout.temperature": TEMP, "learner.lr": 1e-2, "learner.micro_batch_samples": 3,
             "learner.warmup_ratio": 0.0}
    items.update(over)
    return load_config(None, [f"{k}={v}" for k, v in items.items()])


def make_samples(model, n: int = 7, seed: int = 0) -> list[TrainSample]:
    """Samples with different prompt and response lengths (so padding and alignment matter), sampled at TEMP."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = [1] + [3 + (5 * i + j) % 50 for j in range(1 + i % 4)]
        resp, lp = sample_group(model, prompt, 1, 6, TEMP, gen)
        k = 2 + i % 5                                         # truncation keeps the causal log-probs valid
        out.append(TrainSample(prompt, resp[0][:k], lp[0][:k], advantage=float((-1) ** i) * (0.5 + 0.1 * i)))
    return out


def learner(seed: int = 0, **over) -> TorchLearner:
    torch.manual_seed(seed)
    return TorchLearner(make_cfg(**over), device="cpu", model=tiny_model(seed), pad_id=0)


# ----------------------------------------------------------------------------------------------------- pure pieces
def test_collate_aligns_targets_mask_and_logprobs_by_hand():
    a = TrainSample([5, 6, 7], [1, 2], [-0.1, -0.2], advantage=1.0)
    b = TrainSample([8, 9], [3, 4, 5], [-0.3, -0.4, -0.5], advantage=-2.0)
    mb: Batch = collate([a, b], pad_id=0)
    assert mb.input_ids.tolist() == [[5, 6, 7, 1, 2], [8, 9, 3, 4, 5]]
    assert mb.start == 1 and mb.logits_to_keep == 4          # logits at positions 1..4; position 4 is dropped
    assert mb.targets.tolist() == [[7, 1, 2], [3, 4, 5]]
    assert mb.mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert torch.allclose(mb.old_logprobs, torch.tensor([[0, -0.1, -0.2], [-0.3, -0.4, -0.5]]))
    assert mb.resp_ranges == [(1, 3), (0, 3)]
    pad = collate([a, padding_sample(b)], pad_id=0)
    assert pad.mask[1].sum() == 0 and pad.advantages.tolist() == [1.0, 0.0]
    with pytest.raises(LearnerError, match="sampling log-probs"):
        collate([TrainSample([1], [2, 3], [-0.1], 1.0)], pad_id=0)


def test_split_even_and_warmup_schedule_by_hand():
    assert [len(p) for p in split_even(list(range(7)), 2)] == [4, 3]
    assert split_even([1, 2, 3], 3) == [[1], [2], [3]]
    assert warmup_steps(10, 0.3) == 3 and warmup_steps(100, 0.03) == 3 and warmup_steps(4, 0.0) == 0
    assert [lr_factor(s, 3) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(0, 0) == 1.0


def test_fused_logprobs_match_the_reference_values_and_gradients(monkeypatch):
    from learners import logprobs as L
    from rlcore.losses import entropy_from_logits, token_logprobs
    monkeypatch.setattr(L, "CHUNK_ELEMENTS", 3 * 50)                 # 3 rows per chunk: chunk edges are crossed
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 9, 50, generator=g) * 4).requires_grad_(True)    # [B, K+1, V]
    targets = torch.randint(0, 50, (2, 8), generator=g)                       # [B, K]
    w = torch.randn(2, 8, generator=g)
    logp, ent = L.token_logprobs_entropy(logits, targets, 0.7)
    assert logp.shape == ent.shape == (2, 8) and not ent.requires_grad
    (logp * w).sum().backward()
    got = logits.grad.clone()
    logits.grad = None
    ref = token_logprobs(logits[:, :-1], targets, 0.7)
    (ref * w).sum().backward()
    assert torch.allclose(logp, ref, atol=1e-5)
    assert torch.allclose(ent, entropy_from_logits(logits[:, :-1].detach(), 0.7), atol=1e-5)
    assert torch.allclose(got, logits.grad, atol=1e-6) and torch.all(got[:, -1] == 0)
    # by hand: uniform logits -> log-prob -log V, entropy log V, gradient (onehot - 1/V) / T
    u = torch.zeros(1, 2, 4, requires_grad=True)
    lp, en = L.token_logprobs_entropy(u, torch.tensor([[2]]), 0.5)
    assert lp.item() == pytest.approx(-torch.log(torch.tensor(4.0)).item()) and en.item() == pytest.approx(1.3862944)
    lp.sum().backward()
    assert torch.allclose(u.grad[0, 0], torch.tensor([-0.5, -0.5, 1.5, -0.5])) and torch.all(u.grad[0, 1] == 0)
    with pytest.raises(ValueError, match=r"\[B, K\+1, V\]"):
        L.token_logprobs_entropy(logits[:, :-1], targets, 1.0)


@pytest.mark.gpu
def test_fused_logprobs_triton_matches_torch_path_on_gpu():
    pytest.importorskip("triton")
    from learners import logprobs as L
    g = torch.Generator(device="cuda").manual_seed(0)
    for B, K, V, T in ((2, 129, 151936, 1.0), (3, 70, 5003, 0.7)):
        logits = (torch.randn(B, K + 1, V, device="cuda", generator=g) * 3).bfloat16()
        targets = torch.randint(0, V, (B, K), device="cuda", generator=g)
        w = torch.randn(B, K, device="cuda", generator=g)
        outs = []
        for tri in (True, False):
            x = logits.clone().requires_grad_(True)
            lp, en = L._FusedLogprobs.apply(x, targets, T, tri)
            (lp * w).sum().backward()
            outs.append((lp, en, x.grad.float()))
        for a, b in zip(outs[0], outs[1]):
            assert float((a - b).norm() / b.norm()) < 1e-3
        assert torch.all(outs[0][2][:, -1] == 0)


# ----------------------------------------------------------------------------------------------------- torch backend
def test_ratio_is_one_before_the_first_update():
    ln = learner()
    samples = make_samples(ln.model)
    recomputed = ln.logprobs(samples)
    for s, lp in zip(samples, recomputed):
        assert max(abs(x - y) for x, y in zip(s.sampling_logprobs, lp)) < 1e-5
    m = ln.train_batch(samples, gradient_steps=1)
    assert abs(m["ratio_min"] - 1) < 1e-5 and abs(m["ratio_max"] - 1) < 1e-5 and m["clip_fraction"] == 0.0
    assert m["tokens"] == sum(len(s.response_ids) for s in samples) and m["grad_norm"] > 0
    assert set(m) >= {"loss", "entropy", "kl", "lr", "seconds", "tokens_per_s"}
    # the update moved the policy: recomputed log-probs now differ from the sampling ones
    after = ln.logprobs(samples)
    assert max(abs(x - y) for s, lp in zip(samples, after) for x, y in zip(s.sampling_logprobs, lp)) > 1e-4


class GradCapture(TorchLearner):
    """Records the accumulated gradient right before each optimizer step."""

    def _optimizer_step(self) -> float:
        self.grads = [p.grad.detach().clone() for p in self.model.parameters()]
        return super()._optimizer_step()


@pytest.mark.parametrize("norm", ["constant", "token_mean", "sequence_mean"])
def test_micro_batch_gradients_equal_full_batch(norm):
    def run(micro):
        torch.manual_seed(0)
        ln = GradCapture(make_cfg(**{"learner.micro_batch_samples": micro, "algo.length_normalization": norm}),
                         device="cpu", model=tiny_model(0), pad_id=0)
        m = ln.train_batch(make_samples(ln.model), gradient_steps=1)
        return m["loss"], ln.grads

    loss_full, g_full = run(7)
    loss_mb, g_mb = run(2)                                         # 4 micro-batches: 2 + 2 + 2 + 1
    assert abs(loss_full - loss_mb) < 1e-6 * max(1.0, abs(loss_full))
    for a, b in zip(g_full, g_mb):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    assert sum(float(g.abs().sum()) for g in g_full) > 0


def test_two_optimizer_steps_per_batch_and_warmup_lr():
    ln = learner(**{"algo.gradient_steps_per_batch": 2, "run.total_steps": 5, "learner.warmup_ratio": 0.3})
    assert ln.warmup == 3                                          # ceil(0.3 * 5 batches * 2 steps)
    lrs = []
    for _ in range(2):
        m = ln.train_batch(make_samples(ln.model), gradient_steps=2)
        lrs.append(m["lr"])
    assert ln.step == 4 and m["optimizer_step"] == 4
    assert ln.optimizer.state[next(ln.model.parameters())]["step"] == 4
    assert lrs == pytest.approx([1e-2 * 0.75, 1e-2])               # lr after steps 2 and 4 (factor (s+1)/(W+1))
    # the second part of a batch is trained after the first step: off-policy, ratio moved away from 1
    ln2 = learner(**{"algo.gradient_steps_per_batch": 2})
    m2 = ln2.train_batch(make_samples(ln2.model), gradient_steps=2)
    assert m2["ratio_max"] - m2["ratio_min"] > 1e-4
    with pytest.raises(LearnerError, match="gradient steps"):
        ln2.train_batch(make_samples(ln2.model, n=1), gradient_steps=2)


def test_kl_path_uses_a_frozen_reference_model():
    ln = learner(**{"algo.kl_coef": 0.5})
    assert ln.ref_model is not None and not any(p.requires_grad for p in ln.ref_model.parameters())
    assert learner().ref_model is None                             # no reference without KL
    samples = make_samples(ln.model)
    first = ln.train_batch(samples, 1)
    assert first["kl"] < 1e-8                                      # policy == reference before the first step
    for _ in range(3):
        last = ln.train_batch(samples, 1)
    assert last["kl"] > 1e-6
    ref_before = [p.clone() for p in ln.ref_model.parameters()]
    ln.train_batch(samples, 1)
    assert all(torch.equal(a, b) for a, b in zip(ref_before, ln.ref_model.parameters()))


def test_save_load_round_trip_gives_identical_next_step(tmp_path):
    a = learner(**{"algo.gradient_steps_per_batch": 2, "learner.warmup_ratio": 0.5, "algo.kl_coef": 0.1})
    batch1, batch2 = make_samples(a.model, seed=1), make_samples(a.model, seed=2)
    a.train_batch(batch1, 2)
    a.save(str(tmp_path / "ckpt"))
    expected = a.train_batch(batch2, 2)
    b = learner(seed=5, **{"algo.gradient_steps_per_batch": 2, "learner.warmup_ratio": 0.5, "algo.kl_coef": 0.1})
    b.load(str(tmp_path / "ckpt"))
    got = b.train_batch(batch2, 2)
    for k in ("loss", "grad_norm", "kl", "lr", "ratio_mean", "entropy"):
        assert got[k] == expected[k], k
    assert got["optimizer_step"] == expected["optimizer_step"] == 4
    sa, sb = a.state_dict_cpu(), b.state_dict_cpu()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(LearnerError, match="no learner checkpoint"):
        b.load(str(tmp_path / "missing"))


def test_state_dict_cpu_exports_engine_dtype():
    ln = learner(**{"model.dtype": "bfloat16"})
    sd = ln.state_dict_cpu()
    assert sd.keys() == ln.model.state_dict().keys()
    assert all(t.device.type == "cpu" and t.dtype == torch.bfloat16 for t in sd.values())
    assert next(ln.model.parameters()).dtype == torch.float32     # master weights stay fp32


# ----------------------------------------------------------------------------------------------------- Ray group
def _turns(model, n=8, seed=0, version=3):
    out = []
    for i, s in enumerate(make_samples(model, n=n, seed=seed)):
        out.append(TurnSample(task_name="t", trajectory_id=i, turn=0, prompt_ids=s.prompt_ids,
                              token_ids=s.response_ids, logprobs=s.sampling_logprobs, text="", finish_reason="length",
                              weight_version=version))
    return out


def test_learner_group_one_rank_trains_exports_saves_and_names_a_dead_rank(ray_local, tmp_path):
    import ray
    from actors.learner import LearnerGroup, LearnerRankError
    from engines.models import load_model
    cfg = make_cfg(**{"model.tiny_random": True, "algo.gradient_steps_per_batch": 2, "ray.get_timeout_s": 120})
    with pytest.raises(LearnerError, match="learner.num_ranks"):
        LearnerGroup(make_cfg(**{"learner.num_ranks": 2}))
    group = LearnerGroup(cfg, name="test-learner")
    assert ray.get_actor("test-learner-rank0") is not None          # named: visible in the dashboard
    policy = load_model(cfg.model, seed=cfg.run.seed)               # the same weights the rank loaded
    refs = [ray.put(t) for t in _turns(policy)]
    w0 = group.get(group.async_weights())
    assert w0.keys() == policy.state_dict().keys()
    assert all(torch.equal(w0[k], v) for k, v in policy.state_dict().items())
    # before the first update the rank's log-probs equal the sampling ones
    lps = group.get(group.async_logprobs(refs))
    assert max(abs(x - y) for t, lp in zip(_turns(policy), lps) for x, y in zip(t.logprobs, lp)) < 1e-5
    m = group.train(refs, [1.0, -1.0] * 4)
    assert m["optimizer_step"] == 2 and m["weight_version_max"] == 3 and abs(m["ratio_min"] - 1) < 0.5
    w1 = group.get(group.async_weights())
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    assert group.get(group.async_save(str(tmp_path / "g"))) and os.path.exists(tmp_path / "g" / "learner.pt")
    assert group.get(group.async_load(str(tmp_path / "g"))) == [2]
    ray.kill(group.ranks[0], no_restart=True)
    with pytest.raises(LearnerRankError, match="learner rank 0 .*test-learner-rank0"):
        group.get(group.async_train(refs, [0.5] * 8), timeout_s=60)
    group.shutdown()


# ----------------------------------------------------------------------------------------------------- GPU
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def single_rank_env() -> None:
    """The environment of a DeepSpeed world of one in this process (env rendezvous on a free local port)."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_RANK": "0"})


@pytest.mark.gpu
def test_deepspeed_single_rank_ratio_one_train_export_resume(tmp_path):
    pytest.importorskip("deepspeed")
    from learners.deepspeed_learner import DeepSpeedLearner
    single_rank_env()
    cfg = make_cfg(**{"learner.backend": "deepspeed", "learner.gpus_per_rank": 1, "learner.zero_stage": 3,
                      "learner.precision": "bf16", "algo.gradient_steps_per_batch": 2, "learner.lr": 1e-3})
    ds = DeepSpeedLearner(cfg, model_factory=lambda: tiny_model(0), pad_id=0)
    ref = tiny_model(0)
    samples = make_samples(ref)
    lps = ds.logprobs(samples)                                      # bf16 compute: ratio 1 up to bf16 error
    assert max(abs(x - y) for s, lp in zip(samples, lps) for x, y in zip(s.sampling_logprobs, lp)) < 5e-2
    m = ds.train_batch(samples, 2)
    assert ds.step == 2 and m["grad_norm"] > 0 and m["tokens"] > 0
    sd = ds.state_dict_cpu()
    assert sd.keys() == ref.state_dict().keys() and all(t.device.type == "cpu" for t in sd.values())
    assert sd["model.embed_tokens.weight"].shape == ref.model.embed_tokens.weight.shape
    ds.save(str(tmp_path / "ds"))
    expected = ds.train_batch(samples, 2)
    ds.load(str(tmp_path / "ds"))
    assert ds.step == 2
    got = ds.train_batch(samples, 2)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-3, abs=1e-6)


def test_fused_adamw_only_where_its_tensors_are_on_a_gpu():
    from learners.torch_learner import adamw
    cpu = [torch.nn.Parameter(torch.ones(3))]
    assert not adamw(cpu, make_cfg().learner).defaults.get("fused")          # CPU: torch's default AdamW
    ln = TorchLearner(make_cfg(**{"learner.fused_optimizer": True}), device="cpu", model=tiny_model(0), pad_id=0)
    assert not ln.optimizer.defaults.get("fused")


@pytest.mark.gpu
def test_fused_adamw_matches_foreach_on_gpu():
    """learner.fused_optimizer: the fused CUDA AdamW gives the multi-tensor AdamW's update (two steps)."""
    def trained(fused):
        cfg = make_cfg(**{"learner.fused_optimizer": fused, "algo.gradient_steps_per_batch": 2, "learner.lr": 1e-3})
        ln = TorchLearner(cfg, device="cuda", model=tiny_model(0), pad_id=0)
        assert bool(ln.optimizer.defaults.get("fused")) == fused
        m = ln.train_batch(make_samples(tiny_model(0)), 2)
        return m["loss"], [p.detach().cpu() for p in ln.model.parameters()]

    (la, pa), (lb, pb) = trained(True), trained(False)
    assert la == pytest.approx(lb, rel=1e-4, abs=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(pa, pb))
    assert any(not torch.equal(a, b) for a, b in zip(pa, [p.detach() for p in tiny_model(0).parameters()]))


def test_gradient_checkpointing_gives_the_same_gradients():
    def grads(gc):
        torch.manual_seed(0)
        ln = GradCapture(make_cfg(**{"learner.gradient_checkpointing": gc}), device="cpu", model=tiny_model(0),
                         pad_id=0)
        ln.train_batch(make_samples(ln.model), gradient_steps=1)
        return ln.grads

    for a, b in zip(grads(False), grads(True)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
