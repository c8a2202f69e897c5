"""Code that runs INSIDE the sandbox process (spawned by kernel_eval.sandbox): the compile and run protocols.

Run protocol (the parent judges; this process only computes and reports facts):
1. Build every trial's inputs from the parent's seeds (distributions "task", "normal", "mixed"), before any candidate
   code exists in this process.
2. Reference outputs (native dtype, and float64 when the model runs in double) go to the parent over the protocol
   pipe and are deleted here (plus gc), so the candidate cannot find them in Python objects. The bytes of trial 0's
   inputs and outputs go too (the parent's speed-of-light gate), before any candidate code exists here.
3. Freed memory is poisoned (NaN bytes): CPU by allocating and freeing NaN-filled blocks of many sizes (all sizes up
   to 16 MiB once after the reference phase, then before each candidate call up to twice the largest output: the
   stale buffers that matter are the reference's outputs), GPU by re-allocating the caching allocator's inactive
   blocks and filling them, so an uninitialized output reads NaN.
4. Per trial: candidate (fresh clone) -> reference (fresh clone, discarded) -> candidate again (fresh clone); each
   candidate output is checked for structure (exact torch.Tensor, materialized storage, no aliasing of inputs),
   fingerprinted at return and again after a full synchronize (deferred writes; on CUDA, work left on PyTorch's
   pool streams is held back until the return fingerprint is taken, and SideStreamHold verifies that it was), and
   sent to the parent with the inputs' digests (input modification).
5. The parent replies "time" only if all of it was correct; then candidate and reference are timed interleaved in
   this process, rotating several input sets; GPU: L2 flush per trial, CUDA events around a device-wide
   synchronize (work on other streams counts). CPU: perf_counter with a fixed thread count.

Start-up: torch and the evaluator's modules are imported BEFORE the request is read (kernel_eval.sandbox.WarmPool
spawns processes ahead of time); an empty request line (the parent went away) ends the process quietly.

CUDA notes: the device is the runner's `cuda:0` (CUDA_VISIBLE_DEVICES survives the scrubbed environment, so a Ray GPU
runner's assignment holds); inputs are moved to it before the candidate exists; the L2 flush buffer is twice the
device's L2 (H100: 2 x 50 MB) and is zeroed before every timed call; events are recorded on the current stream with a
device-wide synchronize before the end event, so work on any stream counts; a host thread still writing is given
20 ms after the call returned (and a device-wide synchronize) before the outputs are fingerprinted again. A CUDA
fault (illegal address) surfaces as an exception at the next synchronize and ends this process; nothing of its
context survives.

Limits: timing happens in the candidate's own process, so a candidate that patches timers could lie; the static
checks reject such code (monkey_patching, introspection). Freed small CPU allocations that malloc keeps in its heap
are poisoned only as far as the allocator hands them back to our NaN blocks.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import sys
import time
import traceback
import types
from typing import Any, Optional


class Channel:
    """Frames to the parent: one JSON header line, then header['nbytes'] raw bytes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, header: dict, payload: bytes = b"") -> None:
        data = (json.dumps(dict(header, nbytes=len(payload))) + "\n").encode() + payload
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]


def _preload() -> None:
    """Imports done before the request arrives (a pre-spawned process pays them while it waits). A CUDA run sandbox
    (SANDBOX_RL_WARM_DEVICE set by kernel_eval.evaluate.run_candidate) also creates its CUDA context here: on an
    8-GPU node with dozens of sandboxes per step, context creation (torch.cuda.set_device) was where 56 of 64 busy
    sandboxes were found waiting, so it is moved off the request's critical path. A failure is left for the request
    to hit again and report."""
    import torch  # noqa: F401
    import torch.utils.cpp_extension  # noqa: F401
    import kernel_eval.build  # noqa: F401
    try:
        import kernel_eval.inputs  # noqa: F401
    except ImportError:
        pass
    device = os.environ.get("SANDBOX_RL_WARM_DEVICE", "")
    if device.startswith("cuda"):
        try:
            torch.cuda.set_device(device)
        except Exception:        # noqa: BLE001 - _run's own set_device raises it with the request's context
            pass


def main() -> None:
    t0 = time.monotonic()
    _preload()
    import_s = time.monotonic() - t0
    line = sys.stdin.readline()
    if not line.strip():                 # the parent went away (an idle pre-spawned process): nothing to do
        os._exit(0)
    waited_s = time.monotonic() - t0 - import_s
    req = json.loads(line)
    chan = Channel(int(req["msg_fd"]))
    chan.send({"type": "started", "import_s": import_s, "waited_s": waited_s})
    try:
        if req["mode"] == "compile":
            _compile(req, chan)
        else:
            _run(req, chan)
        chan.send({"type": "done"})
    except MemoryError:
        chan.send({"type": "error", "reason": "memory_limit", "message": "MemoryError"})
    except BaseException as e:           # SystemExit and KeyboardInterrupt too: the candidate must not end us quietly
        chan.send({"type": "error", "reason": _classify(e), "message": _format_exc(e)})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)                          # skip atexit hooks the candidate may have registered


def _classify(e: BaseException) -> str:
    text = str(e).lower()
    if isinstance(e, MemoryError) or "can't allocate memory" in text or "out of memory" in text \
            or "bad_alloc" in text:
        return "memory_limit"
    if isinstance(e, SystemExit):
        return "process_exit"
    return "runtime_error"


def _format_exc(e: BaseException) -> str:
    lines = traceback.format_exception(type(e), e, e.__traceback__)
    return "".join(lines[-6:])[-3000:]


def _exec_module(name: str, code: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__file__ = f"<{name}>"
    sys.modules[name] = mod
    exec(compile(code, f"<{name}>", "exec"), mod.__dict__)
    return mod


# -------------------------------------------------------------------------------------------------------- compile
def _compile(req: dict, chan: Channel) -> None:
    import torch  # noqa: F401  (imported before the candidate, like in the run)
    from kernel_eval.build import patch_for_compile
    if int(req.get("nice") or 0) > 0:             # evaluator.compile_priority; the compilers inherit it
        try:
            os.setpriority(os.PRIO_PROCESS, 0, min(19, int(req["nice"])))
        except OSError:
            pass
    patch_for_compile(req["cache_dir"], req["out_dir"], bool(req.get("use_pch")), chan.send,
                      object_cache=bool(req.get("object_cache")), light_headers=bool(req.get("light_headers")),
                      light_host=bool(req.get("light_host_headers")),
                      dedupe_wait_s=float(req.get("dedupe_wait_s") or 0.0))
    try:
        _exec_module("candidate_module", req["code"])
    except Exception as e:
        chan.send({"type": "import_error", "message": _format_exc(e)})
        raise


# ------------------------------------------------------------------------------------------------------------ run
def _make_inputs(module: Any, distribution: str, seed: int) -> list:
    try:
        from kernel_eval.inputs import make_inputs
    except ImportError:
        make_inputs = _fallback_make_inputs
    return make_inputs(module, distribution, seed)


def _fallback_make_inputs(module: Any, distribution: str, seed: int) -> list:
    """Used only when kernel_eval.inputs is absent: the task's get_inputs, then redrawn float tensors."""
    import torch
    torch.manual_seed(seed)
    inputs = list(module.get_inputs())
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.is_floating_point() and distribution != "task":
            y = torch.randn(x.shape, generator=g, dtype=torch.float32)
            if distribution == "mixed":
                y = y * torch.pow(10.0, torch.empty(x.shape).uniform_(-2, 2, generator=g))
            x = y.to(x.dtype)
        out.append(x)
    return out


def _to(x: Any, device: str, double: bool = False) -> Any:
    import torch
    if isinstance(x, torch.Tensor):
        x = x.to(device)
        return x.double() if double and x.is_floating_point() else x
    return x


def _clone(xs: list) -> list:
    import torch
    return [x.clone() if isinstance(x, torch.Tensor) else x for x in xs]


def _as_list(out: Any) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _tensor_frame(t: Any) -> tuple[dict, bytes]:
    import torch
    c = t.detach().to("cpu").contiguous()
    data = c.reshape(-1).view(torch.uint8).numpy().tobytes() if c.numel() else b""
    return {"dtype": str(c.dtype).replace("torch.", ""), "shape": list(c.shape)}, data


def _digest(t: Any) -> str:
    import torch
    if not isinstance(t, torch.Tensor):
        return repr(t)
    c = t.detach().to("cpu").contiguous()
    return hashlib.sha256(c.reshape(-1).view(torch.uint8).numpy().tobytes() if c.numel() else b"").hexdigest()


def _sync(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _poison(device: str, max_bytes: int = 16 << 20) -> None:
    """Fill freed memory with NaN bytes (0xFF: NaN in float16/bfloat16/float32/float64). CPU: blocks of 64 B up to
    `max_bytes` (rounded up to a power of two, at most 16 MiB), twice: heap chunks and mmap'd blocks."""
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        held = []
        for seg in torch.cuda.memory_snapshot():
            for blk in seg.get("blocks", []):
                if blk.get("state") == "inactive" and blk.get("size", 0) > 0:
                    t = torch.empty(blk["size"], dtype=torch.uint8, device=device)
                    t.fill_(255)
                    held.append(t)
        torch.cuda.synchronize()
        del held
        return
    held = []
    top = min(24, max(16, (max(1, int(max_bytes)) - 1).bit_length()))
    for size in [1 << k for k in range(6, top + 1)] * 2:
        held.append(torch.full((size,), 255, dtype=torch.uint8))
    del held


def _structure(out: list, inputs: list) -> Optional[tuple[str, str]]:
    """A named structural problem of the candidate's outputs, or None."""
    import torch
    spans = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.numel():
            st = x.untyped_storage()
            spans.append((st.data_ptr(), st.data_ptr() + st.nbytes()))
    for j, o in enumerate(out):
        if type(o) is not torch.Tensor:
            return "wrong_output_type", f"output {j} is a {type(o).__module__}.{type(o).__qualname__}, " \
                                        "expected a plain torch.Tensor"
        if o.is_meta or (o.numel() and o.untyped_storage().data_ptr() == 0):
            return "wrong_output_type", f"output {j} has no materialized storage"
        if o.numel():
            st = o.untyped_storage()
            lo, hi = st.data_ptr(), st.data_ptr() + st.nbytes()
            if any(lo < b and a < hi for a, b in spans):
                return "output_aliases_input", f"output {j} shares memory with an input"
    return None


HOST_WRITE_WINDOW_S = 0.02       # after a candidate call returns, before its outputs are fingerprinted again
HOLD_START_CYCLES = 40_000_000   # first side-stream hold: ~20 ms of torch.cuda._sleep at H100/H200 clocks (~2 GHz),
#                                  as long as the host-write window, which each call waits anyway
HOLD_MAX_TRIES = 4               # a hold that ended too early is retried 4x longer, up to 3 times (~20 ms -> 1.3 s)
HOLD_MAX_CYCLES = HOLD_START_CYCLES * 4 ** (HOLD_MAX_TRIES - 1)


class SideStreamHold:
    """Make work that a call leaves on other streams wait until its outputs have been fingerprinted. One spin
    kernel runs on one stream of PyTorch's CUDA stream pool, an event is recorded after it, and every other pool
    stream (the ones at::cuda::getStreamFromPool hands out, however its name is spelled in the source) waits for
    that event, before the call. (One spin kernel, not one per stream: the GPU runs at most 128 kernels at once,
    and the pool has 128 streams on an H100, so spinning them all kept the candidate's own kernels waiting.)

    A candidate that launches on a pool stream and returns without joining its current stream cannot have written
    its outputs when _fingerprint reads them on the current stream, as long as the spin ends after the
    fingerprint's sums: `conclusive` checks exactly that with timing events (after a device-wide synchronize).
    When the spin ended first because the call's work on its current stream outlasted the hold, the call is made
    again with a 4x longer hold (at most HOLD_MAX_CYCLES), which then stays for the next calls. When the call
    itself waited for the spin (a device-wide synchronize inside it: its host time covers the spin), a longer hold
    would be waited for as well, so the call stands. That is also what a candidate's first call looks like: the
    first launch of a kernel loads its module lazily, and the load waits for running kernels, the spin included;
    its later calls are held. A candidate that joins the side stream back into its current one (event wait) only
    waits for the spin. Measured on an H100: benchmarks/results/probe_side_stream_hold_h100.txt. CPU: nothing to
    hold."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.device = device
        self.cycles = HOLD_START_CYCLES
        self.streams: list = []
        self.start_event = self.end_event = self.fp_event = None

    def launch(self) -> None:
        import torch
        if not self.cuda:
            return
        if not self.streams:
            least, greatest = torch.cuda.Stream.priority_range()         # e.g. (0, -5): lower is more urgent
            seen = set()
            for prio in range(greatest, least + 1):
                for _ in range(32):                                        # c10's pool: 32 streams per priority
                    st = torch.cuda.Stream(device=self.device, priority=prio)   # round-robin over the pool
                    if st.cuda_stream not in seen:
                        seen.add(st.cuda_stream)
                        self.streams.append(st)
            self.start_event, self.end_event, self.fp_event = (torch.cuda.Event(enable_timing=True)
                                                               for _ in range(3))
        current = torch.cuda.current_stream()
        held = [st for st in self.streams if st.cuda_stream != current.cuda_stream]
        if not held:
            return
        spinner = held[0]
        try:
            torch.cuda.set_stream(spinner)
            self.start_event.record(spinner)
            torch.cuda._sleep(self.cycles)
            self.end_event.record(spinner)
        finally:
            torch.cuda.set_stream(current)
        for st in held[1:]:
            st.wait_event(self.end_event)

    def mark_fingerprint(self) -> None:
        """Called on the current stream right after the return fingerprint's sums were launched."""
        if self.cuda and self.fp_event is not None:
            self.fp_event.record()

    def conclusive(self, call_s: float) -> bool:
        """After a device-wide synchronize: did the spin end after the return fingerprint's sums? Also True when
        the call took as long on the host as the spin on the GPU (it waited for it: holding longer cannot help)."""
        if not self.cuda or self.fp_event is None or len(self.streams) < 2:
            return True
        if self.fp_event.elapsed_time(self.end_event) > 0.0:
            return True
        return call_s * 1e3 >= 0.9 * self.start_event.elapsed_time(self.end_event)

    def lengthen(self) -> None:
        self.cycles = min(self.cycles * 4, HOLD_MAX_CYCLES)


def probe_side_stream_hold(device: str = "cuda:0") -> dict:
    """SideStreamHold on this process's GPU with torch ops standing in for candidates (no compile, ~3 s), for the
    GPU test and benchmarks/probe_side_stream_hold.py. Per case: (return fingerprint, conclusive, ms from the
    fingerprint's sums to the spin's end, spin ms, host ms of the call), on a tensor of n ones. Cases: "fast"
    (x * 2, three times), "deferred" (x * 2 finished by + 1 on a pool stream that is not joined: the fingerprint
    must be 2n), "sync" (synchronizes the device inside the call), "slow" (80 ms of current-stream work under the
    first hold) and "slow16" (the same under a 16x longer hold). The kernels run once first: a kernel's first
    launch loads its module lazily, and the load waits for running kernels, the spin included."""
    import torch
    hold = SideStreamHold(device)
    x = torch.ones(1 << 20, device=device)
    warm = x * 2
    warm.add_(1)
    float(warm.sum())
    torch.cuda._sleep(1000)
    torch.cuda.synchronize()

    def call(fn: Any) -> tuple:
        hold.launch()
        t = time.monotonic()
        out = fn()
        t = time.monotonic() - t
        fp = float(out.sum())                        # .item() waits for the current stream only
        hold.mark_fingerprint()
        torch.cuda.synchronize()
        return (fp, hold.conclusive(t), round(hold.fp_event.elapsed_time(hold.end_event), 3),
                round(hold.start_event.elapsed_time(hold.end_event), 3), round(t * 1e3, 3))

    def deferred() -> Any:
        y = x * 2
        side = torch.cuda.Stream(device=device)      # a pool stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            y.add_(1)
        return y

    def slow() -> Any:
        torch.cuda._sleep(4 * HOLD_START_CYCLES)
        return x * 2

    res: dict = {"n": x.numel(), "fast": [call(lambda: x * 2) for _ in range(3)], "deferred": call(deferred),
                 "sync": call(lambda: (torch.cuda.synchronize(), x * 3)[1]), "slow": call(slow)}
    hold.lengthen()
    hold.lengthen()
    res["slow16"] = call(slow)
    res["streams"] = len(hold.streams)
    return res


def _fingerprint(out: list, device: str, hold: Optional[SideStreamHold] = None) -> list:
    """Checksums computed on the current stream right after the call (before a device-wide synchronize)."""
    import torch
    sums = [o.detach().double().sum() if o.is_floating_point() else o.detach().long().sum() for o in out]
    if hold is not None:
        hold.mark_fingerprint()
    if device.startswith("cuda"):
        torch.cuda.current_stream().synchronize()          # only this stream: work elsewhere may still run
    return [repr(float(s.item())) for s in sums]          # repr: NaN compares equal to itself


def _run(req: dict, chan: Channel) -> None:
    import torch
    from kernel_eval.build import patch_for_run
    t_start = time.monotonic()
    device = req["device"]
    torch.set_num_threads(int(req["threads"]))
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    ref_mod = _exec_module("reference_model", req["task_source"])
    try:
        from kernel_eval.inputs import make_init_inputs
        init_inputs = list(make_init_inputs(ref_mod, int(req["init_seed"])))
    except ImportError:
        init_inputs = list(ref_mod.get_init_inputs())
    trials = [[_to(x, device) for x in _make_inputs(ref_mod, t["dist"], int(t["seed"]))] for t in req["trials"]]
    torch.manual_seed(int(req["init_seed"]))
    ref = ref_mod.Model(*init_inputs).to(device)
    phases = {"setup": time.monotonic() - t_start}          # seconds per phase, reported with correctness_done
    t0 = time.monotonic()
    ref_modified, out_bytes = _reference_phase(ref, trials, device, chan)
    gc.collect()
    _poison(device)
    poison_bytes = 2 * out_bytes         # per call, the stale buffers that matter are the reference's outputs
    phases["reference"] = time.monotonic() - t0

    patch_for_run(req["ext_dir"])
    t0 = time.monotonic()
    cand_mod = _exec_module("candidate_module", req["code"])
    torch.manual_seed(int(req["init_seed"]))
    cand = cand_mod.ModelNew(*init_inputs).to(device)
    phases["load"] = time.monotonic() - t0
    chan.send({"type": "loaded", "seconds": phases["load"]})
    t0 = time.monotonic()
    hold = SideStreamHold(device)
    for i, inputs in enumerate(trials):
        digests = [_digest(x) for x in inputs]
        for rep in range(2):
            if rep == 1:
                with torch.no_grad():
                    ref(*_clone(inputs))                     # the reference runs between the two candidate calls
                _sync(device)
            for attempt in range(HOLD_MAX_TRIES):
                _poison(device, poison_bytes)
                x = _clone(inputs)
                hold.launch()
                t_call = time.monotonic()
                with torch.no_grad():
                    out = _as_list(cand(*x))
                t_call = time.monotonic() - t_call
                problem = _structure(out, x)
                if problem:
                    chan.send({"type": "verdict", "reason": problem[0], "detail": problem[1]})
                    return
                fp_return = _fingerprint(out, device, hold)
                t_return = time.monotonic()
                _sync(device)                                # waits for the side-stream holds too
                # a host thread still writing would change the outputs: it gets 20 ms after the return
                # fingerprint (part of it already spent in the synchronize)
                time.sleep(max(0.0, HOST_WRITE_WINDOW_S - (time.monotonic() - t_return)))
                if _fingerprint(out, device) != fp_return:
                    chan.send({"type": "verdict", "reason": "deferred_write",
                               "detail": "the outputs changed after the call returned (work still running)"})
                    return
                if hold.conclusive(t_call) or attempt == HOLD_MAX_TRIES - 1:
                    break
                hold.lengthen()                              # a spin ended before the fingerprint: call again
                del out, x
            for j, o in enumerate(out):
                h, data = _tensor_frame(o)
                chan.send(dict(h, type="cand", trial=i, rep=rep, index=j, device=str(o.device)), data)
            for j, xj in enumerate(x):
                if j in ref_modified[i]:
                    h, data = _tensor_frame(xj)
                    chan.send(dict(h, type="cand_input", trial=i, rep=rep, index=j), data)
                elif _digest(xj) != digests[j]:
                    chan.send({"type": "verdict", "reason": "input_modified",
                               "detail": f"input {j} was modified by the kernel (the reference leaves it unchanged)"})
                    return
            del out, x
    phases["correctness"] = time.monotonic() - t0
    chan.send({"type": "correctness_done", "phase_s": phases})
    cmd = json.loads(sys.stdin.readline() or "{}")
    if cmd.get("cmd") == "time":
        _timing(ref, cand, trials, req, device, chan)


def _reference_phase(ref: Any, trials: list, device: str, chan: Channel) -> list:
    """Send the reference's outputs (native and float64) for every trial; return per trial the input indices that
    the reference modifies (their post-call values are sent too), and the largest output's bytes. Nothing of the
    outputs stays referenced here."""
    import copy
    import torch
    modified = []
    out_bytes = 0
    ref64 = None
    try:
        ref64 = copy.deepcopy(ref).double()
    except Exception:
        pass
    for i, inputs in enumerate(trials):
        x = _clone(inputs)
        with torch.no_grad():
            out = _as_list(ref(*x)) if i else _first_reference_call(ref, x, chan)
        for j, o in enumerate(out):
            if not isinstance(o, torch.Tensor):
                raise TypeError(f"the reference returned a {type(o).__name__}; only tensors are supported")
            out_bytes = max(out_bytes, o.numel() * o.element_size())
            h, data = _tensor_frame(o)
            chan.send(dict(h, type="ref", trial=i, index=j, device=str(o.device)), data)
        mods = [j for j, (a, b) in enumerate(zip(x, inputs)) if isinstance(a, torch.Tensor) and not torch.equal(a, b)]
        for j in mods:
            h, data = _tensor_frame(x[j])
            chan.send(dict(h, type="ref_input", trial=i, index=j), data)
        modified.append(set(mods))
        del out, x
        if ref64 is not None:
            try:
                with torch.no_grad():
                    out64 = _as_list(ref64(*[_to(v, device, double=True) for v in inputs]))
                for j, o in enumerate(out64):
                    h, data = _tensor_frame(o)
                    chan.send(dict(h, type="ref64", trial=i, index=j), data)
                del out64
            except Exception:
                ref64 = None                      # some ops have no double kernel: judge against native only
    del ref64
    return modified, out_bytes


def _first_reference_call(ref: Any, x: list, chan: Channel) -> list:
    """The reference on trial 0; sends the bytes it reads and writes (speed-of-light gate). FLOPs are not counted:
    torch's FlopCounterMode costs ~3.5 s CPU on first use, and the reference's FLOPs bound nothing (a smarter
    algorithm may need far fewer, e.g. diag(a) @ b)."""
    import torch
    out = _as_list(ref(*x))
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))
    chan.send({"type": "sizes", "input_bytes": nbytes(x), "output_bytes": nbytes(out)})
    return out


def _timing(ref: Any, cand: Any, trials: list, req: dict, device: str, chan: Channel) -> None:
    import torch
    cfg = req["timing"]
    sets = [trials[k % len(trials)] for k in range(max(1, int(cfg["input_sets"])))]
    cuda = device.startswith("cuda")
    flush = None
    if cuda:
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20) or (64 << 20)
        flush = torch.empty(2 * l2, dtype=torch.uint8, device=device)

    def once(fn: Any, x: list) -> float:
        if cuda:
            flush.zero_()                                   # evict the L2 so no call profits from the last one
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*x)
            torch.cuda.synchronize()                         # device-wide: work on any stream is counted
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        t0 = time.perf_counter()
        fn(*x)
        return (time.perf_counter() - t0) * 1e3

    ref_ms, ker_ms = [], []
    t0 = time.monotonic()
    with torch.no_grad():
        for w in range(int(cfg["warmup"])):
            x = sets[w % len(sets)]
            once(ref, x)
            once(cand, x)
        for i in range(int(cfg["trials"])):
            x = sets[i % len(sets)]
            if i % 2:                                        # alternate the order: neither side always goes first
                ker_ms.append(once(cand, x))
                ref_ms.append(once(ref, x))
            else:
                ref_ms.append(once(ref, x))
                ker_ms.append(once(cand, x))
    chan.send({"type": "timing", "ref_ms": ref_ms, "kernel_ms": ker_ms, "seconds": time.monotonic() - t0})
