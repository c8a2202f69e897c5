"""CLI contract of `launch.py eval-kernel`: one JSON object with --json, exit 0 whatever the verdict, exit 2 with a
clear message when the evaluation cannot run. Uses the cached relu extension of test_evaluator.py.

    python -m pytest tests/test_eval_cli.py -q
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from test_evaluator import RELU_OK, RELU_TASK, TEST_CACHE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "eval-kernel", *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_json_verdict_exit_zero(tmp_path):
    task = tmp_path / "relu_task.py"
    task.write_text(RELU_TASK.source)
    kern = tmp_path / "kernel.py"
    kern.write_text(RELU_OK)
    p = _cli("--task", str(task), "--kernel", str(kern), "--json", f"evaluator.cache_dir={TEST_CACHE}",
             "evaluator.timing_trials=3")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)                       # exactly one JSON object on stdout
    for key in ("correct", "stage", "reason", "speedup", "ref_ms", "kernel_ms", "feedback"):
        assert key in out
    assert out["correct"] is True and out["speedup"] > 0
    # an incorrect kernel still exits 0: the evaluation completed
    kern.write_text(RELU_OK.replace("return ext.relu_fwd(x)", "return ext.relu_fwd(x) * 2.0"))
    p = _cli("--task", str(task), "--kernel", str(kern), "--json", f"evaluator.cache_dir={TEST_CACHE}")
    assert p.returncode == 0 and json.loads(p.stdout)["correct"] is False


def test_bad_arguments_exit_two(tmp_path):
    p = _cli("--task", "builtin/relu", "--kernel", str(tmp_path / "missing.py"))
    assert p.returncode == 2 and "kernel file not found" in p.stderr
    kern = tmp_path / "k.py"
    kern.write_text("x = 1\n")
    p = _cli("--task", str(tmp_path / "no_such_task.py"), "--kernel", str(kern))
    assert p.returncode == 2 and "cannot load task" in p.stderr
    p = _cli("--kernel", str(kern))
    assert p.returncode == 2
