"""Will this configuration fit? Per-GPU and per-node memory of every role, the verdict, the cheapest change.

`build_plan(cfg, shape)` applies the formulas of planner/memory.py to a Config:
- colocated: every GPU holds one learner rank's states and its share of a rollout engine; the step has three phases
  (rollout: engine awake; train: engine asleep (vLLM enable_sleep) or idle (hf), learner activations; evaluation:
  engine asleep, evaluator headroom). The peak phase must fit in placement.gpu_memory_gib.
- disaggregated: each role has its own GPUs and each role's peak must fit.
- a role with no GPUs (gpus_per_rank / gpus_per_worker = 0) lives in CPU memory instead.
CPU memory per node adds offloaded optimizer states, vLLM's slept weights, model loading copies, CPU-resident roles,
evaluator processes and Ray itself.

`cheapest_change(cfg, shape)` tries the changes an engineer would try, cheapest first (cost = rough slowdown), one at
a time and then in pairs, and returns the first set of `key=value` overrides that fits.
"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from planner import memory as M
from planner.model_shape import ModelShape

GIB = M.GIB


@dataclass
class Plan:
    rows: list                            # [memory.Row]
    phases: list                          # [memory.Phase], per GPU
    gpu_capacity: float                   # bytes of one GPU (0: no GPU roles)
    cpu_need: float                       # bytes per node
    cpu_capacity: float
    gpus_needed: int
    gpus_available: int
    problems: list = field(default_factory=list)    # human-readable reasons it does not fit
    notes: list = field(default_factory=list)       # assumptions made
    vllm: Optional[M.VllmBudget] = None

    @property
    def gpu_peak(self) -> float:
        return max((p.gpu_bytes for p in self.phases), default=0.0)

    @property
    def shortfall(self) -> float:
        """Bytes by which the worst resource is over its capacity (<= 0: fits)."""
        worst = self.cpu_need - self.cpu_capacity
        if self.gpu_capacity:
            worst = max(worst, self.gpu_peak - self.gpu_capacity)
        if self.vllm is not None:
            worst = max(worst, self.vllm.kv_short)
        return worst

    @property
    def fits(self) -> bool:
        return not self.problems


def _learner_rows(cfg, shape: ModelShape, on_gpu: bool) -> tuple[list, float, float, float]:
    """(rows, resident bytes per GPU, activation-peak bytes per GPU, CPU bytes) of the learner (and reference)."""
    lc = cfg.learner
    deepspeed = lc.backend == "deepspeed"
    stage = lc.zero_stage if deepspeed else 0
    ranks = lc.num_ranks if deepspeed else 1
    # The deepspeed learner always computes in bf16 with fp32 master weights in the optimizer; the torch learner
    # keeps fp32 weights and gradients (bf16 only as autocast compute).
    state_precision = "bf16" if deepspeed else "fp32"
    e = 2 if (deepspeed or lc.precision == "bf16") else 4
    autocast = not deepspeed and lc.precision == "bf16"     # fp32 weights, bf16 autocast: fp32 norms, bf16 casts
    seq = cfg.rollout.max_context_tokens + cfg.rollout.max_new_tokens
    st = M.model_state_bytes(shape.num_params, shape.largest_module_params, stage, ranks, state_precision,
                             deepspeed and lc.offload_optimizer, deepspeed and lc.offload_params)
    tokens = lc.micro_batch_samples * (cfg.rollout.max_context_tokens + cfg.rollout.max_new_tokens)
    act_ckpt = M.activation_bytes(shape, tokens, e, True, autocast, seq)
    act_full = M.activation_bytes(shape, tokens, e, False, autocast, seq)
    act = act_ckpt if lc.gradient_checkpointing else act_full
    # Worst case: a micro-batch mixing the shortest and the longest prompt keeps logits from the shortest on.
    logit_positions = lc.micro_batch_samples * (cfg.rollout.max_context_tokens + cfg.rollout.max_new_tokens)
    logits = M.logits_bytes(shape, logit_positions, e, "fused")        # learners/logprobs.py: no fp32 copy
    autocast_cache = shape.num_params * 2 if (not deepspeed and lc.precision == "bf16") else 0.0
    adam_temp = shape.num_params * 4 if not deepspeed else 0.0    # torch foreach AdamW: one state-sized temporary
    ref = 0.0
    if cfg.algo.kl_coef > 0:
        ref = shape.num_params * 2 / (ranks if stage >= 3 else 1) if deepspeed else shape.num_params * 4
    chosen = "with checkpointing" if lc.gradient_checkpointing else "no checkpointing"
    rows = [
        M.Row("learner", "weights", st.gpu_params, 0, f"ZeRO-{stage} over {ranks} rank(s)" if deepspeed else "fp32"),
        M.Row("learner", "gradients", st.gpu_grads),
        M.Row("learner", "optimizer states", st.gpu_optimizer, 0, "offloaded" if st.cpu_offload else "AdamW"),
        M.Row("learner", "ZeRO-3 gathered module", st.gpu_gather),
        M.Row("learner", "activations, no checkpointing", act_full, 0, "used" if not lc.gradient_checkpointing else ""),
        M.Row("learner", "activations, checkpointing", act_ckpt, 0, "used" if lc.gradient_checkpointing else ""),
        M.Row("learner", "logits + gradient (fused log-probs)", logits, 0,
              f"{logit_positions} positions x vocab {shape.vocab_size}"),
    ]
    if autocast_cache or adam_temp:
        rows.append(M.Row("learner", "autocast cache / AdamW temporary", autocast_cache + adam_temp))
    if ref:
        rows.append(M.Row("reference", "weights (KL)", ref))
    resident = st.gpu_params + st.gpu_grads + st.gpu_optimizer + ref
    peak_extra = st.gpu_gather + max(act + logits + autocast_cache, adam_temp)
    rows.append(M.Row("learner", f"peak ({chosen})", resident + peak_extra))
    cpu = st.cpu_offload
    if not on_gpu:
        cpu += resident + peak_extra
    # Each rank materializes its weights on CPU before sharding unless built inside zero.Init (ZeRO-3 does that).
    load_copies = 0 if (deepspeed and stage >= 3) else ranks
    cpu_load = load_copies * shape.num_params * (2 if deepspeed else 4)
    rows.append(M.Row("learner", "CPU: offload + load copies", 0, cpu + cpu_load))
    return rows, resident, peak_extra, cpu + cpu_load


def _rollout_rows(cfg, shape: ModelShape, gpu_bytes: float, on_gpu: bool):
    """(rows, active bytes per GPU, asleep bytes per GPU, CPU bytes per node, vLLM budget or None)."""
    rc = cfg.rollout
    seq_tokens = rc.max_context_tokens + rc.max_new_tokens
    if rc.engine == "vllm" and on_gpu:
        b = M.vllm_budget(shape, gpu_bytes, rc.gpu_memory_utilization, cfg.model.dtype, rc.quantization,
                          rc.tensor_parallel_size, rc.max_concurrent_sequences, seq_tokens)
        rows = [M.Row("rollout", "vLLM claimed (utilization x GPU)", b.claimed, 0,
                      f"gpu_memory_utilization={rc.gpu_memory_utilization}"),
                M.Row("rollout", "  weights", b.weights, 0, f"TP={rc.tensor_parallel_size}"),
                M.Row("rollout", "  profile + CUDA graphs", b.overhead),
                M.Row("rollout", "  KV cache available", b.kv_available, 0, f"holds {b.seqs_that_fit} seqs"),
                M.Row("rollout", "  KV cache requested", b.kv_needed, 0,
                      f"{rc.max_concurrent_sequences} seqs x {seq_tokens} tokens")]
        asleep = 0.0 if rc.enable_sleep else b.claimed      # sleep level 1: weights to CPU, KV cache dropped
        workers_per_node = max(1, rc.num_workers // max(1, cfg.placement.num_nodes))
        cpu = shape.num_params * M.DTYPE_BYTES[cfg.model.dtype] * workers_per_node if rc.enable_sleep else 0.0
        rows.append(M.Row("rollout", "CPU: slept weights", 0, cpu))
        return rows, b.claimed, asleep, cpu, b
    e = M.DTYPE_BYTES[cfg.model.dtype]
    g = M.hf_generate_bytes(shape, rc.max_concurrent_sequences, rc.max_context_tokens, rc.max_new_tokens, e)
    active = g["weights"] + g["kv"] + g["transient"]
    rows = [M.Row("rollout", "hf weights", g["weights"] if on_gpu else 0, 0 if on_gpu else g["weights"]),
            M.Row("rollout", "hf KV cache", g["kv"] if on_gpu else 0, 0 if on_gpu else g["kv"],
                  f"{rc.max_concurrent_sequences} seqs x {rc.max_context_tokens + rc.max_new_tokens} tokens"),
            M.Row("rollout", "hf generate transient", g["transient"] if on_gpu else 0, 0 if on_gpu else g["transient"])]
    workers = max(1, rc.num_workers)
    if not on_gpu:
        return rows, 0.0, 0.0, active * workers, None
    per_gpu = max(1, round(1 / rc.gpus_per_worker)) if rc.gpus_per_worker < 1 else 1   # workers sharing one GPU
    return rows, active * per_gpu, g["weights"] * per_gpu, 0.0, None


def _gpu_counts(cfg) -> tuple[int, int, int, int]:
    """GPUs of (learner, rollout, evaluator) and the total the placement needs."""
    lc, rc, ec = cfg.learner, cfg.rollout, cfg.evaluator
    colocated = cfg.placement.mode == "colocated"

    def gpus(count: int, share: float) -> int:
        if share <= 0:
            return 0
        if colocated and share < 1:     # colocated: actor i of each role is pinned to GPU i (runtime/trainer.py)
            return count
        return math.ceil(count * share)

    learner = gpus(lc.num_ranks, lc.gpus_per_rank)
    rollout = gpus(rc.num_workers, rc.gpus_per_worker)
    evaluator = gpus(ec.num_runners, ec.gpus_per_runner)
    total = max(learner, rollout, evaluator) if cfg.placement.mode == "colocated" else learner + rollout + evaluator
    return learner, rollout, evaluator, total


def build_plan(cfg, shape: ModelShape) -> Plan:
    """Memory table, phases and problems of `cfg` (see the module docstring)."""
    pc = cfg.placement
    n_learn, n_roll, n_eval, needed = _gpu_counts(cfg)
    notes = []
    gpus_per_node = pc.gpus_per_node
    if needed and not gpus_per_node:
        gpus_per_node = needed
        notes.append(f"placement.gpus_per_node is 0: assumed one node with {needed} GPUs of "
                     f"{pc.gpu_memory_gib:g} GiB (set placement.* to check your cluster)")
    gpu_bytes = pc.gpu_memory_gib * GIB if needed else 0.0
    ctx = pc.cuda_context_gib * GIB
    l_rows, l_res, l_peak, l_cpu = _learner_rows(cfg, shape, n_learn > 0)
    r_rows, r_active, r_asleep, r_cpu, vb = _rollout_rows(cfg, shape, gpu_bytes, n_roll > 0)
    headroom = pc.evaluator_headroom_gib * GIB if n_eval else 0.0
    rows = l_rows + r_rows + [M.Row("evaluator", "GPU headroom for kernels", headroom),
                              M.Row("all", "CUDA context per process", ctx if needed else 0)]
    phases = []
    if needed:
        if pc.mode == "colocated":
            lr = l_res if n_learn else 0.0
            procs = (n_learn > 0) + (n_roll > 0) + (n_eval > 0)
            phases = [M.Phase("rollout", r_active + lr + procs * ctx),
                      M.Phase("train", (l_res + l_peak if n_learn else 0.0) + r_asleep + procs * ctx),
                      M.Phase("evaluate", headroom + lr + r_asleep + procs * ctx)]
        else:
            if n_learn:
                phases.append(M.Phase("learner GPUs", l_res + l_peak + ctx))
            if n_roll:
                phases.append(M.Phase("rollout GPUs", r_active + ctx))
            if n_eval:
                phases.append(M.Phase("evaluator GPUs", headroom + ctx))
    eval_procs = cfg.evaluator.num_compile_workers + (cfg.evaluator.num_runners if not n_eval else 0)
    cpu_need = (l_cpu + r_cpu) / max(1, pc.num_nodes) + eval_procs * M.EVAL_PROCESS_CPU_BYTES + M.RAY_NODE_CPU_BYTES
    rows.append(M.Row("evaluator", "CPU: compile workers / CPU runners", 0, eval_procs * M.EVAL_PROCESS_CPU_BYTES))
    plan = Plan(rows, phases, gpu_bytes, cpu_need, pc.cpu_memory_gib * GIB, needed, pc.num_nodes * gpus_per_node,
                notes=notes, vllm=vb)
    plan.problems = _problems(cfg, plan)
    return plan


def _problems(cfg, plan: Plan) -> list:
    out = []
    if plan.gpus_needed > plan.gpus_available:
        out.append(f"needs {plan.gpus_needed} GPUs ({cfg.placement.mode}), the cluster has {plan.gpus_available}")
    for ph in plan.phases:
        if ph.gpu_bytes > plan.gpu_capacity:
            out.append(f"{ph.name}: {ph.gpu_bytes / GIB:.1f} GiB per GPU > {plan.gpu_capacity / GIB:.1f} GiB "
                       f"(short by {(ph.gpu_bytes - plan.gpu_capacity) / GIB:.1f} GiB)")
    if plan.vllm is not None and plan.vllm.kv_short > 0:
        out.append(f"vLLM KV cache: {cfg.rollout.max_concurrent_sequences} sequences need "
                   f"{plan.vllm.kv_needed / GIB:.1f} GiB, {plan.vllm.kv_available / GIB:.1f} GiB is left "
                   f"(holds {plan.vllm.seqs_that_fit} full-length sequences)")
    if plan.cpu_need > plan.cpu_capacity:
        out.append(f"CPU memory: {plan.cpu_need / GIB:.1f} GiB per node > {plan.cpu_capacity / GIB:.1f} GiB "
                   f"(short by {(plan.cpu_need - plan.cpu_capacity) / GIB:.1f} GiB)")
    return out


# ------------------------------------------------------------------------------------------------ change search
@dataclass(frozen=True)
class Change:
    """One config change: (dotted key, new value) pairs that go together and a cost (rough relative slowdown)."""
    items: tuple
    cost: float

    @property
    def key(self) -> str:
        return self.items[0][0]

    def overrides(self) -> list:
        return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in self.items]


def _one(key: str, value, cost: float) -> Change:
    return Change(((key, value),), cost)


def _apply(cfg, changes) -> object:
    new = copy.deepcopy(cfg)
    for ch in changes:
        for key, value in ch.items:
            sec, name = key.split(".")
            setattr(getattr(new, sec), name, value)
    return new


def candidate_changes(cfg) -> list:
    """Changes worth trying from `cfg`, each with its cost (cheapest first after sorting)."""
    lc, rc = cfg.learner, cfg.rollout
    out = []
    mb = lc.micro_batch_samples
    while mb > 1:                                         # smaller micro-batches: more accumulation steps only
        mb //= 2
        out.append(_one("learner.micro_batch_samples", mb, 0.5 * math.log2(lc.micro_batch_samples / mb)))
    if not lc.gradient_checkpointing:
        out.append(_one("learner.gradient_checkpointing", True, 1.5))     # ~30% more learner compute
    c = rc.max_concurrent_sequences
    for frac in (0.75, 0.5, 0.25):
        if int(c * frac) >= 1:
            out.append(_one("rollout.max_concurrent_sequences", int(c * frac), 2.0 * (1 - frac) / 0.25))
    if rc.engine == "vllm":
        for u in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            if abs(u - rc.gpu_memory_utilization) > 1e-9:
                out.append(_one("rollout.gpu_memory_utilization", u, 1.0))
    if lc.backend == "deepspeed":
        for s in range(lc.zero_stage + 1, 4):
            out.append(_one("learner.zero_stage", s, 1.0 * (s - lc.zero_stage)))
        if not lc.offload_optimizer:
            out.append(_one("learner.offload_optimizer", True, 5.0))
        if not lc.offload_params and lc.zero_stage == 3:
            out.append(_one("learner.offload_params", True, 8.0))
    if rc.engine == "vllm" and cfg.placement.gpus_per_node:
        tp = rc.tensor_parallel_size * 2
        while tp <= cfg.placement.gpus_per_node:
            # A vLLM worker spans its TP group: keep the rollout GPU count by having fewer, wider workers.
            gpus = rc.num_workers * max(rc.gpus_per_worker, 1)
            out.append(Change((("rollout.tensor_parallel_size", tp), ("rollout.gpus_per_worker", float(tp)),
                               ("rollout.num_workers", max(1, int(gpus // tp)))),
                              2.0 * math.log2(tp / rc.tensor_parallel_size)))
            tp *= 2
    return sorted(out, key=lambda ch: ch.cost)


def cheapest_change(cfg, shape: ModelShape, plan_fn: Callable = build_plan, max_changes: int = 2):
    """(changes, plan) of the cheapest combination of up to `max_changes` candidate changes (different keys) that
    makes `cfg` fit, or (None, None). Cost ties go to the combination listed first."""
    cands = candidate_changes(cfg)
    best = None
    for k in range(1, max_changes + 1):
        for combo in itertools.combinations(cands, k):
            if len({ch.key for ch in combo}) < k:
                continue
            cost = sum(ch.cost for ch in combo)
            if best is not None and cost >= best[0]:
                continue
            if cfg.learner.zero_stage < 3 and any(ch.key == "learner.offload_params" for ch in combo):
                continue
            plan = plan_fn(_apply(cfg, combo), shape)
            if plan.fits:
                best = (cost, combo, plan)
        if best is not None:
            break
    return (list(best[1]), best[2]) if best else (None, None)
