"""Learner actors: LearnerRank (one Ray actor per rank, a thin shell over a learners/ backend) and LearnerGroup (the
driver-side handle whose `async_*` methods return ObjectRefs).

Data flow: the controller passes ObjectRefs of rlcore.types.TurnSample and one advantage per sample. The group cuts
them into contiguous per-rank slices (refs only; the driver never fetches a payload) and each rank `ray.get`s its own
refs with a timeout, builds TrainSamples and trains. Every rank pads its slice to the same count with masked-out
copies so that ZeRO-3's collective forwards line up; with the deepspeed backend DeepSpeed averages gradients over
ranks. The torch backend has exactly one rank (it does not average gradients; several torch ranks would train
diverging copies, so the group refuses learner.num_ranks > 1 with it).

Weights: async_weights() asks every rank (ZeRO-3 gathers collectively) and returns rank 0's result ref: a dict of CPU
tensors stored once in the object store, fetched by any number of rollout workers.

NCCL weight sync (rollout.weight_sync=nccl, engines on other GPUs): rank 0 joins one NCCL group with the vLLM engines
(async_init_weight_transfer) and each async_send_weights broadcasts the weights straight from its GPU while the engines
receive (engines/weight_transfer.py); under ZeRO-3 every rank takes part in the layer-by-layer gathers. Nothing goes
through the object store or host memory.

Failures: a rank that dies makes `LearnerGroup.get` raise LearnerRankError naming the rank and its actor; the pipeline
then restarts the trial from its last checkpoint (Ray Tune). Ranks are not restarted in place: their optimizer state
and the NCCL group would be lost anyway.

    python -m pytest tests/test_learner.py -q -k group
"""
from __future__ import annotations

import math
import os
import socket
import time
from typing import Any, Optional, Sequence

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from learners.base import LearnerError, build_train_samples, padding_sample, split_even


class LearnerRankError(RuntimeError):
    """A learner rank died or did not answer in time; the message names the rank and its actor."""


class LearnerRank:
    """One learner rank. Construct through LearnerGroup; call setup() before anything else."""

    def __init__(self, cfg, rank: int, world_size: int, name: str):
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.name = name
        self.backend = None
        self.sender = None                  # engines.weight_transfer.NCCLWeightSender (rollout.weight_sync=nccl)

    def __repr__(self) -> str:                       # shown as the log prefix and in the dashboard
        return f"LearnerRank({self.name}, rank={self.rank}/{self.world_size}, backend={self.cfg.learner.backend})"

    def node_ip_and_free_port(self) -> tuple[str, int]:
        """This node's IP and a free TCP port, for the torch.distributed rendezvous of a DeepSpeed group."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), int(port)

    def setup(self, master_addr: Optional[str] = None, master_port: Optional[int] = None) -> str:
        """Build the backend (loads the model). DeepSpeed ranks must run this concurrently (init_distributed)."""
        lc = self.cfg.learner
        if lc.backend == "deepspeed":
            # Ray gives each rank its own GPU (CUDA_VISIBLE_DEVICES), so the local device index is always 0.
            os.environ.update({"MASTER_ADDR": str(master_addr), "MASTER_PORT": str(master_port),
                               "RANK": str(self.rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": "0"})
            from learners.deepspeed_learner import DeepSpeedLearner
            self.backend = DeepSpeedLearner(self.cfg)
        else:
            import torch
            torch.set_num_threads(max(1, int(lc.cpus_per_rank)))
            from learners.torch_learner import TorchLearner
            self.backend = TorchLearner(self.cfg)
        return repr(self.backend)

    def _need_backend(self):
        if self.backend is None:
            raise LearnerError(f"{self.name}: setup() was not called")
        return self.backend

    def train(self, sample_refs: list, advantages: list[float], gradient_steps: int, pad_to: int) -> dict:
        """Fetch this rank's samples (timeout ray.get_timeout_s), pad to `pad_to`, take `gradient_steps` steps."""
        backend = self._need_backend()
        if len(sample_refs) == 0:
            raise LearnerError(f"{self.name}: empty slice of samples")
        turns = ray.get(list(sample_refs), timeout=self.cfg.ray.get_timeout_s)
        samples = build_train_samples(turns, advantages)
        samples += [padding_sample(samples[-1]) for _ in range(pad_to - len(samples))]
        metrics = backend.train_batch(samples, gradient_steps)
        versions = [t.weight_version for t in turns]
        metrics.update(rank=self.rank, weight_version_min=min(versions), weight_version_max=max(versions))
        return metrics

    def weights(self) -> Optional[dict]:
        """Full weights as CPU tensors on rank 0 (None elsewhere). All ranks must be asked together."""
        return self._need_backend().state_dict_cpu() if (self.rank == 0 or self.world_size > 1) else None

    # NCCL weight transfer (engines/weight_transfer.py) -------------------------------------------------------------
    def weight_transfer_metadata(self) -> dict:
        """vLLM update_info of this model's weights (names, dtypes, full shapes in send order); reads no weights."""
        from engines.weight_transfer import backend_module, transfer_metadata
        module, _, dtype = backend_module(self._need_backend())
        return transfer_metadata(module, dtype)

    def init_weight_transfer(self, master_address: str, master_port: int, world_size: int) -> str:
        """Rank 0 joins the NCCL group with the engines (blocks until all members joined); other ranks only take
        part in the gathers of send_weights."""
        from engines.weight_transfer import NCCLWeightSender
        self._need_backend()
        self.sender = NCCLWeightSender(master_address, master_port, world_size, rank=self.rank)
        return repr(self.sender)

    def send_weights(self, meta: dict) -> dict:
        """Broadcast the weights as `meta` lists them (rank 0); every rank must be called together (ZeRO-3 gathers)."""
        from engines.weight_transfer import backend_module
        if self.sender is None:
            raise LearnerError(f"{self.name}: init_weight_transfer was not called")
        module, gather, _ = backend_module(self._need_backend())
        return self.sender.send(module, meta, gather)

    def logprobs(self, sample_refs: list) -> list[list[float]]:
        turns = ray.get(list(sample_refs), timeout=self.cfg.ray.get_timeout_s)
        return self._need_backend().logprobs(build_train_samples(turns, [0.0] * len(turns)))

    def save(self, directory: str) -> str:
        return self._need_backend().save(directory)

    def load(self, directory: str) -> int:
        backend = self._need_backend()
        backend.load(directory)
        return backend.step

    def ping(self) -> int:
        return self.rank


class LearnerGroup:
    """Driver-side handle over cfg.learner.num_ranks LearnerRank actors named '<name>-rank<i>'.

    `placement_group` / `bundle_indices` (optional) pin rank i to bundle bundle_indices[i]."""

    def __init__(self, cfg, name: str = "learner", placement_group=None, bundle_indices: Optional[list[int]] = None):
        lc = cfg.learner
        if lc.backend == "torch" and lc.num_ranks != 1:
            raise LearnerError(f"learner.num_ranks={lc.num_ranks}: the torch backend runs one rank (it does not "
                               "average gradients); use learner.backend=deepspeed for several ranks")
        self.cfg = cfg
        self.name = name
        self.world_size = lc.num_ranks
        self.timeout_s = cfg.ray.get_timeout_s
        self.ranks = []
        self._ref_rank: dict[Any, int] = {}
        self._transfer_meta: Optional[dict] = None
        remote_cls = ray.remote(LearnerRank)
        for r in range(self.world_size):
            opts: dict[str, Any] = {"num_cpus": lc.cpus_per_rank, "num_gpus": lc.gpus_per_rank,
                                    "name": f"{name}-rank{r}", "max_restarts": 0, "max_concurrency": 1}
            if placement_group is not None:
                from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
                idx = bundle_indices[r] if bundle_indices else r
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=idx)
            self.ranks.append(remote_cls.options(**opts).remote(cfg, r, self.world_size, f"{name}-rank{r}"))
        t0 = time.perf_counter()
        addr, port = None, None
        if lc.backend == "deepspeed":
            addr, port = self.get(self._track(self.ranks[0].node_ip_and_free_port.remote(), 0))
        descs = self.get([self._track(a.setup.remote(addr, port), r) for r, a in enumerate(self.ranks)])
        print(f"[{name}] {self.world_size} rank(s) ready in {time.perf_counter() - t0:.1f}s: {descs[0]}", flush=True)

    def __repr__(self) -> str:
        return f"LearnerGroup({self.name}, ranks={self.world_size}, backend={self.cfg.learner.backend})"

    def _track(self, ref, rank: int):
        if len(self._ref_rank) > 10_000:         # refs of long-finished calls; the mapping is only for messages
            self._ref_rank.clear()
        self._ref_rank[ref] = rank
        return ref

    # async API -----------------------------------------------------------------------------------------------
    def async_train(self, sample_refs: Sequence, advantages: Sequence[float]) -> list:
        """One batch: algo.gradient_steps_per_batch optimizer steps. Returns one metrics ref per rank."""
        if len(sample_refs) != len(advantages):
            raise LearnerError(f"{len(sample_refs)} sample refs but {len(advantages)} advantages")
        steps = self.cfg.algo.gradient_steps_per_batch
        if len(sample_refs) < self.world_size * steps:
            raise LearnerError(f"{len(sample_refs)} samples are too few for {self.world_size} rank(s) x "
                               f"{steps} gradient steps")
        pad_to = math.ceil(len(sample_refs) / self.world_size)
        ref_slices = split_even(list(sample_refs), self.world_size)
        adv_slices = split_even([float(a) for a in advantages], self.world_size)
        return [self._track(a.train.remote(refs, adv, steps, pad_to), r)
                for r, (a, refs, adv) in enumerate(zip(self.ranks, ref_slices, adv_slices))]

    def async_weights(self):
        """Ref to rank 0's full weights (dict[str, CPU Tensor], stored once in the object store)."""
        return self.async_weights_all()[0]

    def async_weights_all(self) -> list:
        """One export ref per rank (every rank must take part in ZeRO-3's gathers): rank 0's holds the weights, the
        others' None. Waiting for all of them tells a rank stuck in the export from a finished one."""
        return [self._track(a.weights.remote(), r) for r, a in enumerate(self.ranks)]

    def async_weight_transfer_endpoint(self):
        """Ref to (IP, free port) of rank 0's node: the NCCL weight-transfer group's rendezvous address."""
        return self._track(self.ranks[0].node_ip_and_free_port.remote(), 0)

    def async_init_weight_transfer(self, master_address: str, master_port: int, world_size: int) -> list:
        """Every rank builds its sender; rank 0 joins the group (call the engines' side concurrently)."""
        return [self._track(a.init_weight_transfer.remote(master_address, master_port, world_size), r)
                for r, a in enumerate(self.ranks)]

    def weight_transfer_metadata(self) -> dict:
        """Rank 0's vLLM update_info (cached: names and shapes do not change during a run)."""
        if self._transfer_meta is None:
            self._transfer_meta = self.get(self._track(self.ranks[0].weight_transfer_metadata.remote(), 0))
        return self._transfer_meta

    def async_send_weights(self, meta: dict) -> list:
        """One NCCL broadcast of the current weights (rank 0 sends, every rank gathers); one stats ref per rank."""
        return [self._track(a.send_weights.remote(meta), r) for r, a in enumerate(self.ranks)]

    def async_save(self, directory: str) -> list:
        return [self._track(a.save.remote(directory), r) for r, a in enumerate(self.ranks)]

    def async_load(self, directory: str) -> list:
        return [self._track(a.load.remote(directory), r) for r, a in enumerate(self.ranks)]

    def async_logprobs(self, sample_refs: Sequence):
        """Ref to the current log-probs of the samples' responses. Every rank is called (under ZeRO-3 a forward is a
        collective: rank 0 alone would wait forever); each computes its share and all return the whole list: rank
        0's ref is returned, the others are tracked for failures."""
        refs = [r.logprobs.remote(list(sample_refs)) for r in self.ranks]
        for i, ref in enumerate(refs[1:], start=1):
            self._track(ref, i)
        return self._track(refs[0], 0)

    # blocking calls ------------------------------------------------------------------------------------------
    def get(self, refs, timeout_s: Optional[float] = None):
        """ray.get with the configured timeout; a dead or silent rank raises LearnerRankError naming it."""
        single = not isinstance(refs, list)
        items = [refs] if single else refs
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        out = []
        for i, ref in enumerate(items):
            rank = self._ref_rank.get(ref, i)
            try:
                out.append(ray.get(ref, timeout=max(0.0, deadline - time.monotonic())))
            except RayActorError as e:
                raise LearnerRankError(f"learner rank {rank} (actor {self.name}-rank{rank}) died: "
                                       f"{str(e).splitlines()[0]}") from e
            except GetTimeoutError as e:
                dead = self._dead_ranks()          # a dead peer stalls the live ranks inside a collective
                if dead:
                    raise LearnerRankError(f"learner rank(s) {dead} died (actors "
                                           f"{', '.join(f'{self.name}-rank{r}' for r in dead)}); rank {rank} "
                                           f"waited {timeout:.0f}s for them") from e
                raise LearnerRankError(f"learner rank {rank} (actor {self.name}-rank{rank}) did not answer within "
                                       f"{timeout:.0f}s (ray.get_timeout_s)") from e
        return out[0] if single else out

    def _dead_ranks(self, timeout_s: float = 5.0) -> list[int]:
        """Ranks whose actor is gone (a busy rank just does not answer in time and is not reported)."""
        dead = []
        for r, a in enumerate(self.ranks):
            try:
                ray.get(a.ping.remote(), timeout=timeout_s)
            except RayActorError:
                dead.append(r)
            except GetTimeoutError:
                pass
        return dead

    def train(self, sample_refs: Sequence, advantages: Sequence[float]) -> dict:
        """Blocking async_train + merged metrics."""
        return merge_rank_metrics(self.get(self.async_train(sample_refs, advantages)))

    def check_alive(self, timeout_s: float = 30.0) -> None:
        self.get([self._track(a.ping.remote(), r) for r, a in enumerate(self.ranks)], timeout_s)

    def shutdown(self) -> None:
        for a in self.ranks:
            try:
                ray.kill(a, no_restart=True)
            except Exception:          # already dead: nothing to release
                pass
        self.ranks = []


def merge_rank_metrics(per_rank: Sequence[dict]) -> dict:
    """One metrics dict from every rank's: token-weighted means, min/max of ratios, summed tokens; grad_norm and lr
    are global (rank 0's); seconds = the slowest rank."""
    if len(per_rank) == 1:
        return dict(per_rank[0])
    tokens = sum(m["tokens"] for m in per_rank)
    w = [m["tokens"] / max(tokens, 1) for m in per_rank]
    out = dict(per_rank[0])
    for k in ("clip_fraction", "ratio_mean", "entropy", "kl"):
        out[k] = sum(wi * m[k] for wi, m in zip(w, per_rank))
    out["loss"] = sum(m["loss"] for m in per_rank) / len(per_rank)
    out["ratio_min"] = min(m["ratio_min"] for m in per_rank)
    out["ratio_max"] = max(m["ratio_max"] for m in per_rank)
    out["tokens"] = tokens
    out["samples"] = sum(m["samples"] for m in per_rank)
    out["seconds"] = max(m["seconds"] for m in per_rank)
    out["tokens_per_s"] = tokens / max(out["seconds"], 1e-9)
    out["weight_version_min"] = min(m["weight_version_min"] for m in per_rank)
    out["weight_version_max"] = max(m["weight_version_max"] for m in per_rank)
    out.pop("rank", None)
    return out
