"""Evaluation metrics against hand-computed values (pure, milliseconds)."""
import json
import os

import pytest

from pipelines.reports import budget_splits, plot_report, save_best_kernels, summarize, to_markdown
from rlcore.metrics import pass_at_k


def _traj(task, tid, turns, level=1):
    return {"task": task, "level": level, "trajectory_id": tid,
            "turns": [{"turn": i, "correct": c, "speedup": s, "stage": "done" if c else "correctness",
                       "reason": None if c else "mismatch", "kernel": f"# k{tid}.{i}" if c else None, "score": 0.0}
                      for i, (c, s) in enumerate(turns)]}


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 4, 2) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    # 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
    assert pass_at_k(5, 3, 3) == 1.0        # n - c < k
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_summary_hand_computed():
    # task A, 4 trajectories x 2 turns. Trajectory outcomes (correct, best speedup):
    #   t0: turn1 correct 1.5 -> (1, 1.5);  t1: never correct -> (0, 0)
    #   t2: turn0 correct 0.5, turn1 correct 2.0 -> (1, 2.0);  t3: turn0 correct 0.8 -> (1, 0.8)
    recs = [_traj("A", 0, [(False, None), (True, 1.5)]), _traj("A", 1, [(False, None), (False, None)]),
            _traj("A", 2, [(True, 0.5), (True, 2.0)]), _traj("A", 3, [(True, 0.8), (False, None)])]
    s = summarize(recs)["overall"]
    assert s["tasks"] == 1 and s["trajectories_per_task"] == 4
    k1, k2, k4 = s["at_k"]["1"], s["at_k"]["2"], s["at_k"]["4"]
    assert (k1["correct_best"], k1["speedup_best"]) == (1.0, 1.5)          # first trajectory only
    assert k2["correct_avg"] == 0.5 and k2["speedup_best"] == 1.5 and k2["speedup_avg"] == 0.75
    assert k4["correct_avg"] == 0.75 and k4["speedup_best"] == 2.0
    assert k4["speedup_avg"] == pytest.approx((1.5 + 0 + 2.0 + 0.8) / 4)
    assert k1["pass"] == pytest.approx(0.75) and k4["pass"] == 1.0
    assert s["fast_p"]["0.0"] == 0.75 and s["fast_p"]["1.0"] == 0.5 and s["fast_p"]["2.0"] == 0.0
    t0, t1 = s["per_turn"]
    assert t0["correct"] == 0.5 and t1["correct"] == 0.5
    assert t0["speedup"] == pytest.approx((0.5 + 0.8) / 4)
    assert t1["correct_so_far"] == 0.75 and t1["speedup_so_far"] == pytest.approx((1.5 + 0 + 2.0 + 0.8) / 4)
    assert s["rejections"] == {"mismatch": 4}


def test_levels_and_files(tmp_path):
    recs = [_traj("A", 0, [(True, 1.2)], level=1), _traj("A", 1, [(True, 3.0)], level=1),
            _traj("B", 0, [(False, None)], level=2), _traj("B", 1, [(False, None)], level=2)]
    summary = summarize(recs)
    assert summary["levels"]["1"]["at_k"]["2"]["correct_avg"] == 1.0
    assert summary["levels"]["2"]["at_k"]["2"]["correct_avg"] == 0.0
    assert summary["overall"]["at_k"]["2"]["correct_avg"] == 0.5
    md = to_markdown(summary)
    assert "level 2" in md and "| 2 |" in md
    paths = plot_report(recs, summary, str(tmp_path))
    assert len(paths) == 3 and all(os.path.getsize(p) > 1000 for p in paths)
    index = save_best_kernels(recs, str(tmp_path / "best"))
    assert list(index) == ["A"] and index["A"]["speedup"] == 3.0 and index["A"]["trajectory"] == 1
    assert (tmp_path / "best" / "A.py").read_text().endswith("# k1.0")
    assert json.loads((tmp_path / "best" / "index.json").read_text())["A"]["turn"] == 0


def test_budget_splits():
    assert budget_splits(128) == [(128, 1), (32, 4), (16, 8)]
    assert budget_splits(12, (1, 4, 8)) == [(12, 1), (3, 4)]
    with pytest.raises(ValueError):
        budget_splits(7, (2, 4))
