"""Probe of kernel_eval.child.SideStreamHold on a CUDA GPU, in this process (no compile, ~3 s): prints, per call,
(return fingerprint, conclusive, ms from the fingerprint's sums to the spin's end, spin ms, host ms of the call).

    python3 benchmarks/probe_side_stream_hold.py

Expected: fast calls conclusive with the spin ending ~20 ms after the fingerprint; the "deferred" call (its result
finished on a pool stream, not joined) fingerprinted before that work ran (2097152, not 3145728); a call that
synchronizes the device stands (host time = spin); a call with 80 ms of current-stream work is not conclusive under
a 20 ms hold and is under a 16x longer one. The kernels are run once first: a kernel's first launch loads its
module lazily, and that load waits for running kernels, the spin included.
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kernel_eval.child import HOLD_START_CYCLES, SideStreamHold  # noqa: E402

hold = SideStreamHold("cuda:0")
x = torch.ones(1 << 20, device="cuda")
(x * 2).sum().item()
(x * 3).sum().item()
y0 = x * 2
y0.add_(1)
torch.cuda._sleep(1000)
torch.cuda.synchronize()


def call(fn):
    hold.launch()
    t = time.monotonic()
    out = fn()
    t = time.monotonic() - t
    fp = float(out.sum())
    hold.mark_fingerprint()
    torch.cuda.synchronize()
    return (fp, hold.conclusive(t), round(hold.fp_event.elapsed_time(hold.end_event), 3),
            round(hold.start_event.elapsed_time(hold.end_event), 3), round(t * 1e3, 3))


for _ in range(3):
    print("fast", call(lambda: x * 2))


def deferred():
    y = x * 2
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y.add_(1)
    return y


print("deferred", call(deferred))
print("sync", call(lambda: (torch.cuda.synchronize(), x * 3)[1]))
slow = lambda: (torch.cuda._sleep(4 * HOLD_START_CYCLES), x * 2)[1]  # noqa: E731
print("slow", call(slow))
hold.lengthen()
hold.lengthen()
print("slow16", call(slow))
print("streams", len(hold.streams))
