"""Probe of kernel_eval.child.SideStreamHold on a CUDA GPU, in this process (no compile, ~3 s): prints, per case,
(return fingerprint, conclusive, ms from the fingerprint's sums to the spin's end, spin ms, host ms of the call).
The cases are those of kernel_eval.child.probe_side_stream_hold, which tests/test_evaluator_gpu.py asserts on.

    python3 benchmarks/probe_side_stream_hold.py

Expected: fast calls conclusive with the spin ending ~20 ms after the fingerprint; the "deferred" call (its result
finished on a pool stream, not joined) fingerprinted before that work ran (2n, not 3n); a call that synchronizes the
device stands (host time = spin); a call with 80 ms of current-stream work is not conclusive under a 20 ms hold and
is under a 16x longer one.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kernel_eval.child import probe_side_stream_hold  # noqa: E402

r = probe_side_stream_hold("cuda:0")
for fast in r["fast"]:
    print("fast", fast)
for name in ("deferred", "sync", "slow", "slow16"):
    print(name, r[name])
print("streams", r["streams"], "n", r["n"])
