"""RolloutWorker: an async Ray actor around one generation engine (engines/), serving concurrent requests.

The controller sends one `generate_turn` per trajectory turn, each as soon as that trajectory's previous kernel is
evaluated (no barrier between turns), so requests arrive at different times. One engine thread
(engines/driver.py's EngineDriver) serves them:
  vllm  continuous batching: each request joins the running batch at the next engine step and returns as soon as it
        is finished, whatever else is in flight (at most rollout.max_concurrent_sequences in flight; more queue).
  hf    batches: when the engine becomes free, everything queued goes into the next call at once. A request
        arriving during a call waits for it.
  both: a request that finds the engine idle waits for company until no new request came for rollout.batch_wait_ms
        (at most 10 x that; engines/driver.py, "Start window"), so a burst of first turns starts as one batch.
update_weights / receive_weights (NCCL) / sleep / wake_up DRAIN: no new request starts, the ones in flight finish, then the call runs, so each
TurnSample's weight_version is the version that sampled all of its tokens (an update waits for the longest request in
flight).

A turn's prompt is built here (pipelines/kernel_prompts.py) from the task source and the earlier turns: their
TurnSamples are fetched from the object store by ref (with a timeout) and paired with the feedback strings the
controller sends along; the chain of thought is never fed back. The response is parsed with
kernel_eval.parse.parse_response (a minimal local parser stands in while that module is absent).

While asleep (sleep(level)), requests queue and wait for wake_up; callers' own timeouts bound the wait.
Limits: one engine per actor; a cancelled request is aborted in the engine only on the streaming path.

    python -m pytest tests/test_rollout_worker.py -q
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from engines.base import Generation, SamplingParams, make_engine
from engines.driver import EngineDriver
from rlcore.types import TurnRecord, TurnSample

log = logging.getLogger(__name__)

BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


@dataclass
class TurnRequest:
    task_name: str
    task_source: str
    backend: str                       # "cpu" | "cuda": which prompt variant
    trajectory_id: int
    turn: int
    history_refs: list = field(default_factory=list)   # ObjectRef[TurnSample] of earlier turns, oldest first
    feedback: list[str] = field(default_factory=list)  # the evaluator's feedback on each of those turns
    params: SamplingParams = field(default_factory=SamplingParams)


def _fallback_parse(text: str) -> tuple[Optional[str], str, str]:
    """(code, summary, thought): final fenced code block, text after it, the <think> part. Used only when
    kernel_eval.parse is not installed."""
    thought = ""
    if "</think>" in text:
        head, text = text.rsplit("</think>", 1)
        thought = head.replace("<think>", "").strip()
    blocks = list(re.finditer(r"```[a-zA-Z0-9_+-]*\n(.*?)```", text, re.DOTALL))
    if not blocks:
        return None, text.strip(), thought
    return blocks[-1].group(1), text[blocks[-1].end():].strip(), thought


def parse_turn(text: str) -> tuple[Optional[str], str, str]:
    try:
        from kernel_eval.parse import parse_response
    except ImportError:
        return _fallback_parse(text)
    p = parse_response(text)
    # on a format error parse_response's summary explains the error; the next turn gets that from the evaluator's
    # feedback instead, so the model's own turn shows no summary
    return p.code, (p.summary if p.error is None else ""), p.thought


class RolloutWorker:
    """Create with `start_rollout_worker` (a named, async Ray actor); the methods below are called with .remote().
    `hf_streaming`: the hf engine's cache-less streaming mode (tests of the continuous-batching path on CPU)."""

    def __init__(self, model_cfg, rollout_cfg, seed: int = 0, name: str = "rollout-0",
                 get_timeout_s: float = 900.0, device: Optional[str] = None, hf_streaming: bool = False):
        from ray.util import metrics
        from engines.models import load_tokenizer
        self.name = name
        self.rollout_cfg = rollout_cfg
        self.get_timeout_s = get_timeout_s
        try:
            self.tokenizer = load_tokenizer(model_cfg)
        except Exception as e:      # raw `generate` (token ids) works without one; generate_turn does not
            log.warning("%s: no tokenizer, generate_turn is unavailable: %s", name, e)
            self.tokenizer = None
        self._engine = make_engine(model_cfg, rollout_cfg, seed=seed, device=device, hf_streaming=hf_streaming)
        self._stats: dict[str, Any] = dict(prompts_over_budget=0, dropped_turns=0, weight_updates=0,
                                           weight_update_s=0.0)
        tags = {"worker": name}
        self._m_tok_s = metrics.Gauge("rollout_tokens_per_s", "tokens/s of the last engine call or step",
                                      tag_keys=("worker",))
        self._m_batch = metrics.Histogram("rollout_batch_size", "sequences per engine call or in flight per step",
                                          boundaries=BATCH_BUCKETS, tag_keys=("worker",))
        self._m_queue = metrics.Gauge("rollout_queue_depth", "requests waiting to enter the engine",
                                      tag_keys=("worker",))
        for m in (self._m_tok_s, self._m_batch, self._m_queue):
            m.set_default_tags(tags)
        self._driver = EngineDriver(lambda: self._engine, max_in_flight=rollout_cfg.max_concurrent_sequences,
                                    batch_wait_s=rollout_cfg.batch_wait_ms / 1000.0, name=name,
                                    on_tokens=self._on_tokens, on_queue=self._m_queue.set)

    @property
    def engine(self):
        return self._engine

    @engine.setter
    def engine(self, engine) -> None:
        """Swap the engine (between requests; the driver picks it up on its next iteration)."""
        self._engine = engine

    def _on_tokens(self, n_tokens: int, seconds: float, batch_size: int) -> None:
        self._m_tok_s.set(n_tokens / max(seconds, 1e-9))
        self._m_batch.observe(batch_size)

    def __repr__(self) -> str:
        return f"RolloutWorker({self.name}, {self._engine!r})"

    async def _submit(self, prompt_ids: list[int], params: SamplingParams) -> tuple[Generation, int]:
        return await self._driver.generate(prompt_ids, params)

    # ---------------------------------------------------------------------------------------------- API
    async def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        """Raw generation (tests, benchmarks, other pipelines); prompt i samples with seed params.seed + i."""
        results = await asyncio.gather(*[self._submit(list(p), params.for_row(i)) for i, p in enumerate(prompts)])
        return [g for g, _ in results]

    async def _history(self, req: TurnRequest) -> list[TurnRecord]:
        if len(req.feedback) != len(req.history_refs):
            raise ValueError(f"TurnRequest(trajectory {req.trajectory_id}, turn {req.turn}): "
                             f"{len(req.history_refs)} history_refs but {len(req.feedback)} feedback strings")
        if not req.history_refs:
            return []
        try:
            samples = await asyncio.wait_for(asyncio.gather(*req.history_refs), self.get_timeout_s)
        except asyncio.TimeoutError:
            raise TimeoutError(f"{self.name}: earlier turns of trajectory {req.trajectory_id} not available after "
                               f"{self.get_timeout_s:.0f} s (ray.get_timeout_s)") from None
        return [TurnRecord(kernel=s.kernel, summary=s.summary, feedback=fb) for s, fb in zip(samples, req.feedback)]

    async def generate_turn(self, req: TurnRequest) -> TurnSample:
        from pipelines.kernel_prompts import encode_with_budget
        if self.tokenizer is None:
            raise RuntimeError(f"{self.name}: generate_turn needs the model's tokenizer, which could not be loaded")
        history = await self._history(req)
        budget = self.rollout_cfg.max_context_tokens
        loop = asyncio.get_running_loop()
        prompt_ids, dropped = await loop.run_in_executor(
            None, encode_with_budget, self.tokenizer, req.task_source, history, req.backend, budget)
        self._stats["dropped_turns"] += dropped
        if len(prompt_ids) > budget:
            self._stats["prompts_over_budget"] += 1
        gen, version = await self._submit(prompt_ids, req.params)
        code, summary, thought = parse_turn(gen.text)
        return TurnSample(task_name=req.task_name, trajectory_id=req.trajectory_id, turn=req.turn,
                          prompt_ids=gen.prompt_ids, token_ids=gen.token_ids, logprobs=gen.logprobs, text=gen.text,
                          finish_reason=gen.finish_reason, weight_version=version, kernel=code, summary=summary,
                          thought=thought, prompt_text=self.tokenizer.decode(prompt_ids), dropped_turns=dropped)

    async def update_weights(self, state_or_ref: Any, version: int) -> int:
        """Load a state dict of CPU tensors (or an ObjectRef to one, or [ref] so Ray does not resolve it in the
        caller's argument list) in place. Drains first: no new request starts, the ones in flight finish under the
        old weights (and carry the old version), then the weights load; later requests carry `version`."""
        import ray
        if isinstance(state_or_ref, list) and len(state_or_ref) == 1 and isinstance(state_or_ref[0], ray.ObjectRef):
            state_or_ref = state_or_ref[0]
        if not isinstance(state_or_ref, ray.ObjectRef):
            self._check_state(state_or_ref)
            return await self._driver.call(self._load, state_or_ref, version)
        # The load takes its place in the engine's queue before anything awaits: a request that reaches the worker
        # after this update then waits for it (awaiting the fetch first let such a request start meanwhile and run
        # under the old weights). The fetch overlaps the drain; the engine thread waits for what is left of it.
        fetched = state_or_ref.future()                   # concurrent.futures.Future, completed by Ray

        def load() -> int:
            state = fetched.result(timeout=self.get_timeout_s)
            self._check_state(state)
            return self._load(state, version)

        return await self._driver.call(load)

    def _check_state(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"{self.name}.update_weights: expected a state dict or an ObjectRef to one, "
                            f"got {type(state).__name__}")

    def _load(self, state: dict, version: int) -> int:
        t = time.perf_counter()
        self._engine.load_weights(state)
        self._engine.weight_version = int(version)
        self._stats["weight_updates"] += 1
        self._stats["weight_update_s"] += time.perf_counter() - t
        return self._engine.weight_version

    async def init_weight_transfer(self, master_address: str, master_port: int, rank_offset: int,
                                   world_size: int) -> str:
        """Join the NCCL weight-transfer group with the learner's rank 0 (rollout.weight_sync=nccl; vllm engine).
        Runs on the engine thread and blocks until every member has joined: the controller calls the learner's side
        and every worker's concurrently (pipelines/kernel_grpo.py init_nccl_weight_sync)."""
        if not hasattr(self._engine, "init_weight_transfer"):
            raise RuntimeError(f"{self.name}: {type(self._engine).__name__} has no NCCL weight transfer "
                               f"(rollout.weight_sync=nccl needs rollout.engine=vllm)")
        await self._driver.call(self._engine.init_weight_transfer, master_address, int(master_port),
                                int(rank_offset), int(world_size))
        return self.name

    async def receive_weights(self, meta: dict, version: int) -> int:
        """Receive one NCCL broadcast of the learner's weights (`meta`: engines.weight_transfer.transfer_metadata)
        while the learner sends it. Drains first, like update_weights; later requests carry `version`."""
        if not hasattr(self._engine, "receive_weights"):
            raise RuntimeError(f"{self.name}: {type(self._engine).__name__} cannot receive NCCL weights")
        return await self._driver.call(self._receive, meta, version)

    def _receive(self, meta: dict, version: int) -> int:
        t = time.perf_counter()
        self._engine.receive_weights(meta)
        self._engine.weight_version = int(version)
        self._stats["weight_updates"] += 1
        self._stats["weight_update_s"] += time.perf_counter() - t
        return self._engine.weight_version

    def _sleep(self, level: int) -> None:
        self._engine.sleep(level)
        self._driver.asleep = True

    def _wake(self) -> None:
        self._engine.wake_up()
        self._driver.asleep = False

    async def sleep(self, level: int = 1) -> None:
        """From now on no request starts; the ones in flight finish, then the engine frees its accelerator memory.
        Requests queue until wake_up (callers' own timeouts bound the wait)."""
        await self._driver.call(self._sleep, level)

    async def wake_up(self) -> None:
        await self._driver.call(self._wake)

    async def stats(self) -> dict:
        d = self._driver.stats
        s = dict(self._stats)
        s.update(name=self.name, weight_version=self._engine.weight_version,
                 streaming=bool(getattr(self._engine, "supports_streaming", False)),
                 tokens_generated=d.tokens_generated, sequences=d.sequences, engine_calls=d.engine_calls,
                 busy_s=d.busy_s, failed_requests=d.failed_requests, drains=d.drains,
                 tokens_per_s=d.tokens_generated / d.busy_s if d.busy_s else 0.0,
                 batch_size_mean=d.batch_size_sum / d.engine_calls if d.engine_calls else 0.0,
                 batch_size_max=d.batch_size_max,
                 queue_wait_s_mean=d.queue_wait_s_sum / d.sequences if d.sequences else 0.0,
                 queue_wait_s_max=d.queue_wait_s_max, queue_depth=self._driver.queue_depth(),
                 admit_s=d.admit_s, start_windows=d.windows, start_window_s=d.window_s,
                 in_flight=self._driver.in_flight(), asleep=self._driver.asleep)
        return s

    async def set_batch_wait_ms(self, ms: float) -> float:
        """Change rollout.batch_wait_ms at run time (tuning, benchmarks); returns the previous value."""
        if ms < 0:
            raise ValueError(f"{self.name}.set_batch_wait_ms: must be >= 0, got {ms}")
        prev, self._driver.batch_wait_s = self._driver.batch_wait_s * 1000.0, float(ms) / 1000.0
        return prev

    async def weight_version(self) -> int:
        return self.engine.weight_version


def start_rollout_worker(model_cfg, rollout_cfg, seed: int = 0, index: int = 0, get_timeout_s: float = 900.0,
                         name: Optional[str] = None, hf_streaming: bool = False):
    """A named RolloutWorker actor ("rollout-<index>") with the resources of rollout_cfg."""
    import ray
    name = name or f"rollout-{index}"
    actor = ray.remote(RolloutWorker).options(
        name=name, num_cpus=rollout_cfg.cpus_per_worker, num_gpus=rollout_cfg.gpus_per_worker,
        max_concurrency=4096, max_restarts=0)
    return actor.remote(model_cfg, rollout_cfg, seed=seed, name=name, get_timeout_s=get_timeout_s,
                        hf_streaming=hf_streaming)
