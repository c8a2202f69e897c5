"""Multi-turn GRPO for kernels (KEVIN.md): the controller loop. Runs inside the Ray Tune trainable (runtime/trainer.py).

One step (DESIGN.md "The kernel pipeline, one step"), as `KernelGRPO.train_step` reads top to bottom:
  draw B tasks (task cursor + seeded RNG) -> start G trajectories per task -> each trajectory generates a turn on its
  rollout worker and the TurnSample ref goes straight to the evaluator pool -> as soon as ITS evaluation returns, the
  trajectory starts its next turn (history refs + feedback strings; no barrier across trajectories) -> the reward
  aggregator scores every turn, computes turn returns and group advantages (group = the G x T samples of one task) ->
  the learner group trains on the sample refs -> new weights go to every rollout worker (weight version + 1) ->
  metrics, trajectories, plots, progress line.

The controller holds ObjectRefs and small metadata only (EvalResults, scores, advantages); it never ray.gets a
TurnSample (tests/test_pipeline_e2e.py checks its memory does not grow with response length).

Evaluation stall fraction (metric `eval_stall_fraction`): for each rollout worker, the wall time during the rollout
phase in which it had no generation request of this step in flight while at least one of its trajectories was waiting
for an evaluation; averaged over workers and divided by the step's wall time. Event times come from the controller's
ray.wait loop (resolution: `poll_s` and the wait latency), so it is an estimate from the controller's side. 0 means
evaluation never held generation up; Kevin's system spent ~55% of its time so.

`run_trajectories` is the reusable trajectory loop (evaluate/search reuse it).

    python -m pytest tests/test_pipeline_e2e.py -q
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import ray


BUFFERED_SAMPLES = "buffered_samples.pkl"      # checkpoint file: the policy-lag batch's TurnSamples


# ------------------------------------------------------------------------------------------------------ task sampling
class TaskSampler:
    """Draws tasks without replacement within an epoch (a seeded permutation), wrapping into a new permutation.
    Its whole state (RNG, epoch, order, cursor) goes into the checkpoint, so a resumed run draws the same tasks."""

    def __init__(self, num_tasks: int, seed: int):
        if num_tasks <= 0:
            raise ValueError("no tasks to draw from (check tasks.* in the config)")
        self.num_tasks = num_tasks
        self.rng = random.Random(seed)
        self.epoch = 0
        self.cursor = 0
        self.order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(self.num_tasks))
        self.rng.shuffle(order)
        return order

    def draw(self, count: int) -> list[int]:
        out = []
        for _ in range(count):
            if self.cursor >= self.num_tasks:
                self.epoch, self.cursor, self.order = self.epoch + 1, 0, self._permutation()
            out.append(self.order[self.cursor])
            self.cursor += 1
        return out

    def state_dict(self) -> dict:
        return {"num_tasks": self.num_tasks, "rng": self.rng.getstate(), "epoch": self.epoch,
                "cursor": self.cursor, "order": list(self.order)}

    def load_state_dict(self, s: dict) -> None:
        if s["num_tasks"] != self.num_tasks:
            raise ValueError(f"checkpoint was made with {s['num_tasks']} tasks, the config now gives "
                             f"{self.num_tasks}: resume with the same tasks.* settings")
        self.rng.setstate(_as_rng_state(s["rng"]))
        self.epoch, self.cursor, self.order = s["epoch"], s["cursor"], list(s["order"])


def _as_rng_state(s: Any) -> tuple:
    return (s[0], tuple(s[1]), s[2]) if isinstance(s, (list, tuple)) else s


def sampling_seed(run_seed: int, step: int, trajectory_id: int, turn: int) -> int:
    """A distinct, reproducible seed per generated turn (resuming regenerates the same samples where engines are
    deterministic)."""
    return (run_seed * 1_000_003 + step * 10_007 + trajectory_id * 101 + turn) % (2 ** 31 - 1)


# -------------------------------------------------------------------------------------------------- trajectory loop
@dataclass
class Trajectory:
    task_index: int                 # position of the task in this step's batch
    task: Any                       # kernel_eval.tasks.Task
    trajectory_id: int
    worker: int
    refs: list = field(default_factory=list)        # ObjectRef[TurnSample] per finished turn
    results: list = field(default_factory=list)     # EvalResult per finished turn
    error: Optional[str] = None     # why it ended early (a rollout worker or evaluator failure)


@dataclass
class RolloutStats:
    wall_s: float = 0.0
    generate_s: float = 0.0         # wall time with >= 1 generation in flight
    evaluate_s: float = 0.0         # wall time with >= 1 generated kernel waiting for its evaluation
    stall_s: float = 0.0            # mean over workers of their idle-waiting-for-evaluation time (see module doc)
    turns: int = 0
    failed_turns: int = 0


@dataclass
class Batch:
    """One step's rollouts: the trajectories (sample refs + EvalResults) and the sampler state before its draw."""
    step: int
    task_ids: list
    tasks: list
    trajs: list                     # [Trajectory]
    stats: RolloutStats
    sampler_before: dict
    generated_in_s: float = 0.0     # wall time of the step it was generated in, when that was an earlier step


def run_trajectories(tasks: list, trajectories_per_task: int, max_turns: int, workers: list, pool,
                     make_request: Callable[[Trajectory, int, list], Any], timeout_s: float = 900.0,
                     poll_s: float = 0.5, stop: Optional[Callable[[], bool]] = None,
                     progress: bool = True) -> tuple[list[Trajectory], RolloutStats]:
    """Run G trajectories of up to T turns for every task, each advancing as soon as its own evaluation returns.

    make_request(traj, turn, feedback) -> TurnRequest (it carries traj.refs as history_refs).
    Returns the trajectories (refs + EvalResults) and timing stats. A failed generation or evaluation ends that
    trajectory (recorded in Trajectory.error); `timeout_s` without any progress raises TimeoutError naming what is
    pending; `stop()` returning True abandons the loop (returns None, stats).
    """
    from tqdm import tqdm
    trajs = [Trajectory(i, task, i * trajectories_per_task + g, (i * trajectories_per_task + g) % len(workers))
             for i, task in enumerate(tasks) for g in range(trajectories_per_task)]
    pending: dict = {}              # ref -> ("gen" | "eval", trajectory)
    gen_in_flight = [0] * len(workers)
    eval_waiting = [0] * len(workers)
    stats = RolloutStats()
    idle = [0.0] * len(workers)

    def launch(traj: Trajectory, turn: int) -> None:
        req = make_request(traj, turn, [r.feedback for r in traj.results])
        gen_ref = workers[traj.worker].generate_turn.remote(req)
        eval_ref = pool.evaluate.remote(traj.task, gen_ref)      # Ray resolves the TurnSample inside the pool
        pending[gen_ref] = ("gen", traj)
        pending[eval_ref] = ("eval", traj, gen_ref)
        gen_in_flight[traj.worker] += 1

    for t in trajs:
        launch(t, 0)
    # inside a Ray actor every refresh becomes a log line: refresh at most every 5 s
    bar = tqdm(total=len(trajs) * max_turns, desc="turns", unit="turn", disable=not progress, leave=False,
               mininterval=5.0)
    start = last = last_progress = time.time()
    while pending:
        if stop is not None and stop():
            bar.close()
            return None, stats  # type: ignore[return-value]
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=poll_s, fetch_local=False)
        now = time.time()
        dt, last = now - last, now
        stats.generate_s += dt if sum(gen_in_flight) else 0.0
        stats.evaluate_s += dt if sum(eval_waiting) else 0.0
        for w in range(len(workers)):
            if gen_in_flight[w] == 0 and eval_waiting[w] > 0:
                idle[w] += dt
        if not ready:
            if now - last_progress > timeout_s:
                raise TimeoutError(f"no generation or evaluation finished in {timeout_s:.0f}s; "
                                   f"{len(pending)} requests pending (generations in flight per worker: "
                                   f"{gen_in_flight}; evaluations waiting: {sum(eval_waiting)})")
            continue
        last_progress = now
        for ref in ready:
            kind, traj, *rest = pending.pop(ref)
            if kind == "gen":       # generation finished: its kernel now waits for evaluation (payload not fetched)
                gen_in_flight[traj.worker] -= 1
                eval_waiting[traj.worker] += 1
                continue
            gen_ref = rest[0]
            if gen_ref in pending:  # evaluation returned before we saw the generation (same wait batch)
                pending.pop(gen_ref)
                gen_in_flight[traj.worker] -= 1
            else:
                eval_waiting[traj.worker] -= 1
            stats.turns += 1
            bar.update(1)
            try:
                result = ray.get(ref, timeout=timeout_s)      # a small EvalResult, never the TurnSample
            except Exception as e:  # noqa: BLE001 - a dead rollout worker surfaces here (the pool's argument failed)
                traj.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                stats.failed_turns += 1
                bar.update(max_turns - len(traj.results) - 1)
                continue
            traj.refs.append(gen_ref)
            traj.results.append(result)
            if len(traj.results) < max_turns:
                launch(traj, len(traj.results))
    bar.close()
    stats.wall_s = time.time() - start
    stats.stall_s = float(np.mean(idle)) if idle else 0.0
    return trajs, stats


def make_turn_request(cfg, step: int) -> Callable[[Trajectory, int, list], Any]:
    """The TurnRequest factory for run_trajectories at `step` (training, evaluation and search build turns alike):
    sampling parameters from cfg.rollout, a seed per (run seed, step, trajectory, turn), history refs + feedback."""
    from actors.rollout import TurnRequest
    from engines.base import SamplingParams
    ro, seed, backend = cfg.rollout, cfg.run.seed, cfg.evaluator.backend

    def make(traj: Trajectory, turn: int, feedback: list) -> Any:
        params = SamplingParams(temperature=ro.temperature, top_p=ro.top_p, max_new_tokens=ro.max_new_tokens,
                                seed=sampling_seed(seed, step, traj.trajectory_id, turn))
        return TurnRequest(task_name=traj.task.name, task_source=traj.task.source, backend=backend,
                           trajectory_id=traj.trajectory_id, turn=turn, history_refs=list(traj.refs),
                           feedback=list(feedback), params=params)
    return make


# ------------------------------------------------------------------------------------------------------ the controller
class KernelGRPO:
    """Controller state (step, weight version, task sampler) and one training step. The actors are created by
    `runtime.trainer` (see `build_actors`) and handed in, so tests can run the same step with other workers."""

    def __init__(self, cfg, tasks: list, workers: list, pool, learner, aggregator, run_dir,
                 log: Optional[Callable] = None, stop: Optional[Callable[[], bool]] = None, progress: bool = True):
        self.cfg, self.tasks, self.workers, self.pool = cfg, tasks, workers, pool
        self.learner, self.aggregator, self.run_dir = learner, aggregator, run_dir
        self.log, self.stop, self.progress = log or _print_flush, stop, progress
        self.step = 0
        self.weight_version = 0
        self.sampler = TaskSampler(len(tasks), cfg.run.seed)
        self._next: Optional[Batch] = None      # the next step's batch, generated during this one (policy lag 1)

    # -- state (runtime/checkpoint.py stores it with the learner's weights and optimizer)
    def state_dict(self) -> dict:
        """Small state only. A buffered next batch (policy lag 1) is described here (EvalResults, trajectory
        metadata, rollout stats); its TurnSamples are written by `save` through the aggregator actor."""
        b = self._next
        buffered = None if b is None else {
            "step": b.step, "task_ids": list(b.task_ids), "stats": vars(b.stats), "generated_in_s": b.generated_in_s,
            "sampler_before": b.sampler_before,
            "trajectories": [{"task_index": t.task_index, "trajectory_id": t.trajectory_id, "worker": t.worker,
                              "results": list(t.results), "error": t.error, "turns": len(t.refs)} for t in b.trajs]}
        return {"step": self.step, "weight_version": self.weight_version, "sampler": self.sampler.state_dict(),
                "buffered_batch": buffered}

    def load_state_dict(self, s: dict, sample_refs: Optional[list] = None) -> None:
        """`sample_refs`: the buffered batch's TurnSample refs in trajectory/turn order (from `restore`)."""
        self.step, self.weight_version = int(s["step"]), int(s["weight_version"])
        self.sampler.load_state_dict(s["sampler"])
        self._next = None
        b = s.get("buffered_batch")
        if b is None:
            return
        if sample_refs is None:         # no samples to go with it: draw and generate that step again
            self.sampler.load_state_dict(b["sampler_before"])
            return
        refs, trajs = iter(sample_refs), []
        tasks = [self.tasks[i] for i in b["task_ids"]]
        for t in b["trajectories"]:
            tr = Trajectory(t["task_index"], tasks[t["task_index"]], t["trajectory_id"], t["worker"],
                            refs=[next(refs) for _ in range(t["turns"])], results=list(t["results"]),
                            error=t["error"])
            trajs.append(tr)
        self._next = Batch(b["step"], list(b["task_ids"]), tasks, trajs, RolloutStats(**b["stats"]),
                           b["sampler_before"], b["generated_in_s"])

    def save(self, directory: str) -> str:
        """Full checkpoint (runtime/checkpoint.py): controller state, RNG states, learner weights and optimizer, and
        the buffered next batch's TurnSamples (written by the aggregator actor: the controller never holds them)."""
        from runtime import checkpoint
        timeout = self.cfg.ray.get_timeout_s
        os.makedirs(directory, exist_ok=True)
        if self._next is not None:
            refs = [r for t in self._next.trajs for r in t.refs]
            ray.get(self.aggregator.save_samples.remote(os.path.join(directory, BUFFERED_SAMPLES), refs),
                    timeout=timeout)
        return checkpoint.save(directory, self, self.learner, timeout)

    def restore(self, directory: str) -> None:
        """Load a checkpoint and give every rollout worker the restored weights under the restored version."""
        from runtime import checkpoint
        timeout = self.cfg.ray.get_timeout_s
        state = checkpoint.load(directory, self, self.learner, timeout)
        path = os.path.join(directory, BUFFERED_SAMPLES)
        if state.get("buffered_batch") is not None and os.path.exists(path):
            refs = ray.get(self.aggregator.load_samples.remote(path), timeout=timeout)
            self.load_state_dict(state, sample_refs=refs)
        sync_weights(self.cfg, self.learner, self.workers, self.weight_version, timeout)

    def make_request(self, step: int) -> Callable:
        return make_turn_request(self.cfg, step)

    def train_step(self) -> Optional[dict]:
        """One GRPO step. Returns the step's metrics, or None when a stop request abandoned it (state unchanged).

        algo.max_policy_lag_steps=1 (disaggregated placement): while the learner trains on this step's batch, the
        rollout workers already generate and evaluate the next step's batch under the current weights (one update
        behind the weights that batch is trained from; the clipped ratio against the sampling log-probs corrects
        for it). The buffered batch is part of the checkpoint. A stop request during that overlap finishes this
        step (its update and sync) and drops the half-made next batch (its tasks are drawn again)."""
        cfg, a, timeout = self.cfg, self.cfg.algo, self.cfg.ray.get_timeout_s
        t_step = time.time()
        # 1-4. this step's batch: buffered by the previous step (policy lag 1), or drawn and rolled out now
        if self._next is not None and self._next.step != self.step:     # not this step's: give its draw back
            self.sampler.load_state_dict(self._next.sampler_before)
            self._next = None
        batch, self._next = (self._next, None) if self._next is not None else (self._rollout(self.step), None)
        if batch is None:
            return None
        tasks, trajs, rs = batch.tasks, batch.trajs, batch.stats
        # 5. scores, turn returns, group advantages, rollout metrics, trajectories.jsonl (in the aggregator)
        t0 = time.time()
        groups, sample_refs = _groups(tasks, trajs, a.trajectories_per_task)
        scored = ray.get(self.aggregator.score_step.remote(self.step, groups), timeout=timeout)
        t_score = time.time() - t0
        # 6. learner update on the sample refs (the learner resolves them; the controller never does)
        t0 = time.time()
        train_ref = self.learner.async_train(sample_refs, scored["advantages"]) if sample_refs else None
        #    policy lag 1: the next step's rollouts run while the learner trains
        t_overlap = 0.0
        if a.max_policy_lag_steps > 0 and self.step + 1 < cfg.run.total_steps:
            t1 = time.time()
            self._next = self._rollout(self.step + 1)
            t_overlap = time.time() - t1
        train_metrics = _mean_dicts(wait_all(train_ref, timeout, f"learner update (step {self.step})", [
            f"learner rank {r}" for r in range(len(train_ref))])) if train_ref is not None else {}
        t_train = time.time() - t0
        self.log(f"[step {self.step}] learner {t_train:.1f} s on {len(sample_refs)} samples; syncing weights "
                 f"(version {self.weight_version + 1})")
        # 7. weight sync: every worker loads the new weights under the next version (one object-store export, or
        #    one NCCL broadcast from the learner's GPU with rollout.weight_sync=nccl)
        t0 = time.time()
        self.weight_version += 1
        sync_weights(cfg, self.learner, self.workers, self.weight_version, timeout)
        t_sync = time.time() - t0
        # 8. metrics (the rollout times are those of the batch trained here, wherever it was generated)
        m = dict(scored["metrics"])
        versions = sorted({s["weight_version"] for s in scored["sample_meta"]})
        m.update({"step": self.step, "tasks": [t.name for t in tasks], "weight_version": self.weight_version,
                  "sampled_weight_versions": versions, **{k: v for k, v in train_metrics.items()},
                  "time_generate_s": rs.generate_s, "time_evaluate_s": rs.evaluate_s, "time_rollout_s": rs.wall_s,
                  "time_score_s": t_score, "time_train_s": t_train, "time_sync_s": t_sync, "weight_sync_s": t_sync,
                  "time_overlap_rollout_s": t_overlap, "policy_lag_steps": self.weight_version - 1 - min(versions)
                  if versions else 0, "failed_turns": rs.failed_turns,
                  "tokens_per_s": m.get("response_tokens_total", 0) / max(rs.wall_s, 1e-9)})
        m["step_s"] = time.time() - t_step
        # stall: share of the wall time of the step that generated the batch (with lag 1, the previous step)
        m["eval_stall_fraction"] = min(1.0, rs.stall_s / max(batch.generated_in_s or m["step_s"], 1e-9))
        if self._next is not None:
            self._next.generated_in_s = m["step_s"]
        self.step += 1
        return m

    def _rollout(self, step: int) -> Optional["Batch"]:
        """Draw `step`'s tasks and run its trajectories (steps 1-4 of the module doc). None when a stop request
        abandoned it; the sampler is then as it was before the draw."""
        a, timeout = self.cfg.algo, self.cfg.ray.get_timeout_s
        sampler_before = self.sampler.state_dict()
        task_ids = self.sampler.draw(a.tasks_per_step)
        tasks = [self.tasks[i] for i in task_ids]
        # wake the engines (colocated: they slept while the learner trained)
        self._call_workers("wake_up", timeout) if self._sleeps() else None
        # generate and evaluate: every trajectory advances on its own evaluation
        trajs, rs = run_trajectories(tasks, a.trajectories_per_task, a.max_turns, self.workers, self.pool,
                                     self.make_request(step), timeout_s=timeout, stop=self.stop,
                                     progress=self.progress)
        if trajs is None:
            self.sampler.load_state_dict(sampler_before)
            return None
        # engines sleep while the learner trains (colocated placement, engines that support it)
        t0 = time.time()
        self._call_workers("sleep", timeout) if self._sleeps() else None
        asleep = f"; engines asleep in {time.time() - t0:.1f} s" if self._sleeps() else ""
        self.log(f"[step {step}] rollout {rs.wall_s:.1f} s: {rs.turns} turns of {len(trajs)} trajectories, "
                 f"{rs.failed_turns} failed{asleep}")
        return Batch(step, task_ids, tasks, trajs, rs, sampler_before)

    def _sleeps(self) -> bool:
        return self.cfg.placement.mode == "colocated" and self.cfg.rollout.enable_sleep \
            and self.cfg.rollout.engine == "vllm"

    def _call_workers(self, method: str, timeout: float) -> None:
        ray.get([getattr(w, method).remote() for w in self.workers], timeout=timeout)


def _print_flush(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------------------------------------------ weight sync
def sync_weights(cfg, learner, workers: list, version: int, timeout_s: float) -> None:
    """Every rollout worker loads the learner's current weights under `version`. rollout.weight_sync=nccl (vllm,
    disaggregated): the workers receive and the learner ranks send concurrently over the group that
    init_nccl_weight_sync set up. Otherwise rank 0's CPU state dict goes once into the object store and every worker
    loads it (hf engines; vllm through ipc or disk)."""
    if cfg.rollout.engine == "vllm" and cfg.rollout.weight_sync == "nccl":
        meta = learner.weight_transfer_metadata()
        recv = [w.receive_weights.remote(meta, version) for w in workers]
        send = learner.async_send_weights(meta)
        wait_all(recv + send, timeout_s, f"NCCL weight sync (version {version})",
                 [f"rollout-{i} receive" for i in range(len(recv))] + [f"learner rank {r} send"
                                                                         for r in range(len(send))])
        return
    # every rank's export is waited for, not only rank 0's (whose result the workers load): under ZeRO-3 the ranks
    # gather together, and a rank still stuck in an export would otherwise only show up later, as a hung update
    exports = learner.async_weights_all()
    loads = [w.update_weights.remote(exports[0], version) for w in workers]
    wait_all(loads + exports[1:], timeout_s, f"weight sync (version {version})",
             [f"rollout-{i} load" for i in range(len(loads))] +
             [f"learner rank {r} export" for r in range(1, len(exports))])


def init_nccl_weight_sync(cfg, learner, workers: list, timeout_s: float) -> dict:
    """Form the NCCL group of the learner's rank 0 (rank 0 of the group, listening on a free port of its node) and
    every vLLM worker (engine i: ranks offset_i .. offset_i + tensor_parallel_size - 1). All members join at once, so
    the learner's and every worker's init run concurrently. Returns the transfer metadata (names, dtypes, shapes)."""
    from engines.weight_transfer import engine_ranks
    addr, port = learner.get(learner.async_weight_transfer_endpoint(), timeout_s)
    world, offsets = engine_ranks([cfg.rollout.tensor_parallel_size] * len(workers))
    refs = learner.async_init_weight_transfer(addr, port, world)
    refs += [w.init_weight_transfer.remote(addr, port, off, world) for w, off in zip(workers, offsets)]
    t0 = time.time()
    n_learner = len(refs) - len(workers)
    wait_all(refs, timeout_s, f"NCCL weight-transfer group ({world} members at {addr}:{port})",
             [f"learner rank {r}" for r in range(n_learner)] + [f"rollout-{i}" for i in range(len(workers))])
    meta = learner.weight_transfer_metadata()
    print(f"[weight sync] NCCL group of {world} ready in {time.time() - t0:.1f}s ({len(meta['names'])} tensors per "
          f"sync)", flush=True)
    return meta


def wait_all(refs: list, timeout_s: float, what: str, names: Optional[list[str]] = None) -> list:
    """Results of all refs, failing fast: the first error raises at once (the peers of a collective would otherwise
    block until the timeout). A timeout names how many are still pending, and which when `names` (one per ref) are
    given. After a failure of a collective its group is unusable; the trial restarts from its last checkpoint."""
    pending = list(refs)
    index = {r: i for i, r in enumerate(refs)}
    out: list = [None] * len(refs)
    deadline = time.monotonic() + timeout_s
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            which = f": {', '.join(names[index[r]] for r in pending)}" if names else ""
            raise TimeoutError(f"{what}: {len(pending)} of {len(refs)} calls unfinished after {timeout_s:.0f}s "
                               f"(ray.get_timeout_s){which}")
        for r in ready:
            try:
                out[index[r]] = ray.get(r, timeout=max(1.0, deadline - time.monotonic()))
            except Exception as e:
                raise RuntimeError(f"{what} failed: {_reason(e)}") from e
    return out


def _reason(e: BaseException) -> str:
    """The remote exception's own type and message (a RayTaskError's first line is only the task's header)."""
    cause = getattr(e, "cause", None)
    err = cause if isinstance(cause, BaseException) else e
    lines = [ln for ln in str(err).splitlines() if ln.strip()] or [""]
    return f"{type(err).__name__}: {lines[0][:300]}"


def _groups(tasks: list, trajs: list[Trajectory], g: int) -> tuple[list[dict], list]:
    """Aggregator input (one group per task, refs nested so the aggregator resolves them) and the flat sample refs in
    the same (task, trajectory, turn) order as the aggregator's advantages."""
    groups, refs = [], []
    for i, task in enumerate(tasks):
        mine = trajs[i * g:(i + 1) * g]
        groups.append({"task": task.name, "trajectories": [
            [{"result": r, "ref": ref, "trajectory_id": t.trajectory_id} for ref, r in zip(t.refs, t.results)]
            for t in mine]})
        refs.extend(ref for t in mine for ref in t.refs)
    return groups, refs


def _mean_dicts(ds: list[dict]) -> dict:
    keys = {k for d in ds for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: float(np.mean([d[k] for d in ds if k in d])) for k in keys}


# ------------------------------------------------------------------------------------------------------ the actors
@dataclass
class Actors:
    tasks: list
    workers: list
    pool: Any
    learner: Any
    aggregator: Any


def build_actors(cfg, run_dir) -> Actors:
    """Start every actor of a kernel GRPO run (inside the Tune trial, so they land in its placement group).
    Rollout workers and the learner are started in parallel; with rollout.weight_sync=nccl the NCCL group is formed
    next; the first weight sync makes every engine hold the learner's weights under version 0."""
    from actors.evaluator import start_evaluator_pool
    from actors.learner import LearnerGroup
    from actors.reward import RewardAggregator
    from runtime.trainer import bundle_plan
    from kernel_eval.tasks import load_tasks
    tasks = load_tasks(cfg.tasks)
    if not tasks:
        raise ValueError(f"tasks: no tasks selected (source={cfg.tasks.source}, names={cfg.tasks.names}, "
                         f"split={cfg.tasks.split})")
    timeout = cfg.ray.get_timeout_s
    pg = ray.util.get_current_placement_group()          # the trial's group (None outside Tune)
    _, index = bundle_plan(cfg)
    workers = [_rollout_worker(cfg, i, pg, index["rollout"][i] if pg else None) for i in range(cfg.rollout.num_workers)]
    learner = LearnerGroup(cfg, placement_group=pg, bundle_indices=index["learner"] if pg else None)
    pool = start_evaluator_pool(cfg.evaluator, name="evaluator-pool")
    aggregator = RewardAggregator.options(name="reward-aggregator").remote(
        cfg.algo, cfg.run.name, run_dir.trajectories if cfg.run.log_trajectories else None, timeout)
    if cfg.rollout.engine == "vllm" and cfg.rollout.weight_sync == "nccl":
        init_nccl_weight_sync(cfg, learner, workers, timeout)
    sync_weights(cfg, learner, workers, 0, timeout)
    return Actors(tasks, workers, pool, learner, aggregator)


def _rollout_worker(cfg, i: int, pg, bundle_index: Optional[int]):
    """A named RolloutWorker ("rollout-<i>"), pinned to its bundle when running inside the trial's placement group."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from actors.rollout import RolloutWorker
    opts = dict(name=f"rollout-{i}", num_cpus=cfg.rollout.cpus_per_worker, num_gpus=cfg.rollout.gpus_per_worker,
                max_concurrency=4096, max_restarts=0)
    if pg is not None:
        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle_index)
    return ray.remote(RolloutWorker).options(**opts).remote(
        cfg.model, cfg.rollout, seed=cfg.run.seed + i, name=f"rollout-{i}", get_timeout_s=cfg.ray.get_timeout_s)
