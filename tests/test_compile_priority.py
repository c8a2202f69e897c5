"""evaluator.compile_priority (kernel_eval.build.CompileTicket): under fifo a compile that starts behind others on the
same node runs at a higher nice level, so the older compiles finish first; fair leaves every compile at nice 0.
The nice level reaches the real compile process (the candidate's module reports it from inside the sandbox).

    python -m pytest tests/test_compile_priority.py -q
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch

from kernel_eval.build import CompileTicket, compile_candidate
from runtime.config import EvaluatorConfig


def _queue_dir(cache: str) -> str:
    return os.path.join(cache, "compiling", socket.gethostname())


def test_tickets_count_the_running_compiles_ahead(tmp_path):
    cache = str(tmp_path)
    tickets = [CompileTicket(cache) for _ in range(5)]
    assert [t.ahead for t in tickets] == [0, 1, 2, 3, 4]
    assert [t.nice("fifo") for t in tickets] == [0, 0, 1, 1, 2]
    assert [t.nice("fair") for t in tickets] == [0] * 5
    tickets[0].close()
    tickets[1].close()
    assert CompileTicket(cache).ahead == 3                      # two finished: only three still run ahead
    # a ticket left behind by a process that died does not count, and is cleared
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = os.path.join(_queue_dir(cache), f"{1:020d}-{dead.pid}-deadbeef")
    open(stale, "w").close()
    assert CompileTicket(cache).ahead == 4                      # 3 + the one created just above, not the stale one
    assert not os.path.exists(stale)
    for t in tickets:
        t.close()


def test_unwritable_cache_gives_no_ticket(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    t = CompileTicket(str(blocker))
    assert t.path is None and t.nice("fifo") == 0
    t.close()


def test_the_compile_process_runs_at_the_ticket_nice_level(tmp_path):
    cache = str(tmp_path / "cache")
    os.makedirs(_queue_dir(cache))
    for i in range(6):                                         # six compiles of this (live) process started earlier
        open(os.path.join(_queue_dir(cache), f"{i + 1:020d}-{os.getpid()}-0000000{i}"), "w").close()
    code = "import os\nraise RuntimeError(f'compile process nice={os.getpriority(os.PRIO_PROCESS, 0)}')\n"
    base = dict(cache_dir=cache, warm_sandboxes=0, precompiled_header=False)
    build = compile_candidate(code, "cpu", EvaluatorConfig(compile_priority="fifo", **base), torch.__version__)
    assert not build.ok and build.nice == 3
    assert "compile process nice=3" in build.log, build.log[-1500:]
    build = compile_candidate(code, "cpu", EvaluatorConfig(compile_priority="fair", **base), torch.__version__)
    assert build.nice == 0 and "compile process nice=0" in build.log, build.log[-1500:]
    assert len(os.listdir(_queue_dir(cache))) == 6              # both compiles took their ticket back
