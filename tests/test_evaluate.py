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


# ------------------------------------------------------------------------------------------------ local Ray: main()
def _args(**kw):
    return SimpleNamespace(config=TINY, overrides=[], checkpoint=kw.get("checkpoint"), out=kw.get("out"))


def _tiny_checkpoint(path, cfg, version: int, bad_key: bool = False) -> str:
    """A checkpoint as `launch.py train` writes it (learner/learner.pt + meta.json) with changed tiny weights."""
    from engines.models import load_model
    sd = {k: v * 0.5 for k, v in load_model(cfg.model, seed=cfg.run.seed).state_dict().items()}
    if bad_key:
        sd["not_a_parameter.weight"] = torch.zeros(1)
    (path / "learner").mkdir(parents=True)
    torch.save({"model": sd, "optimizer": {}}, path / "learner" / "learner.pt")
    (path / "meta.json").write_text(json.dumps({"step": version, "weight_version": version}))
    return str(path)


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in open(path)]


def test_main_evaluate_with_checkpoint_writes_consistent_files(ray_local, tmp_path, capsys):
    from pipelines.evaluate import main
    cfg = load_config(TINY)
    ckpt = _tiny_checkpoint(tmp_path / "ckpt", cfg, version=3)
    out = tmp_path / "out"
    assert main("evaluate", cfg, _args(checkpoint=ckpt, out=str(out))) == 0
    printed = capsys.readouterr().out
    for name in ("report.md", "report.json", "trajectories.jsonl", "speedup_distribution.png", "metrics_vs_turn.png",
                 "metrics_vs_k.png", "best_kernels/index.json"):
        assert (out / name).exists(), name
    md = (out / "report.md").read_text()
    assert md.splitlines()[0] in printed and "| k | correct best@k" in md
    lines = _lines(out / "trajectories.jsonl")
    assert len(lines) == 2 * 2 * 2                                        # tasks x G x T
    assert {x["weight_version"] for x in lines} == {3}                   # every turn sampled the checkpoint's weights
    assert {(x["task"], x["trajectory_id"], x["turn"]) for x in lines}.__len__() == 8
    rep = json.loads((out / "report.json").read_text())
    o = rep["overall"]
    assert o["tasks"] == 2 and o["trajectories_per_task"] == 2 and rep["timing"]["turns"] == 8
    for t in (0, 1):                                                     # per-turn numbers = the lines' numbers
        mine = [x["correct"] for x in lines if x["turn"] == t]
        assert o["per_turn"][t]["correct"] == pytest.approx(sum(mine) / len(mine))
    assert sum(o["rejections"].values()) == sum(not x["correct"] for x in lines)
    assert o["rejections"] == _count(x["eval"]["reason"] for x in lines if not x["correct"])


def _count(items) -> dict:
    out: dict = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def test_main_refuses_a_missing_checkpoint_before_starting(tmp_path, capsys):
    from pipelines.evaluate import main
    assert main("evaluate", load_config(TINY), _args(checkpoint=str(tmp_path / "nope"), out=str(tmp_path))) == 2
    assert "no such directory" in capsys.readouterr().err and not (tmp_path / "report.md").exists()


def test_launch_wires_evaluate_and_search_and_refuses_bad_input(tmp_path):
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=ROOT)
    for argv, msg in ((["evaluate", "--checkpoint", str(tmp_path / "nope")], "no such directory"),
                      (["search", "search.keep=3"], "search.keep: 3 does not divide search.beam_width=4"),
                      (["evaluate", "tasks.names=[no_such_task]"], "no tasks left")):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), argv[0], "--config", TINY, *argv[1:]],
                           cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and msg in r.stderr, (argv, r.stderr[-2000:])


# ------------------------------------------------------------------------------------------------ local Ray: replay
def seed_replay_worker(cfg, solution: str, name: str):
    """A real RolloutWorker whose engine is SEED_REPLAY (test fixture): even sampling seed -> the known-good solution,
    odd -> an answer without code (a format failure, rejected before compiling)."""
    from actors.rollout import RolloutWorker

    class SeedReplayEngine:
        def __init__(self, tokenizer, real):
            self.real = real            # the worker's real engine checks weights pushed to it
            self.answers = [f"```python\n{solution}\n```\nC++ loops replace the operator.", "I am not sure."]
            self.ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in self.answers]
            self.weight_version = 0

        def generate_each(self, prompts, params):
            from engines.base import Generation
            out = []
            for p, prm in zip(prompts, params):
                i = prm.seed % 2
                out.append(Generation(prompt_ids=list(p), token_ids=list(self.ids[i]),
                                      logprobs=[-1.0] * len(self.ids[i]), text=self.answers[i], finish_reason="stop"))
            return out

        def load_weights(self, state):
            self.real.load_weights(state)

        def sleep(self, level=1):
            pass

        def wake_up(self):
            pass

    class SeedReplayWorker(RolloutWorker):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.engine = SeedReplayEngine(self.tokenizer, self.engine)

    import ray
    return ray.remote(SeedReplayWorker).options(name=name, num_cpus=0, max_concurrency=256).remote(
        cfg.model, cfg.rollout, seed=0, name=name)


@pytest.fixture(scope="module")
def replay(ray_local):
    import ray
    from actors.evaluator import start_evaluator_pool
    from kernel_eval.tasks import builtin_solution, get_task
    from pipelines.evaluate import EvalActors
    cfg = load_config(TINY, ["tasks.names=[builtin/relu]"])
    task = get_task("builtin/relu", size_profile="cpu_small")
    solution = builtin_solution(task.name, "cpu")
    worker = seed_replay_worker(cfg, solution, "seed-replay-0")
    pool = start_evaluator_pool(cfg.evaluator, name="eval-test-pool")
    yield cfg, EvalActors([task], [worker], pool, owned=False), solution
    ray.kill(worker)
    ray.kill(pool)


def _correct_speedups(lines) -> list[float]:
    return [x["eval"]["speedup"] for x in lines if x["correct"]]


def test_evaluate_replay_covers_correct_and_speedup_paths(replay, tmp_path):
    from pipelines.evaluate import run_evaluation
    cfg, actors, solution = replay
    out = tmp_path / "ev"
    run_evaluation(cfg, actors, str(out), 2, 2, step=0, log=lambda m: None, progress=False)
    lines = _lines(out / "trajectories.jsonl")
    # seed = tid * 101 + turn (run seed 0, step 0): even seeds answer the solution
    pattern = {(x["trajectory_id"], x["turn"]): x["correct"] for x in lines}
    assert pattern == {(0, 0): True, (0, 1): False, (1, 0): False, (1, 1): True}, [x["eval"] for x in lines]
    assert all(x["eval"]["reason"] == "format" for x in lines if not x["correct"])
    sp = {tid: max(x["eval"]["speedup"] for x in lines if x["trajectory_id"] == tid and x["correct"]) for tid in (0, 1)}
    assert all(s > 0 for s in sp.values())
    o = json.loads((out / "report.json").read_text())["overall"]
    assert o["at_k"]["1"]["correct_avg"] == 1.0 and o["at_k"]["2"]["pass"] == 1.0
    assert o["at_k"]["2"]["speedup_best"] == pytest.approx(max(sp.values()))
    assert o["at_k"]["2"]["speedup_avg"] == pytest.approx(sum(sp.values()) / 2)
    assert [t["correct"] for t in o["per_turn"]] == [0.5, 0.5] and o["per_turn"][1]["correct_so_far"] == 1.0
    assert o["fast_p"]["0.0"] == 1.0 and o["rejections"] == {"format": 2}
    index = json.loads((out / "best_kernels" / "index.json").read_text())
    assert index["builtin/relu"]["speedup"] == pytest.approx(max(sp.values()))
    assert solution in (out / "best_kernels" / "builtin__relu.py").read_text()


def test_search_keeps_the_best_and_continues_their_histories(replay, tmp_path):
    from pipelines.search import run_search
    cfg, actors, _ = replay
    out = tmp_path / "search"
    result = run_search(cfg, actors, str(out), log=lambda m: None, progress=False)
    lines = _lines(out / "trajectories.jsonl")
    r0 = sorted((x for x in lines if x["round"] == 0), key=lambda x: x["slot"])
    r1 = sorted((x for x in lines if x["round"] == 1), key=lambda x: x["slot"])
    assert len(r0) == len(r1) == 4 and all(x["turn"] == 0 for x in r0) and all(x["turn"] == 1 for x in r1)
    # round 0 (seed = slot * 101): even slots are correct; the two survivors are those, fastest first
    assert [x["correct"] for x in r0] == [True, False, True, False]
    outs = [(x["correct"], x["eval"]["speedup"] if x["correct"] else 0.0) for x in r0]
    survivors = select_survivors(outs, 2)
    assert sorted(survivors) == [0, 2]
    assert [x["parent"] for x in r1] == [survivors[0]] * 2 + [survivors[1]] * 2
    rep = json.loads((out / "report.json").read_text())
    assert rep["rounds"][0]["kept_slots"] == [survivors]
    for child in r1:                        # each copy's prompt carries its parent's kernel and feedback
        parent = r0[child["parent"]]
        assert parent["eval"]["feedback"].splitlines()[0] in child["prompt"]
        assert parent["kernel"].splitlines()[-1] in child["prompt"]
    # round 1 (seed = 10007 + slot * 101): odd slots are correct
    assert [x["correct"] for x in r1] == [False, True, False, True]
    best = max(_correct_speedups(lines))
    assert rep["rounds"][1]["mean_best_speedup"] == pytest.approx(best)          # the best is never dropped
    assert rep["rounds"][1]["mean_best_speedup"] >= rep["rounds"][0]["mean_best_speedup"]
    o = rep["overall"]
    assert o["trajectories_per_task"] == 4 and len(o["per_turn"]) == 2
    assert o["at_k"]["4"]["speedup_best"] == pytest.approx(best) and o["at_k"]["4"]["correct_avg"] == 1.0
    assert [len(r["turns"]) for r in result["records"]] == [2, 2, 2, 2]
    assert "## per round" in (out / "report.md").read_text()


def test_budget_splits_at_a_tiny_budget(replay, tmp_path):
    from pipelines.evaluate import run_budget
    cfg, actors, _ = replay
    out = tmp_path / "budget"
    rows = run_budget(cfg, actors, str(out), 2, [1, 2], log=lambda m: None, progress=False)
    assert [(r["parallel"], r["serial"], r["kernels"]) for r in rows] == [(2, 1, 2), (1, 2, 2)]
    # 2 x 1 (step 0): trajectory 0 correct, 1 not; 1 x 2 (step 1, seeds 10007, 10008): its second turn is correct
    assert (rows[0]["correct_best"], rows[0]["correct_avg"]) == (1.0, 0.5)
    assert (rows[1]["correct_best"], rows[1]["correct_avg"]) == (1.0, 1.0)
    for r in rows:
        rep = json.loads((out / f"split_{r['split']}" / "report.json").read_text())
        assert r["speedup_best"] > 0
        assert r["speedup_best"] == pytest.approx(rep["overall"]["at_k"][str(r["parallel"])]["speedup_best"])
        assert len(_lines(out / f"split_{r['split']}" / "trajectories.jsonl")) == 2
    assert json.loads((out / "budget.json").read_text()) == rows
    assert (out / "budget.png").stat().st_size > 5000 and "| 2x1 |" in (out / "budget.md").read_text()


def test_push_weights_names_a_checkpoint_that_does_not_fit(replay, tmp_path):
    import ray
    from pipelines.evaluate import push_weights
    cfg, actors, _ = replay
    bad = resolve_checkpoint(_tiny_checkpoint(tmp_path / "bad", cfg, version=5, bad_key=True))
    with pytest.raises(RuntimeError, match="do not fit model.name_or_path=builtin:smollm2-135m.*not_a_parameter"):
        push_weights(cfg, actors, bad)
    good = resolve_checkpoint(_tiny_checkpoint(tmp_path / "good", cfg, version=6))
    assert push_weights(cfg, actors, good) == 6 == actors.weight_version
    assert ray.get(actors.workers[0].weight_version.remote(), timeout=60) == 6


# ------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
def test_deepspeed_checkpoint_loads_as_full_weights(tmp_path):
    """A DeepSpeed (ZeRO-3) learner checkpoint as `launch.py train` writes it gives the learner's full weights."""
    pytest.importorskip("deepspeed")
    from learners.deepspeed_learner import DeepSpeedLearner
    from test_learner import single_rank_env
    from test_learning_check import tiny_model
    single_rank_env()
    cfg = load_config(None, ["learner.backend=deepspeed", "learner.gpus_per_rank=1", "learner.zero_stage=3",
                             "learner.precision=bf16", "model.dtype=bfloat16"])
    ds = DeepSpeedLearner(cfg, model_factory=lambda: tiny_model(0), pad_id=0)
    ckpt = tmp_path / "ckpt"
    ds.save(str(ckpt / "learner"))
    (ckpt / "meta.json").write_text(json.dumps({"step": 2, "weight_version": 2}))
    learner_dir = resolve_checkpoint(str(ckpt))
    assert learner_dir == str(ckpt / "learner") and checkpoint_version(learner_dir) == 2
    got = load_policy_weights(learner_dir, "bfloat16")
    want = ds.state_dict_cpu()
    assert set(want) - set(got) <= {"lm_head.weight"} and set(got) <= set(want)     # a tied head may be left out
    for k, v in got.items():
        assert v.dtype == torch.bfloat16 and v.shape == want[k].shape, k
        assert torch.allclose(v.float(), want[k].float(), atol=1e-2), k
