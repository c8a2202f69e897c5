"""RolloutWorker: an async Ray actor around one generation engine (engines/), batching concurrent requests.

The controller sends one `generate_turn` per trajectory turn, each as soon as that trajectory's previous kernel is
evaluated (no barrier between turns). Requests that arrive within `rollout.batch_wait_ms` of each other (or until
`rollout.max_concurrent_sequences` are waiting) go into one engine call; every engine call and every weight load runs
on the actor's single engine thread, so a weight update lands between two batches, never inside one, and each
TurnSample records the weight version its whole batch sampled under.

A turn's prompt is built here (pipelines/kernel_prompts.py) from the task source and the earlier turns: their
TurnSamples are fetched from the object store by ref (with a timeout) and paired with the feedback strings the
controller sends along; the chain of thought is never fed back. The response is parsed with
kernel_eval.parse.parse_response (a minimal local parser stands in while that module is absent).

While asleep (sleep(level)), requests queue and wait for wake_up; callers' own timeouts bound the wait.
Limits: batches are static (a request arriving during an engine call waits for the next call), one engine per actor.

    python -m pytest tests/test_rollout_worker.py -q
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

from engines.base import Generation, SamplingParams, make_engine
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
    """Create with `start_rollout_worker` (a named, async Ray actor); the methods below are called with .remote()."""

    def __init__(self, model_cfg, rollout_cfg, seed: int = 0, name: str = "rollout-0",
                 get_timeout_s: float = 900.0, device: Optional[str] = None):
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
        self.engine = make_engine(model_cfg, rollout_cfg, seed=seed, device=device)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._queue: Optional[asyncio.Queue] = None
        self._awake: Optional[asyncio.Event] = None
        self._batcher: Optional[asyncio.Task] = None
        self._stats: dict[str, Any] = dict(tokens_generated=0, sequences=0, engine_calls=0, busy_s=0.0,
                                           batch_sizes=[], prompts_over_budget=0, dropped_turns=0,
                                           failed_requests=0, weight_updates=0, weight_update_s=0.0)
        tags = {"worker": name}
        self._m_tok_s = metrics.Gauge("rollout_tokens_per_s", "tokens/s of the last engine call", tag_keys=("worker",))
        self._m_batch = metrics.Histogram("rollout_batch_size", "sequences per engine call", boundaries=BATCH_BUCKETS,
                                          tag_keys=("worker",))
        self._m_queue = metrics.Gauge("rollout_queue_depth", "requests waiting for an engine call",
                                      tag_keys=("worker",))
        for m in (self._m_tok_s, self._m_batch, self._m_queue):
            m.set_default_tags(tags)

    def __repr__(self) -> str:
        return f"RolloutWorker({self.name}, {self.engine!r})"

    # ---------------------------------------------------------------------------------------------- batching
    def _ensure_batcher(self) -> None:
        if self._batcher is None:
            self._queue = asyncio.Queue()
            self._awake = asyncio.Event()
            self._awake.set()
            self._batcher = asyncio.get_running_loop().create_task(self._batch_loop())

    async def _submit(self, prompt_ids: list[int], params: SamplingParams) -> tuple[Generation, int]:
        self._ensure_batcher()
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((prompt_ids, params, fut))
        self._m_queue.set(self._queue.qsize())
        return await fut

    async def _batch_loop(self) -> None:
        cap = self.rollout_cfg.max_concurrent_sequences
        wait_s = self.rollout_cfg.batch_wait_ms / 1000.0
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + wait_s
            while len(batch) < cap:
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), max(0.0, deadline - loop.time())))
                except asyncio.TimeoutError:
                    break
            while len(batch) < cap and not self._queue.empty():     # whatever arrived meanwhile
                batch.append(self._queue.get_nowait())
            self._m_queue.set(self._queue.qsize())
            await self._awake.wait()
            try:
                gens, version, dt = await loop.run_in_executor(self._thread, self._run_batch, batch)
            except Exception as e:            # the requests fail, the worker keeps serving
                log.exception("%s: engine call of %d sequences failed", self.name, len(batch))
                self._stats["failed_requests"] += len(batch)
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            n_tok = sum(len(g.token_ids) for g in gens)
            self._stats["tokens_generated"] += n_tok
            self._stats["sequences"] += len(batch)
            self._stats["engine_calls"] += 1
            self._stats["busy_s"] += dt
            self._stats["batch_sizes"].append(len(batch))
            self._m_tok_s.set(n_tok / max(dt, 1e-9))
            self._m_batch.observe(len(batch))
            for (_, _, fut), g in zip(batch, gens):
                if not fut.done():
                    fut.set_result((g, version))

    def _run_batch(self, batch) -> tuple[list[Generation], int, float]:
        t = time.perf_counter()
        version = self.engine.weight_version
        gens = self.engine.generate_each([b[0] for b in batch], [b[1] for b in batch])
        return gens, version, time.perf_counter() - t

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
        caller's argument list) in place, between two batches; afterwards samples carry `version`."""
        import ray
        if isinstance(state_or_ref, list) and len(state_or_ref) == 1 and isinstance(state_or_ref[0], ray.ObjectRef):
            state_or_ref = state_or_ref[0]
        if isinstance(state_or_ref, ray.ObjectRef):
            state_or_ref = await asyncio.wait_for(state_or_ref, self.get_timeout_s)
        if not isinstance(state_or_ref, dict):
            raise TypeError(f"{self.name}.update_weights: expected a state dict or an ObjectRef to one, "
                            f"got {type(state_or_ref).__name__}")
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._load, state_or_ref, version)

    def _load(self, state: dict, version: int) -> int:
        t = time.perf_counter()
        self.engine.load_weights(state)
        self.engine.weight_version = int(version)
        self._stats["weight_updates"] += 1
        self._stats["weight_update_s"] += time.perf_counter() - t
        return self.engine.weight_version

    async def sleep(self, level: int = 1) -> None:
        """Requests queue from now on; the engine frees its accelerator memory once the current batch is done."""
        self._ensure_batcher()
        self._awake.clear()
        await asyncio.get_running_loop().run_in_executor(self._thread, self.engine.sleep, level)

    async def wake_up(self) -> None:
        self._ensure_batcher()
        await asyncio.get_running_loop().run_in_executor(self._thread, self.engine.wake_up)
        self._awake.set()

    async def stats(self) -> dict:
        s = dict(self._stats)
        sizes = s.pop("batch_sizes")
        s.update(name=self.name, weight_version=self.engine.weight_version,
                 tokens_per_s=s["tokens_generated"] / s["busy_s"] if s["busy_s"] else 0.0,
                 batch_size_mean=sum(sizes) / len(sizes) if sizes else 0.0, batch_size_max=max(sizes, default=0),
                 queue_depth=self._queue.qsize() if self._queue else 0,
                 asleep=bool(self._awake is not None and not self._awake.is_set()))
        return s

    async def weight_version(self) -> int:
        return self.engine.weight_version


def start_rollout_worker(model_cfg, rollout_cfg, seed: int = 0, index: int = 0, get_timeout_s: float = 900.0,
                         name: Optional[str] = None):
    """A named RolloutWorker actor ("rollout-<index>") with the resources of rollout_cfg."""
    import ray
    name = name or f"rollout-{index}"
    actor = ray.remote(RolloutWorker).options(
        name=name, num_cpus=rollout_cfg.cpus_per_worker, num_gpus=rollout_cfg.gpus_per_worker,
        max_concurrency=4096, max_restarts=0)
    return actor.remote(model_cfg, rollout_cfg, seed=seed, name=name, get_timeout_s=get_timeout_s)
