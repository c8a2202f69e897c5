"""Loader and runner for the adversarial suite: every other .py file in this folder is one candidate, with a header

    # exploit: what it tries            # task: builtin/relu or a path relative to the repository root
    # backend: cpu | cuda               # layer: static (the static checks must reject it) | runtime (they must
    # expect: reason[, reason...]       #   pass it, and the evaluator must end with one of the expected reasons)

"ok" in `expect` means the candidate must be accepted (honest controls, or cheats that turn out to be ineffective).
Used by tests/test_adversarial.py and benchmarks/adversarial_sweep.py.

The runtime CPU cheats repeat one C++ source on purpose: each candidate must be a self-contained module (the
static checks forbid importing anything else), and identical sources compile once through the content-hash
build cache, so the default test run pays for a single build.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
_FIELDS = ("exploit", "task", "backend", "layer", "expect")


@dataclass(frozen=True)
class Case:
    name: str          # file name without .py
    path: str
    exploit: str
    task: str
    backend: str
    layer: str
    expect: tuple[str, ...]
    code: str


def load_suite() -> list[Case]:
    cases = []
    for fname in sorted(os.listdir(HERE)):
        if not fname.endswith(".py") or fname in ("suite.py", "__init__.py"):
            continue
        path = os.path.join(HERE, fname)
        code = open(path, encoding="utf-8").read()
        head = dict(re.findall(r"^# (\w+): (.*)$", code[:2000], re.M))
        missing = [f for f in _FIELDS if f not in head]
        if missing:
            raise ValueError(f"{fname}: header lacks {missing}")
        cases.append(Case(fname[:-3], path, head["exploit"], head["task"].strip(), head["backend"].strip(),
                          head["layer"].strip(), tuple(e.strip() for e in head["expect"].split(",")), code))
    return cases


def load_task(case: Case):
    from kernel_eval.tasks import get_task
    if case.task.startswith("builtin/"):
        return get_task(case.task, size_profile="as_published")
    return get_task(os.path.join(REPO_ROOT, case.task))


def outcome(result) -> str:
    """The evaluator's answer as one word comparable with `expect`."""
    return "ok" if result.correct and result.rewarded and result.reason is None else (result.reason or "unrewarded")


def evaluate_case(case: Case, cfg):
    from kernel_eval.evaluate import evaluate_candidate
    return evaluate_candidate(load_task(case), case.code, cfg)
