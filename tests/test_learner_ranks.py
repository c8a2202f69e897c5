"""Data-parallel learner ranks: how a batch is cut over ranks (by hand), and, with a real 2-process torch.distributed
(gloo) group on CPU, that the gradient averaged over ranks equals the one-process gradient of the whole batch for all
three length normalizations when the batch does not split evenly (7 samples on 2 ranks: 4 + 3 and one masked-out
padding copy), and that log-probs computed by both ranks together are the one-process log-probs on every rank.

The ranks average their gradients with an all-reduce before each optimizer step, as DeepSpeed ZeRO does; everything
else is the learners/ code the DeepSpeed ranks run. On 2 GPUs (-m gpu), two DeepSpeed ZeRO-3 ranks, each on its own GPU
seen as cuda:0, compute log-probs together, train an uneven batch, export weights (rank 0) and resume from a checkpoint:

    python -m pytest tests/test_learner_ranks.py -q
    python -m pytest tests/test_learner_ranks.py -q -m gpu -k deepspeed
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


def _run_ranks(target, timeout_s: float) -> dict:
    """Run target(rank, port, results) in WORLD spawned processes; their results, or fail naming the ranks that
    had not finished after `timeout_s` (a collective one rank never entered blocks the others)."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        port = _free_port()
        procs = [ctx.Process(target=target, args=(r, port, results)) for r in range(WORLD)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=timeout_s)
        alive = [p.pid for p in procs if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
        assert not alive, f"ranks {alive} did not finish in {timeout_s:.0f} s"
        return dict(results)


def test_two_ranks_average_to_the_one_process_gradient_and_share_logprobs():
    res = _run_ranks(_rank_main, 240)
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


# ----------------------------------------------------------------------------------------------------- GPU
def _ds_rank_main(rank: int, port: int, gpus: list, ckpt: str, results) -> None:
    """One DeepSpeed ZeRO-3 rank on its own GPU seen as cuda:0, as a Ray learner actor runs it."""
    os.environ.update({"CUDA_VISIBLE_DEVICES": gpus[rank], "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": "0"})
    for k, v in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
        os.environ.setdefault(k, v)
    try:
        from learners.deepspeed_learner import DeepSpeedLearner
        cfg = make_cfg(**{"learner.backend": "deepspeed", "learner.gpus_per_rank": 1, "learner.zero_stage": 3,
                          "learner.num_ranks": WORLD, "learner.lr": 1e-3, "learner.micro_batch_samples": 2})
        ds = DeepSpeedLearner(cfg, model_factory=lambda: tiny_model(0), pad_id=0)
        samples = make_samples(tiny_model(0))
        shares = split_for_ranks(samples, WORLD)
        mine = shares.slices[rank] + [padding_sample(shares.slices[rank][-1])
                                      for _ in range(shares.pad_to - len(shares.slices[rank]))]
        out = {"logprobs": ds.logprobs(samples)}                    # collective forward on both ranks
        out["train"] = ds.train_batch(mine, 1)
        sd = ds.state_dict_cpu()                                    # collective gather; rank 0 gets the weights
        out["weights"] = None if sd is None else sorted(sd)
        ds.save(ckpt)
        expected = ds.train_batch(mine, 1)
        ds.load(ckpt)
        out.update(step_after_load=ds.step, expected=expected["loss"], got=ds.train_batch(mine, 1)["loss"])
        results[rank] = out
    except Exception:
        results[rank] = {"error": traceback.format_exc()}


@pytest.mark.gpu
def test_deepspeed_two_ranks_logprobs_train_export_resume(tmp_path):
    pytest.importorskip("deepspeed")
    if torch.cuda.device_count() < WORLD:
        pytest.skip(f"needs {WORLD} GPUs")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        port = _free_port()
        procs = [ctx.Process(target=_ds_rank_main, args=(r, port, gpus, str(tmp_path / "ckpt"), results))
                 for r in range(WORLD)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=400)
        alive = [p.pid for p in procs if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
        res = dict(results)
    for r in range(WORLD):
        assert r in res and "error" not in res[r], res.get(r, {}).get("error", f"rank {r} returned nothing")
    assert not alive
    samples = make_samples(tiny_model(0))
    for r in range(WORLD):
        lps = res[r]["logprobs"]                                   # bf16 compute: ratio 1 up to bf16 error
        assert len(lps) == len(samples)
        assert max(abs(x - y) for s, lp in zip(samples, lps) for x, y in zip(s.sampling_logprobs, lp)) < 5e-2
        assert res[r]["train"]["grad_norm"] > 0 and res[r]["step_after_load"] == 1
        assert res[r]["got"] == pytest.approx(res[r]["expected"], rel=1e-3, abs=1e-6)
    assert res[0]["logprobs"] == res[1]["logprobs"]
    assert res[0]["train"]["grad_norm"] == pytest.approx(res[1]["train"]["grad_norm"], rel=1e-5)
    assert res[0]["weights"] == sorted(tiny_model(0).state_dict()) and res[1]["weights"] is None


# ------------------------------------------------------------------------------------- weight export across ranks
class _Tied(torch.nn.Module):
    """An embedding tied to the output layer (as Qwen2-0.5B/1.5B tie embed_tokens and lm_head) and one more layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(11, 4)
        self.mid = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 11, bias=False)
        self.head.weight = self.embed.weight


def _export_rank_main(rank: int, port: int, results) -> None:
    """gather_state_dict with a gather context that runs a real collective on entry (as ZeRO-3's GatheredParameters
    does): a rank entering a gather the other skips blocks, and the test's join times out."""
    import contextlib

    import torch.distributed as dist

    from learners.base import gather_state_dict
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
        entered = []

        @contextlib.contextmanager
        def gather(params):
            dist.all_reduce(torch.ones(1))
            entered.append(len(params))
            yield

        sd = gather_state_dict(_Tied(), rank, gather, torch.bfloat16)
        results[rank] = {"gathers": len(entered), "state": sd}
        dist.destroy_process_group()
    except Exception:
        results[rank] = {"error": traceback.format_exc()}


def test_weight_export_gathers_a_tied_parameter_once_on_every_rank():
    """Regression: rank 0 skipped the second name of a tied parameter but the other ranks gathered it again, so
    under ZeRO-3 rank 1 waited forever in the first weight export of a Qwen2-shaped model with 2 learner ranks."""
    res = _run_ranks(_export_rank_main, 60)
    for r in range(WORLD):
        assert r in res and "error" not in res[r], res.get(r, {}).get("error", f"rank {r} returned nothing")
    assert res[0]["gathers"] == res[1]["gathers"] == 3          # embed (= head), mid.weight, mid.bias
    assert res[1]["state"] is None
    sd, ref = res[0]["state"], _Tied().state_dict()
    assert set(sd) == set(ref) == {"embed.weight", "mid.weight", "mid.bias", "head.weight"}
    for k, v in ref.items():
        assert sd[k].dtype == torch.bfloat16 and torch.equal(sd[k], v.to(torch.bfloat16)), k
