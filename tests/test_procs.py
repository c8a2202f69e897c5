"""runtime.procs.end_process_group ends the child AND what it started (its own session's group); kill_tree also
ends descendants that started sessions of their own."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from runtime.procs import end_process_group, kill_tree


def test_end_process_group_takes_grandchildren_with_it(tmp_path):
    proc, grandchild = _spawn_with_grandchild(tmp_path, own_session=False)
    end_process_group(proc, grace_s=5)
    assert proc.poll() is not None
    _assert_ended(grandchild)


def _spawn_with_grandchild(tmp_path, own_session: bool):
    pid_file = tmp_path / "grandchild.pid"
    proc = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        f"g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
        f"start_new_session={own_session})\n"
        f"open({str(pid_file)!r}, 'w').write(str(g.pid))\n"
        "time.sleep(120)\n")], start_new_session=True)
    deadline = time.time() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    return proc, int(pid_file.read_text())


def _assert_ended(pid: int) -> None:
    for _ in range(50):                       # reaped by init shortly after its signal
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with open(f"/proc/{pid}/stat") as fh:     # a zombie waiting for init counts as ended
        assert fh.read().split()[2] == "Z"


def test_kill_tree_takes_a_grandchild_in_its_own_session(tmp_path):
    """A grandchild in a session of its own (as Ray's daemons) survives killpg of the child's group; kill_tree
    ends it too."""
    proc, grandchild = _spawn_with_grandchild(tmp_path, own_session=True)
    assert os.getpgid(grandchild) != os.getpgid(proc.pid)
    assert kill_tree(proc.pid) == 2
    proc.wait(timeout=10)
    _assert_ended(grandchild)
