"""Ending a child started as its own session (`subprocess.Popen(..., start_new_session=True)`): its whole process
group goes, so children it started (vLLM's engine core, a DeepSpeed rank's workers) do not outlive it.
Used by the GPU benchmarks and tests that run each case in its own process group."""
from __future__ import annotations

import os
import signal
import subprocess


def end_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the group of `proc`, SIGKILL it if `proc` has not exited within `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue
