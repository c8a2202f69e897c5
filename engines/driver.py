"""EngineDriver: the one thread that calls an Engine, serving generation requests and engine calls from asyncio code.

Requests (`await driver.generate(prompt, params)`) go into a thread-safe inbox; the engine thread files them and
serves them in one of two modes, picked by the engine's `supports_streaming`:

- streaming (vLLM; continuous batching): every loop iteration admits whatever is waiting (up to `max_in_flight`
  requests in flight) with `engine.start_request`, runs one `engine.step()` and resolves each finished request's
  asyncio future at once (loop.call_soon_threadsafe). A request arriving while others decode joins at the next step
  (one engine iteration, ~10-50 ms); short requests return as soon as they are done, whatever else is running.
- batch (hf): when the engine becomes free, everything waiting (up to `max_in_flight`) goes into one
  `generate_each` call at once. Requests that queued during a call never wait on a timer. Requests that arrive
  during a call still wait for that whole call: hf does not continuous-batch.

Start window (both modes): a request that finds the engine idle opens a window for company. Admission starts when
`max_in_flight` requests wait, when no new request came for `batch_wait_s`, or `START_WINDOW_CAP` x `batch_wait_s`
after the window opened, whichever comes first; with batch_wait_s = 0 there is no window. Why, for streaming too: a
burst of N separate requests (one per trajectory) reaches the actor one Ray call at a time; once this thread steps
vLLM it holds the GIL for vLLM's Python output processing much of the time, and the rest of the burst comes in
slower (up to 0.58 s queue wait for 256 requests in one H100 run); late requests decode in extra steps at the end
(265-267 steps instead of 258 for 256 x 256 tokens). While the window is open this thread blocks on the inbox and
256 requests land in ~0.05 s; on an H100 that raised 256 separate requests from 0.90-0.94 to 0.92-0.96 of one
LLM.generate's tokens/s (benchmarks/README.md, Rollout). A lone request pays at most batch_wait_s.

Engine calls (`await driver.call(fn, ...)`: load_weights, sleep, wake_up) DRAIN: once the call reaches the engine
thread, no new request is admitted; requests in flight finish; then the call runs; then admission resumes. So a weight
update never lands inside a request, and each request's weight_version (read when it is admitted) is the version
that sampled every one of its tokens. The price: an update waits for the longest request in flight (at most
max_new_tokens decode steps). While asleep (after `sleep`, until `wake_up`) requests queue and are not admitted.

A cancelled asyncio future (the caller gave up) aborts its request in the engine (streaming) or drops it from the
queue. A failing engine call fails the requests it was serving (their futures raise) and the driver keeps serving.

    python -m pytest tests/test_rollout_worker.py -q
"""
from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from engines.base import Generation, SamplingParams

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Gen:
    prompt: list[int]
    params: SamplingParams
    fut: asyncio.Future
    loop: asyncio.AbstractEventLoop
    t_submit: float
    handle: Optional[str] = None        # the engine's handle once admitted (streaming)
    version: int = 0                    # engine.weight_version when admitted


@dataclass(eq=False)
class _Call:
    fn: Callable
    args: tuple
    fut: asyncio.Future
    loop: asyncio.AbstractEventLoop


@dataclass(eq=False)
class _Abort:
    item: _Gen


_STOP = object()
START_WINDOW_CAP = 10          # the start window closes at the latest this many batch_wait_s after it opened


def _settle(fut: asyncio.Future, result: Any, exc: Optional[BaseException]) -> None:
    if fut.done():                      # cancelled by the caller meanwhile
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


@dataclass
class DriverStats:
    tokens_generated: int = 0
    admitted: int = 0              # requests handed to the engine
    sequences: int = 0             # requests returned by it
    engine_calls: int = 0          # generate_each calls (batch) or engine steps (streaming)
    busy_s: float = 0.0            # seconds with at least one request in the engine
    batch_size_sum: int = 0        # sequences per generate_each call, or in flight per step, summed over calls
    batch_size_max: int = 0
    queue_wait_s_sum: float = 0.0  # submit -> admitted into the engine, summed over requests
    queue_wait_s_max: float = 0.0
    failed_requests: int = 0
    drains: int = 0                # engine calls (weights, sleep, wake) that had to wait for requests in flight
    admit_s: float = 0.0           # seconds in engine.start_request (streaming)
    window_s: float = 0.0          # seconds spent in start windows (waiting for company while idle)
    windows: int = 0


class EngineDriver:
    """Owns the engine thread. `get_engine` is called on every loop iteration (the owner may swap its engine between
    requests). `on_tokens(n_tokens, seconds, batch_size)` and `on_queue(depth)` report metrics (called on the engine
    thread; keep them cheap)."""

    def __init__(self, get_engine: Callable[[], Any], max_in_flight: int, batch_wait_s: float, name: str = "engine",
                 on_tokens: Optional[Callable[[int, float, int], None]] = None,
                 on_queue: Optional[Callable[[int], None]] = None):
        self.get_engine = get_engine
        self.max_in_flight = max(1, int(max_in_flight))
        self.batch_wait_s = max(0.0, float(batch_wait_s))
        self.name = name
        self.stats = DriverStats()
        self.asleep = False
        self._on_tokens = on_tokens or (lambda n, s, b: None)
        self._on_queue = on_queue or (lambda d: None)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: collections.deque[_Gen] = collections.deque()     # filed, not admitted
        self._calls: collections.deque[_Call] = collections.deque()
        self._live: dict[str, _Gen] = {}                                   # admitted (streaming), by handle
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ asyncio side
    async def generate(self, prompt: list[int], params: SamplingParams) -> tuple[Generation, int]:
        """(generation, weight version it was sampled under)."""
        if self._closed:
            raise RuntimeError(f"{self.name}: engine driver is closed")
        loop = asyncio.get_running_loop()
        item = _Gen(list(prompt), params, loop.create_future(), loop, time.perf_counter())
        item.fut.add_done_callback(lambda f: self._inbox.put(_Abort(item)) if f.cancelled() else None)
        self._inbox.put(item)
        return await item.fut

    async def call(self, fn: Callable, *args) -> Any:
        """Run fn(*args) on the engine thread with no request in flight (drains first; see the module docstring)."""
        if self._closed:
            raise RuntimeError(f"{self.name}: engine driver is closed")
        loop = asyncio.get_running_loop()
        c = _Call(fn, args, loop.create_future(), loop)
        self._inbox.put(c)
        return await c.fut

    def queue_depth(self) -> int:
        return len(self._pending)

    def in_flight(self) -> int:
        return len(self._live)

    def close(self, timeout_s: float = 10.0) -> None:
        self._closed = True
        self._inbox.put(_STOP)
        self._thread.join(timeout_s)

    # ------------------------------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        while True:
            try:
                if not self._tick():
                    break
            except Exception:                 # a bug here must not kill the thread silently with futures pending
                log.exception("%s: engine loop error", self.name)
                self._fail_live(RuntimeError(f"{self.name}: engine loop error (see the worker log)"))
        err = RuntimeError(f"{self.name}: engine driver closed")
        for it in list(self._pending):
            self._resolve(it, None, err)
        self._fail_live(err)
        for c in self._calls:
            c.loop.call_soon_threadsafe(_settle, c.fut, None, err)

    def _admissible(self) -> bool:
        return bool(self._pending) and not self._calls and not self.asleep and len(self._live) < self.max_in_flight

    def _tick(self) -> bool:
        """One loop iteration; False when closed."""
        idle = not self._live
        block = idle and not self._admissible() and not self._calls
        if not self._take(block=block):
            return False
        if self._calls and not self._live:
            self._run_call(self._calls.popleft())
            return True
        if block and self._admissible() and self.batch_wait_s > 0:     # a request found the engine idle
            if not self._start_window():
                return False
            if not self._admissible():             # an engine call came meanwhile (it goes first), or asleep
                return True
        engine = self.get_engine()          # after the (possibly long) wait: the owner may have swapped it
        streaming = bool(getattr(engine, "supports_streaming", False))
        if self._admissible():
            if streaming:
                self._admit(engine)
            else:
                return self._run_batch(engine)
        if self._live:
            self._step(engine)
        return True

    def _start_window(self) -> bool:
        """The engine is idle and requests wait: collect company (module docstring, "Start window"). False when the
        stop sentinel came."""
        t0 = time.perf_counter()
        cap = t0 + START_WINDOW_CAP * self.batch_wait_s
        while len(self._pending) < self.max_in_flight and not self._calls and not self.asleep:
            before = len(self._pending)
            left = min(self.batch_wait_s, cap - time.perf_counter())
            if left <= 0:
                break
            if not self._take(block=True, timeout=left):
                return False
            if len(self._pending) == before and not self._calls:     # nothing new for batch_wait_s
                break
        self.stats.window_s += time.perf_counter() - t0
        self.stats.windows += 1
        return True

    def _take(self, block: bool, timeout: Optional[float] = None) -> bool:
        """Move everything in the inbox to the pending queue / call queue (waiting for the first item when `block`).
        False when the stop sentinel came."""
        try:
            item = self._inbox.get(block=block, timeout=timeout) if block else self._inbox.get_nowait()
        except queue.Empty:
            return True
        while True:
            if item is _STOP:
                return False
            if isinstance(item, _Gen):
                self._pending.append(item)
            elif isinstance(item, _Call):
                if self._live:
                    self.stats.drains += 1
                self._calls.append(item)
            elif isinstance(item, _Abort):
                self._abort(item.item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                self._on_queue(len(self._pending))
                return True

    def _abort(self, item: _Gen) -> None:
        if item.handle is not None and item.handle in self._live:
            del self._live[item.handle]
            try:
                self.get_engine().abort([item.handle])
            except Exception:
                log.exception("%s: abort of %s failed", self.name, item.handle)
        else:
            try:
                self._pending.remove(item)
            except ValueError:
                pass

    def _resolve(self, item: _Gen, result: Any, exc: Optional[BaseException]) -> None:
        item.loop.call_soon_threadsafe(_settle, item.fut, result, exc)

    def _fail_live(self, exc: BaseException) -> None:
        live, self._live = list(self._live.values()), {}
        self.stats.failed_requests += len(live)
        for it in live:
            self._resolve(it, None, exc)
        if live:
            try:
                self.get_engine().abort([it.handle for it in live])
            except Exception:
                pass

    def _run_call(self, c: _Call) -> None:
        try:
            result, exc = c.fn(*c.args), None
        except Exception as e:
            result, exc = None, e
        c.loop.call_soon_threadsafe(_settle, c.fut, result, exc)

    def _note_admitted(self, item: _Gen, version: int) -> None:
        wait = time.perf_counter() - item.t_submit
        item.version = version
        self.stats.admitted += 1
        self.stats.queue_wait_s_sum += wait
        self.stats.queue_wait_s_max = max(self.stats.queue_wait_s_max, wait)

    # streaming --------------------------------------------------------------------------------------------
    def _admit(self, engine) -> None:
        while self._admissible():
            item = self._pending.popleft()
            if item.fut.done():          # cancelled before admission
                continue
            t = time.perf_counter()
            try:
                item.handle = engine.start_request(item.prompt, item.params)
            except Exception as e:       # a bad request fails alone
                self.stats.failed_requests += 1
                self._resolve(item, None, e)
                continue
            finally:
                self.stats.admit_s += time.perf_counter() - t
            self._note_admitted(item, int(engine.weight_version))
            self._live[item.handle] = item
        self._on_queue(len(self._pending))

    def _step(self, engine) -> None:
        n = len(self._live)
        if engine.num_in_flight() == 0:
            # the engine holds none of them (lost, e.g. by a request-id mix-up): stepping would return nothing
            # forever, the waiting callers would hang and a drain (weights, sleep) would never start
            log.error("%s: %d requests in flight here but none in the engine: failing them", self.name, n)
            self._fail_live(RuntimeError(f"{self.name}: {n} requests were lost by the engine (in flight in the "
                                         "driver, unknown to the engine)"))
            return
        t = time.perf_counter()
        try:
            done = engine.step()
        except Exception as e:
            log.exception("%s: engine step with %d requests in flight failed", self.name, n)
            self._fail_live(e)
            return
        dt = time.perf_counter() - t
        s = self.stats
        s.engine_calls += 1
        s.busy_s += dt
        s.batch_size_sum += n
        s.batch_size_max = max(s.batch_size_max, n)
        finished = [(self._live.pop(h), g) for h, g in done if h in self._live]    # others were aborted meanwhile
        n_tok = sum(len(g.token_ids) for _, g in finished)
        s.sequences += len(finished)
        s.tokens_generated += n_tok
        if finished:
            self._on_tokens(n_tok, dt, n)
        for item, gen in finished:          # stats first: a caller may read them as soon as its future resolves
            self._resolve(item, (gen, item.version), None)

    # batch ------------------------------------------------------------------------------------------------
    def _run_batch(self, engine) -> bool:
        batch = []
        while self._pending and len(batch) < self.max_in_flight:
            item = self._pending.popleft()
            if not item.fut.done():
                batch.append(item)
        self._on_queue(len(self._pending))
        if not batch:
            return True
        version = int(engine.weight_version)
        for item in batch:
            self._note_admitted(item, version)
        t = time.perf_counter()
        try:
            gens = engine.generate_each([b.prompt for b in batch], [b.params for b in batch])
        except Exception as e:            # the requests fail, the worker keeps serving
            log.exception("%s: engine call of %d sequences failed", self.name, len(batch))
            self.stats.failed_requests += len(batch)
            for item in batch:
                self._resolve(item, None, e)
            gens = None
        dt = time.perf_counter() - t
        if gens is not None:
            s = self.stats
            n_tok = sum(len(g.token_ids) for g in gens)
            s.tokens_generated += n_tok
            s.sequences += len(batch)
            s.engine_calls += 1
            s.busy_s += dt
            s.batch_size_sum += len(batch)
            s.batch_size_max = max(s.batch_size_max, len(batch))
            self._on_tokens(n_tok, dt, len(batch))
            for item, g in zip(batch, gens):
                self._resolve(item, (g, version), None)
        return self._take(block=False)
