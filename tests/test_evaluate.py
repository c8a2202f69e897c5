"""`launch.py evaluate` / `launch.py search` (pipelines/evaluate.py, pipelines/search.py).

Pure parts by hand (beam selection and copying, budget rows and plot, checkpoint layouts, record rules), then on a
real local Ray: `main()` with the tiny random model and a trained checkpoint, and the correct/speedup paths through
`SEED_REPLAY`, a deterministic replay engine (TEST FIXTURE, not a model) that answers with the built-in C++ ReLU
solution when a request's sampling seed is even and with text without code when it is odd. The built-in solution is
compiled once and reused through the evaluator's content-hash build cache.

    python -m pytest tests/test_evaluate.py -q
"""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

from kernel_eval.result import EvalResult
from pipelines.evaluate import (budget_markdown, checkpoint_version, load_policy_weights, plot_budget,
                                resolve_checkpoint, split_row, trajectory_record, turn_entry)
from pipelines.reports import summarize
from pipelines.search import Beam, next_round, outcome, round_summary, select_survivors
from runtime.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "eval_tiny.yaml")
ALGO = load_config(TINY).algo


def res(correct: bool, speedup=None, rewarded=None, reason=None, feedback="") -> EvalResult:
    return EvalResult(task="t", backend="cpu", size_profile="", stage="done" if correct else "correctness",
                      correct=correct, speedup=speedup, rewarded=correct if rewarded is None else rewarded,
                      reason=None if correct else (reason or "mismatch"), feedback=feedback)


# ------------------------------------------------------------------------------------------------ search (pure)
def test_select_survivors_ranks_speedup_then_correct_then_slot():
    outs = [(False, 0.0), (True, 1.2), (True, 0.0), (True, 2.0), (False, 0.0), (True, 1.2)]
    assert select_survivors(outs, 1) == [3]
    assert select_survivors(outs, 3) == [3, 1, 5]               # equal speedups: lower slot first
    assert select_survivors(outs, 4) == [3, 1, 5, 2]            # correct at 0x beats incorrect
    assert select_survivors(outs, 6)[-2:] == [0, 4]
    with pytest.raises(ValueError, match="keep=7"):
        select_survivors(outs, 7)


def test_outcome_ignores_unrewarded_kernels():
    assert outcome([res(False), res(True, 1.5), res(True, 0.8)]) == (True, 1.5)
    assert outcome([res(True, 40.0, rewarded=False), res(True, 0.9)]) == (True, 0.9)   # flagged speedup: no credit
    assert outcome([res(False), res(True, 3.0, rewarded=False)]) == (False, 0.0)
    assert outcome([]) == (False, 0.0)


def test_next_round_keeps_best_k_and_copies_whole_histories():
    hist = {0: [res(False), res(True, 1.1)], 1: [res(True, 2.5), res(False)], 2: [res(False), res(False)],
            3: [res(True, 60.0, rewarded=False), res(True, 1.3)]}
    beams = [Beam(0, s, parent=None, lineage=[], refs=[f"r{s}a", f"r{s}b"], results=hist[s]) for s in range(4)]
    nxt = next_round(beams, keep=2, copies=2)
    assert [b.slot for b in nxt] == [0, 1, 2, 3]
    assert [b.parent for b in nxt] == [1, 1, 3, 3]              # 2.5x, then 1.3x (the 60x was flagged)
    assert [b.lineage for b in nxt] == [[1], [1], [3], [3]]
    assert nxt[0].refs == ["r1a", "r1b"] and nxt[2].results == hist[3]
    nxt[0].refs.append("new")                                   # copies are independent lists
    assert nxt[1].refs == ["r1a", "r1b"] and beams[1].refs == ["r1a", "r1b"]
    # a second round: the lineage grows and the best history so far survives
    for b, r in zip(nxt, [res(False), res(True, 3.0), res(False), res(False)]):
        b.results = b.results + [r]
    third = next_round(nxt, keep=1, copies=4)
    assert [b.parent for b in third] == [1] * 4 and third[0].lineage == [1, 1]
    assert outcome(third[0].results) == (True, 3.0)


def test_round_summary_means_best_speedup_over_tasks():
    t0 = [Beam(0, 0, results=[res(True, 1.5)]), Beam(0, 1, results=[res(False)])]
    t1 = [Beam(1, 0, results=[res(False)]), Beam(1, 1, results=[res(False)])]
    s = round_summary([t0, t1])
    assert s["best_speedup_per_task"] == [1.5, 0.0]
    assert s["mean_best_speedup"] == pytest.approx(0.75) and s["solved"] == pytest.approx(0.5)


def test_search_config_is_validated():
    with pytest.raises(ConfigError, match="search.keep"):
        load_config(TINY, ["search.beam_width=6", "search.keep=4"])
    with pytest.raises(ConfigError, match="eval.budget_serial_turns"):
        load_config(TINY, ["eval.budget_serial_turns=[1, 0]"])


# ------------------------------------------------------------------------------------------------ records, budget
def test_turn_entry_counts_only_rewarded_correct_kernels():
    e = turn_entry(0, res(True, 30.0, rewarded=False), "code", ALGO)
    assert e["correct"] is False and e["speedup"] is None and e["score"] == 0.0
    e = turn_entry(1, res(True, 2.0), "code", ALGO)
    assert e["correct"] and e["speedup"] == 2.0 and e["score"] == pytest.approx(ALGO.correctness_weight + 2.0)
    task = SimpleNamespace(name="builtin/relu", level=1)
    rec = trajectory_record(task, 7, [res(False, reason="compile_error"), res(True, 2.0)], [None, "k"], ALGO)
    assert [t["turn"] for t in rec["turns"]] == [0, 1] and rec["turns"][0]["reason"] == "compile_error"


def _records(per_traj: list[list[tuple[bool, float]]], task: str = "a") -> list[dict]:
    t = SimpleNamespace(name=task, level=1)
    return [trajectory_record(t, i, [res(c, s if c else None) for c, s in turns], ["k"] * len(turns), ALGO)
            for i, turns in enumerate(per_traj)]


def test_budget_rows_and_plot(tmp_path):
    # 4 x 1: one of four correct (1.5x); 2 x 2: both correct somewhere (best 1.2x)
    wide = summarize(_records([[(False, 0)], [(True, 1.5)], [(False, 0)], [(False, 0)]]))
    deep = summarize(_records([[(False, 0), (True, 1.2)], [(True, 0.6), (False, 0)]]))
    rows = [split_row(4, 1, wide), split_row(2, 2, deep)]
    assert rows[0]["kernels"] == rows[1]["kernels"] == 4
    assert rows[0]["correct_best"] == 1.0 and rows[0]["correct_avg"] == pytest.approx(0.25)
    assert rows[0]["speedup_best"] == pytest.approx(1.5) and rows[0]["speedup_avg"] == pytest.approx(0.375)
    assert rows[1]["correct_avg"] == 1.0 and rows[1]["speedup_avg"] == pytest.approx(0.9)
    assert rows[1]["fast_1"] == pytest.approx(0.5)
    md = budget_markdown(rows)
    assert "| 4x1 | 1.000 | 0.250 | 1.500 | 0.375 |" in md and "4 kernels per task" in md
    assert os.path.getsize(plot_budget(rows, str(tmp_path / "b.png"))) > 5000


# ------------------------------------------------------------------------------------------------ checkpoints
def test_resolve_checkpoint_layouts_and_weights(tmp_path):
    state = {"model": {"w": torch.ones(2, 3), "step": torch.tensor(3)}, "optimizer": {"m": torch.zeros(2)}}
    run = tmp_path / "run" / "tune" / "exp" / "trial"
    for step in (1, 4, 2):
        d = run / f"checkpoint_00000{step}"
        (d / "learner").mkdir(parents=True)
        torch.save(state, d / "learner" / "learner.pt")
        (d / "meta.json").write_text(json.dumps({"step": step, "weight_version": step + 10}))
    newest = str(run / "checkpoint_000004" / "learner")
    assert resolve_checkpoint(str(tmp_path / "run")) == newest            # a run directory: newest checkpoint
    assert resolve_checkpoint(str(run / "checkpoint_000004")) == newest   # a checkpoint directory
    assert resolve_checkpoint(newest) == newest                           # the learner directory
    assert checkpoint_version(newest) == 14
    w = load_policy_weights(newest, "bfloat16")
    assert set(w) == {"w", "step"} and w["w"].dtype == torch.bfloat16 and w["step"].dtype == torch.int64
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no learner weights"):
        resolve_checkpoint(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no such directory"):
        resolve_checkpoint(str(tmp_path / "missing"))
