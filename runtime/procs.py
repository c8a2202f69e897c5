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


def kill_tree(pid: int) -> int:
    """SIGKILL `pid`, its process group and every process descended from it, including descendants that started
    sessions of their own (e.g. the Ray daemons that `ray.init()` starts for a local cluster): unlike `ray stop`,
    this leaves other Ray clusters on the machine alone. Returns the number of processes signalled."""
    import psutil
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)       # collected first: once killed, they are reparented
    except psutil.Error:
        procs = []
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    n = 0
    for p in procs:
        try:
            p.kill()
            n += 1
        except psutil.Error:
            pass
    return n
