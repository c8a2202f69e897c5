"""runtime.procs.end_process_group ends the child AND what it started (its own session's group)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from runtime.procs import end_process_group


def test_end_process_group_takes_grandchildren_with_it(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    proc = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        f"g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(g.pid))\n"
        "time.sleep(120)\n")], start_new_session=True)
    deadline = time.time() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    end_process_group(proc, grace_s=5)
    assert proc.poll() is not None
    for _ in range(50):                       # the grandchild is reaped by init shortly after its signal
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        with open(f"/proc/{grandchild}/stat") as fh:           # a zombie waiting for init counts as ended
            assert fh.read().split()[2] == "Z"
