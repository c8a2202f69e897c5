"""NCCL weight transfer from the learner to vLLM engines on other GPUs (rollout.weight_sync=nccl), trainer side.

The learner's rank 0 and every vLLM worker (one per tensor-parallel shard of each engine) form one NCCL group with
vLLM's own helpers: the trainer joins as rank 0 through `vllm.distributed.weight_transfer.nccl_common.trainer_init`,
engine e's workers join as ranks offset_e .. offset_e + tp_e - 1 through `LLM.init_weight_transfer_engine`
(engines/vllm_engine.py). World size = 1 + the sum of the engines' tensor-parallel sizes (`engine_ranks`).

One sync: every engine runs vLLM's `update_weights` with the metadata of `transfer_metadata` (names, dtypes, full
shapes, in send order; packed=True) while the trainer runs `NCCLWeightSender.send`, which broadcasts the same tensors
in the same order through vLLM's packed producer (`NCCLWeightTransferEngine.trainer_send_weights`): tensors are
concatenated into buffers of `packed_buffer_size_bytes`, and producer and consumer cut the same buffers because both
walk the same (name, dtype, shape) list. Both sides must be called concurrently (each blocks until the other side has
done its part); actors/learner.py and pipelines/kernel_grpo.py orchestrate that.

What is sent: `module.named_parameters()` (tied parameters appear once), minus `lm_head.weight` when the model ties it
to the embedding (vLLM ties it too), cast to the engine's dtype. Buffers are not sent (Qwen2/Llama have no persistent
ones; vLLM computes rotary tables itself).

ZeRO-3 (`gather` = a context factory such as `lambda ps: deepspeed.zero.GatheredParameters(ps, modifier_rank=None)`):
full parameters exist only inside that collective context, so EVERY learner rank must iterate `iter_transfer_tensors`
in the same order (NCCLWeightSender.send does: rank 0 broadcasts, the other ranks only gather). Parameters are
gathered one decoder layer at a time (`layer_groups`), never the whole model; rank 0 copies each gathered tensor in
the engine dtype before the layer is released, so at most one layer plus the packing buffers are live at once.

Limits: pipeline parallelism is not handled (every parameter must be local or gatherable); the group has no timeout of
its own (a peer that dies mid-broadcast leaves the others blocked: the controller's ray.get timeouts surface that and
the trial restarts from its checkpoint); vLLM is imported lazily, only when a group is joined or weights are sent.

    python -m pytest tests/test_weight_transfer.py -q                         # metadata, order, grouping (CPU)
    python -m pytest tests/test_weight_transfer_gpu.py -m gpu -q              # learner GPU 1 -> vLLM GPU 0
    python benchmarks/weight_sync_bench.py                                    # nccl vs ipc vs disk (2 GPUs)
"""
from __future__ import annotations

import contextlib
import re
import socket
import time
from typing import Callable, Iterable, Iterator, Optional

import torch

PACKED_BUFFER_BYTES = 256 * 1024 * 1024     # per packed broadcast; the engine allocates num_buffers of these
PACKED_NUM_BUFFERS = 2                      # double buffering: pack the next chunk while one is broadcast

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

GatherFactory = Callable[[list], "contextlib.AbstractContextManager"]


def dtype_name(dtype: torch.dtype) -> str:
    """'bfloat16' for torch.bfloat16: the spelling vLLM's update_info expects (getattr(torch, name))."""
    return str(dtype).removeprefix("torch.")


def _tied(module: torch.nn.Module) -> bool:
    cfg = getattr(module, "config", None)
    return bool(getattr(cfg, "tie_word_embeddings", False))


def transfer_params(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) in send order: named_parameters (tied ones once), without a tied lm_head.weight."""
    tied = _tied(module)
    return [(n, p) for n, p in module.named_parameters() if not (tied and n == "lm_head.weight")]


def full_shape(p: torch.Tensor) -> list[int]:
    """The parameter's full shape: under ZeRO-3 the local tensor is an empty placeholder and ds_shape is the real one."""
    return [int(d) for d in getattr(p, "ds_shape", p.shape)]


def transfer_metadata(module: torch.nn.Module, dtype: torch.dtype, packed: bool = True,
                      buffer_bytes: int = PACKED_BUFFER_BYTES, num_buffers: int = PACKED_NUM_BUFFERS) -> dict:
    """vLLM's NCCL update_info for `module`'s weights sent in `dtype`: names, dtype_names, shapes (send order) and the
    packing settings. Plain data (picklable, JSON-able); the engine hands it to LLM.update_weights as is. Reads
    shapes only, never gathers."""
    params = transfer_params(module)
    return {"names": [n for n, _ in params], "dtype_names": [dtype_name(dtype)] * len(params),
            "shapes": [full_shape(p) for _, p in params], "packed": bool(packed),
            "packed_buffer_size_bytes": int(buffer_bytes), "packed_num_buffers": int(num_buffers)}


def metadata_bytes(meta: dict) -> int:
    """Bytes one sync moves (sum over tensors of numel * itemsize)."""
    total = 0
    for shape, dn in zip(meta["shapes"], meta["dtype_names"]):
        n = 1
        for d in shape:
            n *= int(d)
        total += n * DTYPES[dn].itemsize
    return total


def check_update_info(meta: dict) -> None:
    """Raise ValueError naming the problem if `meta` is not a well-formed update_info (checked before any broadcast:
    a malformed one would leave the peers blocked in the group)."""
    for key in ("names", "dtype_names", "shapes"):
        if not isinstance(meta.get(key), list):
            raise ValueError(f"weight transfer metadata: '{key}' must be a list, got {type(meta.get(key)).__name__}")
    n = len(meta["names"])
    if n == 0:
        raise ValueError("weight transfer metadata: no tensors to send")
    if len(meta["dtype_names"]) != n or len(meta["shapes"]) != n:
        raise ValueError(f"weight transfer metadata: {n} names but {len(meta['dtype_names'])} dtype_names and "
                         f"{len(meta['shapes'])} shapes")
    bad = sorted({d for d in meta["dtype_names"] if d not in DTYPES})
    if bad:
        raise ValueError(f"weight transfer metadata: unsupported dtype(s) {bad}; allowed: {sorted(DTYPES)}")
    if int(meta.get("packed_buffer_size_bytes", PACKED_BUFFER_BYTES)) <= 0:
        raise ValueError("weight transfer metadata: packed_buffer_size_bytes must be > 0")


def first_difference(a: list, b: list) -> int:
    """Index of the first differing entry (or the shorter length when one is a prefix of the other)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


_LAYER = re.compile(r"^(.*?\.layers\.\d+)\.")


def layer_groups(names: Iterable[str]) -> list[list[int]]:
    """Indices of consecutive names that share a decoder layer ('model.layers.7.'); every other name alone.
    ZeRO-3 gathers one group at a time."""
    groups: list[list[int]] = []
    last = None
    for i, name in enumerate(names):
        m = _LAYER.match(name)
        key = m.group(1) if m else None
        if key is not None and key == last:
            groups[-1].append(i)
        else:
            groups.append([i])
        last = key
    return groups


def iter_transfer_tensors(module: torch.nn.Module, dtype: torch.dtype, gather: Optional[GatherFactory] = None,
                          materialize: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor in `dtype`) in transfer_params order. `gather(params)` makes a group's full parameters available
    (ZeRO-3; a collective: every rank iterates). `materialize=False` (ZeRO-3 ranks other than 0) gathers and yields
    None instead of a copy. Without `gather` the parameters are yielded as is when already in `dtype` (no copy).

    Tensors are created on the caller's current CUDA stream (vLLM's packed producer calls next() inside its own
    stream context), so freeing them after packing is ordered with their use."""
    params = transfer_params(module)
    for group in layer_groups(n for n, _ in params):
        ps = [params[i][1] for i in group]
        if gather is None:
            for i in group:
                name, p = params[i]
                yield name, (p.detach().to(dtype=dtype) if materialize else None)
            continue
        with gather(ps):
            cuda = any(p.is_cuda for p in ps)
            if cuda:
                torch.cuda.synchronize()       # the gather may run on another stream: wait before reading
            copies = [p.data.to(dtype=dtype, copy=True) if materialize else None for p in ps]
            if cuda:
                # the copies read the gathered memory, which the context frees on exit
                torch.cuda.current_stream().synchronize()
        for i, t in zip(group, copies):
            yield params[i][0], t
        del copies


def engine_ranks(tp_sizes: list[int]) -> tuple[int, list[int]]:
    """(world size, rank offset of each engine) of the group: the trainer is rank 0, engine e's workers follow."""
    offsets, nxt = [], 1
    for tp in tp_sizes:
        if int(tp) < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {tp}")
        offsets.append(nxt)
        nxt += int(tp)
    return nxt, offsets


def free_port(host: str = "") -> int:
    """A TCP port free on this node right now (the trainer's rank 0 listens on it for the group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class NCCLWeightSender:
    """The trainer side of the group. Construct on every learner rank; only `rank` 0 joins the NCCL group (the call
    blocks until every engine worker has joined too, up to vLLM's store timeout of 300 s)."""

    def __init__(self, master_address: str, master_port: int, world_size: int, rank: int = 0):
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.group = None
        self.syncs = 0
        if self.rank == 0:
            if not torch.cuda.is_available():
                raise RuntimeError("rollout.weight_sync=nccl: the learner's rank 0 needs a CUDA GPU")
            from vllm.distributed.weight_transfer.nccl_common import trainer_init
            self.group = trainer_init({"master_address": master_address, "master_port": int(master_port),
                                       "world_size": self.world_size})

    def __repr__(self) -> str:
        return f"NCCLWeightSender(rank={self.rank}, world_size={self.world_size}, syncs={self.syncs})"

    def send(self, module: torch.nn.Module, meta: dict, gather: Optional[GatherFactory] = None) -> dict:
        """Broadcast `module`'s weights as `meta` (from transfer_metadata) describes; every learner rank calls this
        together when `gather` is given. Returns {'bytes', 'seconds', 'tensors'} (rank 0; zeros elsewhere)."""
        check_update_info(meta)
        dtype = DTYPES[meta["dtype_names"][0]]
        mine = transfer_metadata(module, dtype, meta.get("packed", True))
        for key in ("names", "dtype_names", "shapes"):
            if mine[key] != meta[key]:
                i = first_difference(mine[key], meta[key])
                raise ValueError(f"weight transfer: the module's {key} differ from the metadata the engines were given "
                                 f"(first at index {i}: module {mine[key][i] if i < len(mine[key]) else '<end>'!r}, "
                                 f"metadata {meta[key][i] if i < len(meta[key]) else '<end>'!r})")
        t0 = time.perf_counter()
        if torch.cuda.is_available():
            # vLLM's packer reads the weights on its own (non-blocking) streams, which do not wait for the default
            # stream: the optimizer step that wrote them must be finished first
            torch.cuda.synchronize()
        tensors = iter_transfer_tensors(module, dtype, gather, materialize=self.rank == 0)
        if self.rank != 0:
            for _ in tensors:           # drive the collective gathers in lockstep with rank 0
                pass
            return {"bytes": 0, "seconds": time.perf_counter() - t0, "tensors": 0}
        from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine
        NCCLWeightTransferEngine.trainer_send_weights(tensors, {
            "group": self.group, "src": 0, "packed": bool(meta.get("packed", True)),
            "packed_buffer_size_bytes": int(meta.get("packed_buffer_size_bytes", PACKED_BUFFER_BYTES)),
            "packed_num_buffers": int(meta.get("packed_num_buffers", PACKED_NUM_BUFFERS))})
        torch.cuda.synchronize()
        self.syncs += 1
        return {"bytes": metadata_bytes(meta), "seconds": time.perf_counter() - t0, "tensors": len(meta["names"])}

    def close(self) -> None:
        group, self.group = self.group, None
        if group is not None and hasattr(group, "destroy"):
            group.destroy()


def backend_module(backend) -> tuple[torch.nn.Module, Optional[GatherFactory], torch.dtype]:
    """(module, gather factory or None, export dtype) of a learners/ backend: TorchLearner.model, or the HF model
    inside DeepSpeedLearner's engine with GatheredParameters under ZeRO-3."""
    dtype = getattr(backend, "export_dtype", torch.bfloat16)
    engine = getattr(backend, "engine", None)
    if engine is not None and hasattr(engine, "module"):
        if int(getattr(getattr(backend, "lcfg", None), "zero_stage", 0)) != 3:
            return engine.module, None, dtype
        import deepspeed
        return engine.module, lambda params: deepspeed.zero.GatheredParameters(params, modifier_rank=None), dtype
    model = getattr(backend, "model", None)
    if model is None:
        raise TypeError(f"{type(backend).__name__}: no .model or .engine.module to send weights from")
    return model, None, dtype
