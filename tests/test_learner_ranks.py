"""Data-parallel learner ranks: how a batch is cut over ranks (by hand), and, with a real 2-process torch.distributed
(gloo) group on CPU, that the gradient averaged over ranks equals the one-process gradient of the whole batch for all
three length normalizations when the batch does not split evenly (7 samples on 2 ranks: 4 + 3 and one masked-out
padding copy), and that log-probs computed by both ranks together are the one-process log-probs on every rank.

The ranks average their gradients with an all-reduce before each optimizer step, as DeepSpeed ZeRO does; everything
else is the learners/ code the DeepSpeed ranks run. The same checks on 2 GPUs with DeepSpeed ZeRO-3 (-m gpu):

    python -m pytest tests/test_learner_ranks.py -q
    python -m pytest tests/test_learner_ranks.py -q -m gpu        # needs 2 GPUs and deepspeed
"""
from __future__ import annotations

import os
import socket
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from learners.base import padding_sample, split_for_ranks
from learners.torch_learner import TorchLearner
from test_learner import make_cfg, make_samples
from test_learning_check import tiny_model

NORMS = ("constant", "token_mean", "sequence_mean")
WORLD = 2


def test_split_for_ranks_by_hand():
    s = split_for_ranks(list(range(7)), 2)
    assert s.slices == [[0, 1, 2, 3], [4, 5, 6]] and s.pad_to == 4
    s = split_for_ranks(list(range(8)), 2)
    assert s.slices == [[0, 1, 2, 3], [4, 5, 6, 7]] and s.pad_to == 4
    s = split_for_ranks(list(range(3)), 4)                     # fewer items than ranks: the last rank gets none
    assert s.slices == [[0], [1], [2], []] and s.pad_to == 1
    s = split_for_ranks(list(range(10)), 3)
    assert [len(x) for x in s.slices] == [4, 3, 3] and s.pad_to == 4


class _Ranked(TorchLearner):
    """TorchLearner as one of `world` data-parallel ranks: gradients are averaged over the group before the step
    (what ZeRO does), and the captured averaged gradients are kept for the test."""

    def __init__(self, cfg, world: int, **kw):
        super().__init__(cfg, **kw)
        self.world = world
        self.grads: list[torch.Tensor] = []

    def _data_parallel_world(self) -> int:
        return self.world

    def _optimizer_step(self) -> float:
        if self.world > 1:
            import torch.distributed as dist
            for p in self.model.parameters():
                dist.all_reduce(p.grad)
                p.grad /= self.world
        self.grads = [p.grad.detach().clone() for p in self.model.parameters()]
        return super()._optimizer_step()


def _learner(norm: str, world: int) -> _Ranked:
    torch.manual_seed(0)
    cfg = make_cfg(**{"algo.length_normalization": norm, "learner.micro_batch_samples": 2})
    return _Ranked(cfg, world, device="cpu", model=tiny_model(0), pad_id=0)


def _rank_main(rank: int, port: int, results) -> None:
    import torch.distributed as dist
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
        out = {}
        for norm in NORMS:
            ln = _learner(norm, WORLD)
            samples = make_samples(ln.model)                       # the same 7 samples on every rank
            shares = split_for_ranks(samples, WORLD)
            mine = shares.slices[rank]
            mine = mine + [padding_sample(mine[-1]) for _ in range(shares.pad_to - len(mine))]
            lps = ln.logprobs(samples)                             # collective: all ranks, whole list back
            m = ln.train_batch(mine, gradient_steps=1)
            out[norm] = {"grads": ln.grads, "loss": m["loss"], "logprobs": lps}
        results[rank] = out
        dist.destroy_process_group()
    except Exception:
        results[rank] = {"error": traceback.format_exc()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_average_to_the_one_process_gradient_and_share_logprobs():
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        port = _free_port()
        procs = [ctx.Process(target=_rank_main, args=(r, port, results)) for r in range(WORLD)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=240)
        alive = [p.pid for p in procs if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
        assert not alive, f"ranks {alive} did not finish in 240 s"
        res = dict(results)
    for r in range(WORLD):
        assert r in res and "error" not in res[r], res.get(r, {}).get("error", f"rank {r} returned nothing")
    for norm in NORMS:
        ln = _learner(norm, 1)
        samples = make_samples(ln.model)
        single_lp = ln.logprobs(samples)
        m = ln.train_batch(samples, gradient_steps=1)
        for r in range(WORLD):
            got = res[r][norm]
            assert len(got["logprobs"]) == len(samples)
            for a, b in zip(got["logprobs"], single_lp):
                assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < 1e-5
            for a, b in zip(got["grads"], ln.grads):
                assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), norm
        # the ranks' losses average to the whole batch's loss (how the group merges rank metrics)
        mean_loss = sum(res[r][norm]["loss"] for r in range(WORLD)) / WORLD
        assert mean_loss == pytest.approx(m["loss"], rel=1e-5, abs=1e-7), norm
        assert sum(float(g.abs().sum()) for g in ln.grads) > 0
