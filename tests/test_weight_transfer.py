"""NCCL weight transfer, the parts that need no GPU: the config rule, the metadata the learner sends (names, dtypes,
full shapes, order) against what the vLLM engine loads on its other paths, the tensors the send loop yields (values,
order, ZeRO-3 layer-by-layer gathering in lockstep on every rank), group ranks, and the controller's fail-fast wait.
The broadcast itself is covered by tests/test_weight_transfer_gpu.py (2 GPUs).

    python -m pytest tests/test_weight_transfer.py -q
"""
from __future__ import annotations

import contextlib
import time
from types import SimpleNamespace

import pytest
import torch

from engines.weight_transfer import (NCCLWeightSender, backend_module, check_update_info, engine_ranks,
                                     iter_transfer_tensors, layer_groups, metadata_bytes, transfer_metadata,
                                     transfer_params)
from runtime.config import ConfigError, load_config

NCCL_OK = ["rollout.weight_sync=nccl", "rollout.engine=vllm", "rollout.gpus_per_worker=1",
           "placement.mode=disaggregated", "learner.gpus_per_rank=1"]


def tiny(arch: str, tied: bool, layers: int = 2, seed: int = 0):
    """A small random Qwen2 (q/k/v biases) or Llama, tied or not."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    kw = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=layers, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied)
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**kw)).eval()
    return LlamaForCausalLM(LlamaConfig(**kw)).eval()


# ------------------------------------------------------------------------------------------------------------ config
def test_config_accepts_nccl_only_for_vllm_on_separate_gpus():
    assert load_config(None, NCCL_OK).rollout.weight_sync == "nccl"
    for bad, named in [("rollout.engine=hf", "engine=vllm"), ("placement.mode=colocated", "disaggregated"),
                       ("learner.gpus_per_rank=0", "learner.gpus_per_rank")]:
        with pytest.raises(ConfigError, match=rf"rollout\.weight_sync: 'nccl' needs .*{named}"):
            load_config(None, NCCL_OK + [bad])
    with pytest.raises(ConfigError, match="weight_sync"):
        load_config(None, ["rollout.weight_sync=rdma"])


# ---------------------------------------------------------------------------------------------------------- metadata
@pytest.mark.parametrize("arch,tied", [("qwen2", True), ("qwen2", False), ("llama", True)])
def test_metadata_equals_what_the_vllm_engine_loads_from_a_state_dict(arch, tied):
    """The NCCL path must name, shape and order tensors exactly as the ipc/disk paths do (VLLMEngine._named_tensors
    over the learner's state dict): same names vLLM's load_weights maps, tied lm_head skipped the same way."""
    from engines.vllm_engine import VLLMEngine
    model = tiny(arch, tied)
    meta = transfer_metadata(model, torch.bfloat16)
    engine_side = SimpleNamespace(_tied=tied, _dtype=torch.bfloat16)
    expected = list(VLLMEngine._named_tensors(engine_side, model.state_dict(), "cpu"))
    assert meta["names"] == [n for n, _ in expected]
    assert meta["shapes"] == [list(t.shape) for _, t in expected]
    assert meta["dtype_names"] == ["bfloat16"] * len(expected)
    assert ("lm_head.weight" in meta["names"]) == (not tied)
    if arch == "qwen2":
        assert "model.layers.1.self_attn.q_proj.bias" in meta["names"]
    assert meta["packed"] is True and meta["packed_buffer_size_bytes"] > 0
    assert metadata_bytes(meta) == sum(t.numel() * 2 for _, t in expected)
    check_update_info(meta)


def test_metadata_is_plain_data_with_vllm_dtype_spelling():
    meta = transfer_metadata(tiny("llama", True), torch.float16, buffer_bytes=4096, num_buffers=3)
    assert set(meta["dtype_names"]) == {"float16"} and getattr(torch, meta["dtype_names"][0]) is torch.float16
    assert all(isinstance(s, list) and all(type(d) is int for d in s) for s in meta["shapes"])
    assert (meta["packed_buffer_size_bytes"], meta["packed_num_buffers"]) == (4096, 3)


@pytest.mark.parametrize("mutate,msg", [
    (lambda m: m.update(names="x"), "'names' must be a list"),
    (lambda m: m["shapes"].pop(), "names but"),
    (lambda m: m["dtype_names"].__setitem__(0, "int8"), "unsupported dtype"),
    (lambda m: m.update(names=[], dtype_names=[], shapes=[]), "no tensors"),
])
def test_malformed_metadata_is_refused_before_any_broadcast(mutate, msg):
    meta = transfer_metadata(tiny("llama", True), torch.bfloat16)
    mutate(meta)
    with pytest.raises(ValueError, match=msg):
        check_update_info(meta)


# ------------------------------------------------------------------------------------------------------ the send loop
def test_iteration_yields_the_metadata_order_in_the_engine_dtype():
    model = tiny("qwen2", tied=False)
    meta = transfer_metadata(model, torch.bfloat16)
    got = list(iter_transfer_tensors(model, torch.bfloat16))
    assert [n for n, _ in got] == meta["names"]
    assert [list(t.shape) for _, t in got] == meta["shapes"]
    params = dict(model.named_parameters())
    for name, t in got:
        assert t.dtype == torch.bfloat16 and torch.equal(t, params[name].detach().to(torch.bfloat16))
    # already in the send dtype: the parameter itself goes out, no copy
    same = dict(iter_transfer_tensors(model, torch.float32))
    assert same["model.norm.weight"].data_ptr() == params["model.norm.weight"].data_ptr()


def test_layer_groups_by_hand():
    names = ["model.embed_tokens.weight", "model.layers.0.a", "model.layers.0.b", "model.layers.1.a",
             "model.layers.10.a", "model.layers.10.b", "model.norm.weight", "lm_head.weight"]
    assert layer_groups(names) == [[0], [1, 2], [3], [4, 5], [6], [7]]
    assert layer_groups([]) == []


class FakeZero3:
    """Stands in for DeepSpeed ZeRO-3 (which needs CUDA): each parameter's data becomes an empty placeholder with the
    real shape in ds_shape; gather(params) puts the full tensors back for the duration of the context. Records the
    groups gathered and the most parameters ever gathered at once."""

    def __init__(self, module: torch.nn.Module):
        self.full = {}
        for p in module.parameters():
            self.full[id(p)] = p.data.clone()
            p.ds_shape = p.shape
            p.data = torch.empty(0, dtype=p.dtype)
        self.names = {id(p): n for n, p in module.named_parameters()}
        self.groups: list[list[str]] = []
        self.live = self.max_live = 0

    @contextlib.contextmanager
    def gather(self, params):
        for p in params:
            assert p.data.numel() == 0, "gathered twice"
            p.data = self.full[id(p)]
        self.groups.append([self.names[id(p)] for p in params])
        self.live += len(params)
        self.max_live = max(self.max_live, self.live)
        try:
            yield
        finally:
            for p in params:
                p.data = torch.empty(0, dtype=p.dtype)
            self.live -= len(params)


def test_zero3_metadata_uses_full_shapes_and_every_rank_gathers_layer_by_layer():
    reference = tiny("qwen2", tied=True, layers=3)
    expected_meta = transfer_metadata(reference, torch.bfloat16)
    rank0, rank1 = tiny("qwen2", tied=True, layers=3), tiny("qwen2", tied=True, layers=3)
    z0, z1 = FakeZero3(rank0), FakeZero3(rank1)
    assert transfer_metadata(rank0, torch.bfloat16) == expected_meta          # placeholders are empty: ds_shape used
    got = list(iter_transfer_tensors(rank0, torch.bfloat16, z0.gather))
    ref = dict(reference.named_parameters())
    assert [n for n, _ in got] == expected_meta["names"]
    assert all(torch.equal(t, ref[n].detach().to(torch.bfloat16)) for n, t in got)   # copies survive the release
    per_layer = sum(1 for n in expected_meta["names"] if n.startswith("model.layers.0."))
    assert z0.max_live == per_layer                                           # never more than one layer gathered
    assert len(z0.groups) == 3 + 2                                            # 3 layers + embedding + final norm
    # a rank other than 0 gathers the same groups in the same order and materializes nothing
    rest = list(iter_transfer_tensors(rank1, torch.bfloat16, z1.gather, materialize=False))
    assert z1.groups == z0.groups and all(t is None for _, t in rest)


def test_sender_checks_the_metadata_and_non_zero_ranks_only_gather():
    model = tiny("llama", tied=True)
    meta = transfer_metadata(model, torch.bfloat16)
    sender = NCCLWeightSender("127.0.0.1", 1, world_size=2, rank=1)           # rank 1 joins no group
    z = FakeZero3(model)
    out = sender.send(model, meta, z.gather)
    assert out["bytes"] == 0 and len(z.groups) == len(layer_groups(meta["names"]))
    stale = dict(meta, names=list(reversed(meta["names"])))
    with pytest.raises(ValueError, match="names differ from the metadata .*first at index 0"):
        sender.send(model, stale, z.gather)
    with pytest.raises(ValueError, match="names differ .*module 'model.layers.2.self_attn.q_proj.weight'"):
        sender.send(tiny("llama", tied=True, layers=3), meta)                 # a deeper model
    wide = dict(meta, shapes=[[s[0] + 1] + s[1:] for s in meta["shapes"]])
    with pytest.raises(ValueError, match="shapes differ"):
        sender.send(model, wide, z.gather)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="rank 0 needs a CUDA GPU"):
            NCCLWeightSender("127.0.0.1", 1, world_size=2, rank=0)


def test_backend_module_finds_the_torch_learner_model():
    from learners.torch_learner import TorchLearner
    cfg = load_config(None, ["model.dtype=bfloat16", "algo.tasks_per_step=1", "algo.trajectories_per_task=2",
                             "algo.max_turns=1", "learner.micro_batch_samples=1"])
    model = tiny("llama", tied=True)
    backend = TorchLearner(cfg, device="cpu", model=model, pad_id=0)
    module, gather, dtype = backend_module(backend)
    assert module is backend.model and gather is None and dtype == torch.bfloat16
    assert [n for n, _ in transfer_params(module)] == transfer_metadata(module, dtype)["names"]


def test_engine_ranks_follow_the_trainer():
    assert engine_ranks([1]) == (2, [1])
    assert engine_ranks([1, 1, 1]) == (4, [1, 2, 3])
    assert engine_ranks([2, 1, 4]) == (8, [1, 3, 4])
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        engine_ranks([0])


# ---------------------------------------------------------------------------------------------- orchestration (Ray)
def test_wait_all_fails_fast_and_names_the_step(ray_local):
    import ray
    from pipelines.kernel_grpo import wait_all

    # num_cpus=0: the long sleepers of one check must not hold the CPU slots the next check's quick tasks need (on a
    # 2-core cluster they did, and a quick task then counted as unfinished); each check cancels its sleepers.
    @ray.remote(num_cpus=0)
    def slow(x):
        time.sleep(x)
        return x

    @ray.remote(num_cpus=0)
    def broken():
        raise ValueError("peer gone")

    assert wait_all([slow.remote(0.1), slow.remote(0.0)], 30, "ok") == [0.1, 0.0]
    t0 = time.monotonic()
    stuck = slow.remote(60)
    with pytest.raises(RuntimeError, match="NCCL weight sync \\(version 3\\) failed: .*peer gone"):
        wait_all([stuck, broken.remote()], 30, "NCCL weight sync (version 3)")
    assert time.monotonic() - t0 < 10, "did not fail fast"
    ray.cancel(stuck, force=True)
    # the quick ones are done before the deadline is measured, so a slow worker start cannot count against them
    quick = [slow.remote(0), slow.remote(0)]
    ray.get(quick, timeout=60)
    stuck = slow.remote(60)
    with pytest.raises(TimeoutError, match="1 of 2 calls unfinished"):
        wait_all([quick[0], stuck], 2, "group set-up")
    # with names, the timeout says which are still running (e.g. a learner rank stuck in a weight export)
    with pytest.raises(TimeoutError, match=r"weight sync \(version 1\): 1 of 3 .*: learner rank 1 export$"):
        wait_all([quick[0], stuck, quick[1]], 2, "weight sync (version 1)",
                 ["rollout-0 load", "learner rank 1 export", "learner rank 2 export"])
    ray.cancel(stuck, force=True)


def test_learner_metadata_over_ray_and_a_cpu_learner_refuses_nccl(ray_local):
    """The LearnerGroup's metadata is rank 0's model's; a CPU learner refuses the group clearly."""
    from actors.learner import LearnerGroup
    from engines.models import load_model
    cfg = load_config(None, ["model.tiny_random=true", "algo.tasks_per_step=1", "algo.trajectories_per_task=2",
                             "algo.max_turns=1", "learner.micro_batch_samples=1", "ray.get_timeout_s=120"])
    group = LearnerGroup(cfg, name="wt-learner")
    try:
        meta = group.weight_transfer_metadata()
        assert meta == transfer_metadata(load_model(cfg.model, seed=cfg.run.seed), torch.float32)
        assert group.weight_transfer_metadata() is meta                    # cached
        with pytest.raises(Exception, match="rank 0 needs a CUDA GPU"):
            group.get(group.async_init_weight_transfer("127.0.0.1", 1, 2))
        with pytest.raises(Exception, match="init_weight_transfer was not called"):
            group.get(group.async_send_weights(meta))
    finally:
        group.shutdown()
