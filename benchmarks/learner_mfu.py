"""Learner throughput, MFU and peak GPU memory of a 0.5B Qwen2-shaped model at 4k tokens per sequence, on 1..N GPUs.

Cases (each (case, ranks) runs as its own processes, so that peak memory, an OOM or a hang stay per case):
    ds_z3            DeepSpeed ZeRO-3, bf16, the learner's default settings, fused kernels off (fused_kernels=none)
    ds_z3_liger      same + liger-kernel's Triton RMSNorm, SwiGLU and rotary (learner.fused_kernels=liger)
    ds_z3_gc         ds_z3 + gradient checkpointing
    ds_z3_gc_liger   ds_z3_gc + liger kernels
    ds_z3_offload    ds_z3 + optimizer states offloaded to CPU (DeepSpeedCPUAdam)
    torch            torch backend: fp32 master weights, bf16 autocast, torch AdamW (one rank only)
    torch_gc         same + gradient checkpointing
    torch_liger      torch + liger kernels
  ZeRO settings compared (not in the default list):
    ds_z3_noleaf     hooks on every submodule instead of whole decoder layers
    ds_z3_gather     parameters below 1e5 elements persistent only (the multi-rank default) instead of all
    ds_z3_compile    + torch.compile of each decoder layer (experimental)
    torch_compile    torch backend + torch.compile of each decoder layer
    ds_z2            ZeRO stage 2
    ds_z3_foreach, ds_z3_liger_foreach
                     torch's multi-tensor AdamW instead of the fused one (learner.fused_optimizer=false)
  Checks (one GPU, not learners):
    check            Triton log-prob kernels vs the torch path (relative errors, ms per 4k sequence)
    liger_check      liger-patched vs plain Qwen2 (4 layers of the 0.5B shape, one 4k sequence): logits and gradient
                     relative errors, ms per forward + backward

`--ranks 1 2` runs every DeepSpeed case with 1 and with 2 ranks: N processes, rank r on the r-th visible GPU which it
sees as cuda:0 (CUDA_VISIBLE_DEVICES, as Ray gives each learner actor its GPU), env rendezvous RANK / WORLD_SIZE /
LOCAL_RANK=0 / MASTER_ADDR / MASTER_PORT, the same learner code; each rank trains its own `--samples` sequences per
step (weak scaling). Reported: tokens/s of all ranks (all tokens / the slowest rank's step time), per GPU, MFU per
GPU, and scaling = tokens/s at N ranks / at 1 rank. At one rank ZeRO-3 keeps every parameter whole (nothing to
partition), at several it partitions them and gathers each layer per pass, as the learner does.
Each (case, ranks) runs in its own process groups under `--case-timeout-s`; a timeout or a failed rank ends all its
ranks, is recorded with the log tail, and the next one runs. Rank logs: $OUT/logs/<case>_ranks<N>_rank<r>.log.

`--micro-batches 4 8` measures each size in turn on the same learner (warm-up step, then timed steps per size).
`--phases` adds synchronized forward / log-prob+loss / backward / optimizer times; `--profile-cases` writes one
torch.profiler step per named case to $OUT/profile_<case>_ranks<N>.txt.

The model is a random init of Qwen2Config(hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab
151936, tied embeddings) = Qwen2-0.5B's shape; nothing is downloaded. Each step is one GRPO batch through the real
learner code (learners/): 8 sequences of 256 prompt + 3840 response tokens per rank, one optimizer step.
One warm-up step, then timed steps. tokens/s counts every token of every sequence (prompt tokens go through the
forward too); MFU = 6 * params * tokens/s / peak, with the peak printed (989 TFLOP/s bf16 dense on H100/H200 SXM).
6N ignores attention-score FLOPs (~18% more at 4k with a causal mask for this shape), so this MFU understates
the real one.
torch.cuda.max_memory_allocated is recorded per case (peak over init + steps, and over the timed steps only).
liger-kernel comes from the gpu extra, or from .benchextra/site (benchmarks/build_extra.sh) on PYTHONPATH.

    python benchmarks/learner_mfu.py                     # default cases, one rank, micro-batch 1
    python benchmarks/learner_mfu.py --cases ds_z3 ds_z3_liger --ranks 1 2 --steps 2 --micro-batches 8
    python benchmarks/learner_mfu.py --cases liger_check check
Writes $OUT/learner_mfu.json (default ./bench_out) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from runtime.procs import end_process_group  # noqa: E402

CASES = {
    "ds_z3": dict(backend="deepspeed", gc=False, offload=False),
    "ds_z3_liger": dict(backend="deepspeed", gc=False, offload=False, fused="liger"),
    "ds_z3_gc": dict(backend="deepspeed", gc=True, offload=False),
    "ds_z3_gc_liger": dict(backend="deepspeed", gc=True, offload=False, fused="liger"),
    "ds_z3_offload": dict(backend="deepspeed", gc=False, offload=True),
    "torch": dict(backend="torch", gc=False, offload=False),
    "torch_gc": dict(backend="torch", gc=True, offload=False),
    "torch_liger": dict(backend="torch", gc=False, offload=False, fused="liger"),
    # ZeRO settings compared on one GPU (the product default is ds_z3)
    "ds_z3_noleaf": dict(backend="deepspeed", gc=False, offload=False, leaf_layers=False),
    "ds_z3_gather": dict(backend="deepspeed", gc=False, offload=False,
                         zero_overrides={"stage3_param_persistence_threshold": 10 ** 5}),
    "ds_z3_compile": dict(backend="deepspeed", gc=False, offload=False, compile_layers=True),
    "torch_compile": dict(backend="torch", gc=False, offload=False, compile_layers=True),
    "ds_z2": dict(backend="deepspeed", gc=False, offload=False, zero_stage=2),
    # torch's multi-tensor AdamW instead of the fused one (learner.fused_optimizer=false, the learner's default);
    # every other case here runs the fused one
    "ds_z3_foreach": dict(backend="deepspeed", gc=False, offload=False, fused_optimizer=False),
    "ds_z3_liger_foreach": dict(backend="deepspeed", gc=False, offload=False, fused="liger", fused_optimizer=False),
}
CHECKS = ("check", "liger_check")         # not learners: kernel checks, one process, one GPU
DEFAULT_CASES = ["ds_z3", "ds_z3_liger", "ds_z3_gc", "ds_z3_offload", "torch", "torch_gc"]
QWEN2_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768)
PEAKS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12}
MARK = "LEARNER_MFU_RESULT "


def peak_flops(name: str) -> float:
    for key, val in PEAKS.items():
        if key in name:
            return val
    return 989e12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _config(case: dict, args, micro_batch: int):
    from runtime.config import load_config
    over = {"learner.backend": case["backend"], "learner.gpus_per_rank": 1, "learner.precision": "bf16",
            "learner.zero_stage": case.get("zero_stage", 3), "learner.offload_optimizer": case["offload"],
            "learner.gradient_checkpointing": case["gc"], "learner.micro_batch_samples": micro_batch,
            "learner.lr": 1e-6,
            "learner.warmup_ratio": 0.0, "algo.gradient_steps_per_batch": 1, "algo.tasks_per_step": 1,
            "algo.trajectories_per_task": args.samples, "algo.max_turns": 1,
            "rollout.max_new_tokens": args.seq_tokens - args.prompt_tokens, "run.total_steps": args.steps + 1,
            "model.dtype": "bfloat16", "learner.fused_kernels": case.get("fused", "none"),
            "learner.fused_optimizer": case.get("fused_optimizer", True),
            "learner.num_ranks": int(os.environ.get("WORLD_SIZE", "1"))}
    return load_config(None, [f"{k}={v}" for k, v in over.items()])


def _samples(args, seed: int):
    import torch
    from rlcore.types import TrainSample
    g = torch.Generator().manual_seed(seed + 1000 * int(os.environ.get("RANK", "0")))   # each rank its own data
    resp = args.seq_tokens - args.prompt_tokens
    out = []
    for i in range(args.samples):
        ids = torch.randint(3, QWEN2_05B["vocab_size"], (args.seq_tokens,), generator=g).tolist()
        lp = (-torch.rand(resp, generator=g) * 12).tolist()       # ratios far from 1 exercise the clip branch too
        out.append(TrainSample(ids[:args.prompt_tokens], ids[args.prompt_tokens:], lp, (-1.0) ** i))
    return out


def _build(name: str, cfg, qcfg):
    import torch
    from transformers import AutoModelForCausalLM
    case = CASES[name]
    if case["backend"] == "deepspeed":
        if "RANK" not in os.environ:                          # run by hand: a world of one
            os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                               "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
        from learners.deepspeed_learner import DeepSpeedLearner
        extra = {k: case[k] for k in ("zero_overrides", "leaf_layers", "compile_layers") if k in case}
        learner = DeepSpeedLearner(cfg, model_factory=lambda: AutoModelForCausalLM.from_config(
            qcfg, dtype=torch.bfloat16, attn_implementation="sdpa"), pad_id=0, **extra)
        params = sum(getattr(p, "ds_numel", p.numel()) for p in learner.engine.module.parameters())
    else:
        from learners.torch_learner import TorchLearner
        model = AutoModelForCausalLM.from_config(qcfg, dtype=torch.float32, attn_implementation="sdpa")
        learner = TorchLearner(cfg, device="cuda", model=model, pad_id=0,
                               compile_layers=case.get("compile_layers", False))
        params = sum(p.numel() for p in learner.model.parameters())
    return learner, int(params)


def _timed_steps(learner, name: str, mb: int, args, res: dict) -> None:
    import torch
    learner.lcfg.micro_batch_samples = mb                    # the loop reads it per batch
    learner.train_batch(_samples(args, 0), 1)                # warm-up at this micro-batch size
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times, tokens = [], 0
    for s in range(args.steps):
        batch = _samples(args, s + 1)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        m = learner.train_batch(batch, 1)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        tokens += sum(len(x.prompt_ids) + len(x.response_ids) for x in batch)
        print(f"[{name} mb{mb}] step {s}: {times[-1]:.2f}s loss {m['loss']:.4f} grad_norm {m['grad_norm']:.3f} "
              f"entropy {m['entropy']:.3f}", flush=True)
    tps = tokens / sum(times)
    res.update(status="ok", step_s=sum(times) / len(times), tokens_per_step=tokens / len(times),
               tokens_per_s=tps, mfu=6 * res["params"] * tps / res["peak_flops"],
               max_memory_allocated_gib_steps=torch.cuda.max_memory_allocated() / 2 ** 30)


def _phases(learner, args) -> dict:
    """Milliseconds per step in forward / log-prob+loss / backward / optimizer (synchronized around each phase, so
    the sum is a little above an unsynchronized step)."""
    import torch
    acc = {"forward": 0.0, "loss": 0.0, "backward": 0.0, "optimizer": 0.0}

    def timed(fn, key, sub=None):
        def wrapper(*a, **kw):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) * 1e3
            acc[key] += dt
            if sub:
                acc[sub] -= dt
            return out
        return wrapper

    saved = {k: getattr(learner, k) for k in ("_logits", "micro_batch_loss", "_backward", "_optimizer_step")}
    learner._logits = timed(saved["_logits"], "forward", sub="loss")
    learner.micro_batch_loss = timed(saved["micro_batch_loss"], "loss")
    learner._backward = timed(saved["_backward"], "backward")
    learner._optimizer_step = timed(saved["_optimizer_step"], "optimizer")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    learner.train_batch(_samples(args, 99), 1)
    torch.cuda.synchronize()
    total = (time.perf_counter() - t0) * 1e3
    for k, fn in saved.items():
        setattr(learner, k, fn)
    acc["other"] = total - sum(acc.values())
    acc["total"] = total
    return {k: round(v, 1) for k, v in acc.items()}


def _profile(learner, name: str, args) -> str:
    """torch.profiler over one step: top kernels by GPU time, top ops by CPU time, GPU busy share."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        learner.train_batch(_samples(args, 98), 1)
        torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) * 1e3
    ka = prof.key_averages()
    dev = lambda e: getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)  # noqa: E731
    busy_ms = sum(dev(e) for e in ka) / 1e3
    out = [f"== {name} mb{learner.lcfg.micro_batch_samples}: wall {wall_ms:.0f} ms (profiled), GPU kernels "
           f"{busy_ms:.0f} ms ({100 * busy_ms / wall_ms:.0f}% busy)"]
    for key, n in (("self_cuda_time_total", 45), ("self_cpu_time_total", 25)):
        try:
            out.append(ka.table(sort_by=key, row_limit=n, max_name_column_width=70))
        except Exception as e:                                 # older/newer profiler column names
            out.append(f"(table by {key} failed: {e})")
    return "\n".join(out)


def _check_logprobs() -> dict:
    """Triton kernels vs the torch path on random bf16 logits: log-probs, entropies and gradients (rel. errors)."""
    import torch
    from learners import logprobs as L
    g = torch.Generator(device="cuda").manual_seed(0)
    out = {}
    for (B, K, V, T) in ((2, 300, 151936, 1.0), (3, 257, 5003, 0.7)):
        logits = (torch.randn(B, K + 1, V, device="cuda", generator=g) * 3).bfloat16()
        tgt = torch.randint(0, V, (B, K), device="cuda", generator=g)
        w = torch.randn(B, K, device="cuda", generator=g)
        res = {}
        for tri in (True, False):
            x = logits.clone().requires_grad_(True)
            logp, ent = L._FusedLogprobs.apply(x, tgt, T, tri)
            (logp * w).sum().backward()
            res[tri] = (logp, ent, x.grad.float())
        ref = torch.log_softmax(logits[:, :-1].double() / T, -1)
        ref_lp = ref.gather(-1, tgt[..., None]).squeeze(-1)
        rel = lambda a, b: float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))  # noqa: E731
        out[f"B{B}K{K}V{V}"] = {"logp_vs_fp64": rel(res[True][0], ref_lp),
                                "ent_vs_fp64": rel(res[True][1], -(ref.exp() * ref).sum(-1)),
                                "logp_vs_torch": rel(res[True][0], res[False][0]),
                                "grad_vs_torch": rel(res[True][2], res[False][2]),
                                "last_row_grad_zero": bool((res[True][2][:, -1] == 0).all())}
    # speed of one 4k-token sequence: forward + backward
    x = (torch.randn(1, 4097, 151936, device="cuda", generator=g) * 3).bfloat16().requires_grad_(True)
    tgt = torch.randint(0, 151936, (1, 4096), device="cuda", generator=g)
    for tri in (True, False):
        for i in range(4):
            x.grad = None
            if i == 1:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
            L._FusedLogprobs.apply(x, tgt, 1.0, tri)[0].sum().backward()
        torch.cuda.synchronize()
        out[f"ms_fwd_bwd_4k_{'triton' if tri else 'torch'}"] = (time.perf_counter() - t0) / 3 * 1e3
    return out


def _check_liger() -> dict:
    """liger's RMSNorm / SwiGLU / rotary vs the plain transformers Qwen2 (bf16, the 0.5B shape cut to 4 layers, one
    4k-token sequence): relative errors of logits and gradients, and ms per forward + backward of each."""
    import copy
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config
    from learners.fused_kernels import apply_fused_kernels
    torch.manual_seed(0)
    plain = AutoModelForCausalLM.from_config(Qwen2Config(**{**QWEN2_05B, "num_hidden_layers": 4}),
                                             dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
    fused = copy.deepcopy(plain)
    ids = torch.randint(3, QWEN2_05B["vocab_size"], (1, 4096), device="cuda")

    def run(model):
        ms = []
        for _ in range(4):
            model.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            logits = model(input_ids=ids, use_cache=False).logits                    # [1, T, V] bf16
            logits.float().square().mean().backward()
            torch.cuda.synchronize()
            ms.append((time.perf_counter() - t0) * 1e3)
        return logits.detach().float(), [p.grad.float() for p in model.parameters()], sum(ms[1:]) / 3

    ref = run(plain)                           # first: liger replaces the family's rotary function for the process
    applied = apply_fused_kernels(fused, "liger", "cuda")
    got = run(fused)
    rel = lambda a, b: float((a - b).norm() / b.norm().clamp(min=1e-30))  # noqa: E731
    grad_rel = [rel(a, b) for a, b in zip(got[1], ref[1])]
    return {"applied": applied, "logits_rel": rel(got[0], ref[0]), "grad_rel_max": max(grad_rel),
            "grad_rel_mean": sum(grad_rel) / len(grad_rel), "ms_fwd_bwd_plain": ref[2], "ms_fwd_bwd_liger": got[2]}


def run_case(name: str, args) -> dict:
    """One case in this process; returns {"rows": one result dict per micro-batch size, "profile": text}."""
    import torch
    from transformers import Qwen2Config
    if name == "check":
        return {"rows": [{"case": "check", "status": "ok", **_check_logprobs()}], "profile": ""}
    if name == "liger_check":
        return {"rows": [{"case": "liger_check", "status": "ok", **_check_liger()}], "profile": ""}
    case = CASES[name]
    mbs = args.micro_batches
    cfg = _config(case, args, mbs[0])
    gpu = torch.cuda.get_device_name(0)
    base = {"case": name, **case, "seq_tokens": args.seq_tokens, "samples_per_step": args.samples, "gpu": gpu,
            "peak_flops": peak_flops(gpu)}
    rows, text = [], ""
    t_init = time.perf_counter()
    try:
        learner, params = _build(name, cfg, Qwen2Config(**QWEN2_05B))
    except torch.cuda.OutOfMemoryError as e:
        return {"rows": [{**base, "status": "oom", "error": str(e).splitlines()[0]}], "profile": ""}
    base.update(params=params, init_s=time.perf_counter() - t_init, rank=int(os.environ.get("RANK", "0")),
                fused_kernels=learner.fused_kernels,
                max_memory_allocated_gib_init=torch.cuda.max_memory_allocated() / 2 ** 30)
    for mb in mbs:
        res = {**base, "micro_batch": mb}
        try:
            _timed_steps(learner, name, mb, args, res)
            if args.phases:
                res["phases_ms"] = _phases(learner, args)
                print(f"[{name} mb{mb}] phases (ms per step): {res['phases_ms']}", flush=True)
        except torch.cuda.OutOfMemoryError as e:
            res.update(status="oom", error=str(e).splitlines()[0])
        res["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        rows.append(res)
        torch.cuda.empty_cache()
    if name in args.profile_cases and rows[-1].get("status") == "ok":
        text = _profile(learner, name, args)
    return {"rows": rows, "profile": text}


def _rank_env(rank: int, world: int, gpu: str, port: int) -> dict:
    """Environment of one rank: env rendezvous as actors/learner.py sets it (each rank sees its one GPU as cuda:0)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0",
               CUDA_VISIBLE_DEVICES=gpu)
    for k, v in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
        env.setdefault(k, v)                                  # never NVLink multicast
    return env


def _wait(procs: list, log0: str, timeout_s: float) -> str:
    """Wait for every rank, echoing rank 0's log; '' when all exited 0, else why not. A failed rank leaves the others
    waiting inside a collective, so a failure ends every rank after a short grace."""
    t0, pos, failed_at = time.perf_counter(), 0, None
    while True:
        with open(log0, errors="replace") as fh:
            fh.seek(pos)
            text = fh.read()
            pos = fh.tell()
        for line in text.splitlines():
            if not line.startswith(MARK):
                print(f"  | {line[:300]}", flush=True)
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            bad = [r for r, c in enumerate(codes) if c != 0]
            return f"rank(s) {bad} exited with {[codes[r] for r in bad]}" if bad else ""
        if failed_at is None and any(c not in (None, 0) for c in codes):
            failed_at = time.perf_counter()
        why = ""
        if time.perf_counter() - t0 > timeout_s:
            why = f"timeout: over {timeout_s:.0f}s"
        elif failed_at is not None and time.perf_counter() - failed_at > 20:
            why = f"rank(s) {[r for r, c in enumerate(codes) if c not in (None, 0)]} failed; ended the others"
        if why:
            for p in procs:
                end_process_group(p)
            return why
        time.sleep(1.0)


def _child_cmd(name: str, args) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--child", name, "--steps", str(args.steps),
            "--samples", str(args.samples), "--seq-tokens", str(args.seq_tokens),
            "--prompt-tokens", str(args.prompt_tokens), "--micro-batches", *map(str, args.micro_batches),
            "--profile-cases", *args.profile_cases] + (["--phases"] if args.phases else [])


def _launch(name: str, world: int, args, gpus: list[str]) -> list[dict]:
    """Case `name` as `world` processes, rank r on GPU gpus[r], each in its own process group, all within
    args.case_timeout_s; logs in $OUT/logs/. Returns one row per micro-batch size (ranks merged) or one failure row."""
    fail = {"case": name, "ranks": world, **CASES.get(name, {})}
    if world > 1 and (name in CHECKS or CASES[name]["backend"] != "deepspeed"):
        return [{**fail, "status": "skipped", "error": "several ranks need the deepspeed backend"}]
    if world > len(gpus):
        return [{**fail, "status": "skipped", "error": f"needs {world} GPUs, {len(gpus)} visible"}]
    log_dir = os.path.join(args.out_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    port, t0 = _free_port(), time.perf_counter()
    paths = [os.path.join(log_dir, f"{name}_ranks{world}_rank{r}.log") for r in range(world)]
    procs = []
    for r, path in enumerate(paths):
        with open(path, "w") as fh:                              # the child keeps its own copy of the descriptor
            procs.append(subprocess.Popen(_child_cmd(name, args), cwd=ROOT, env=_rank_env(r, world, gpus[r], port),
                                          stdout=fh, stderr=subprocess.STDOUT, start_new_session=True))
    why = _wait(procs, paths[0], args.case_timeout_s)
    for p in procs:                                              # leftovers of a rank that exited (none expected)
        end_process_group(p)
    per_rank = []
    for r, path in enumerate(paths):
        with open(path, errors="replace") as fh:
            text = fh.read()
        found = [json.loads(x[len(MARK):]) for x in text.splitlines() if x.startswith(MARK)]
        if not found:
            status = "timeout" if why.startswith("timeout") else "error"
            return [{**fail, "status": status, "error": f"{why or 'no result'}; rank {r} log tail:\n{text[-3000:]}",
                     "wall_s": time.perf_counter() - t0}]
        per_rank.append(found[0])
    if per_rank[0]["profile"]:
        with open(os.path.join(args.out_dir, f"profile_{name}_ranks{world}.txt"), "w") as fh:
            fh.write(per_rank[0]["profile"])
    rows = _merge_ranks([pr["rows"] for pr in per_rank], world)
    for row in rows:
        row["wall_s"] = time.perf_counter() - t0
    return rows


def _merge_ranks(per_rank: list[list[dict]], world: int) -> list[dict]:
    """One row per micro-batch size: tokens/s of all ranks together (tokens of every rank / slowest rank's step
    time), per-GPU tokens/s and MFU, peak memory of the fullest GPU."""
    out = []
    for j, first in enumerate(per_rank[0]):
        rows = [pr[j] for pr in per_rank if j < len(pr)]
        m = {**first, "ranks": world}
        m.pop("rank", None)
        m["max_memory_allocated_gib"] = max(r.get("max_memory_allocated_gib") or 0.0 for r in rows)
        bad = [r for r in rows if r.get("status") != "ok"]
        if "step_s" not in first:                               # a check row
            pass
        elif bad or len(rows) != world:
            m.update(status=bad[0].get("status", "error") if bad else "error",
                     error=bad[0].get("error", "") if bad else "a rank returned fewer rows")
        else:
            step = max(r["step_s"] for r in rows)
            tps = sum(r["tokens_per_step"] for r in rows) / step
            m.update(step_s=step, tokens_per_s=tps, tokens_per_s_per_gpu=tps / world,
                     mfu=6 * m["params"] * tps / world / m["peak_flops"])
        out.append(m)
    return out


def _add_scaling(results: list[dict]) -> None:
    """scaling = tokens/s at N ranks / tokens/s at 1 rank (same case and micro-batch); efficiency = scaling / N."""
    one = {(r["case"], r.get("micro_batch")): r["tokens_per_s"] for r in results
           if r.get("ranks") == 1 and r.get("status") == "ok" and r.get("tokens_per_s")}
    for r in results:
        base = one.get((r["case"], r.get("micro_batch")))
        if base and r.get("status") == "ok" and r.get("tokens_per_s"):
            r["scaling"] = r["tokens_per_s"] / base
            r["scaling_efficiency"] = r["scaling"] / r["ranks"]


def _fmt(r: dict, key: str, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    return format(r[key] * scale, spec) + suffix if r.get(key) is not None else "-"


def _table(results: list[dict]) -> str:
    lines = [f"{'case':<16}{'ranks':>5}{'mb':>3} {'status':<8}{'tokens/s':>10}{'tok/s/GPU':>10}{'step s':>8}"
             f"{'MFU/GPU':>8}{'scaling':>8}{'peak GiB':>9}  fused", "-" * 100]
    for r in results:
        if r["case"] in CHECKS:
            continue
        lines.append(f"{r['case']:<16}{r.get('ranks', 1):>5}{r.get('micro_batch', '-'):>3} {r.get('status', '?'):<8}"
                     f"{_fmt(r, 'tokens_per_s', '.0f'):>10}{_fmt(r, 'tokens_per_s_per_gpu', '.0f'):>10}"
                     f"{_fmt(r, 'step_s', '.2f'):>8}{_fmt(r, 'mfu', '.1f', 100, '%'):>8}"
                     f"{_fmt(r, 'scaling', '.2f', 1, 'x'):>8}{_fmt(r, 'max_memory_allocated_gib', '.1f'):>9}  "
                     f"{str(r.get('fused_kernels', '-'))[:40]}")
    return "\n".join(lines)


def _versions() -> dict:
    from importlib import metadata
    out = {}
    for pkg in ("torch", "transformers", "deepspeed", "liger-kernel", "triton"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES) + list(CHECKS),
                    help="'check': Triton log-prob kernels vs the torch path; 'liger_check': liger vs plain Qwen2")
    ap.add_argument("--ranks", nargs="+", type=int, default=[1],
                    help="data-parallel ranks (one GPU each, env rendezvous); each (case, ranks) runs on its own")
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per case (after one warm-up)")
    ap.add_argument("--samples", type=int, default=8, help="sequences per step and rank")
    ap.add_argument("--seq-tokens", type=int, default=4096)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--micro-batches", nargs="+", type=int, default=[1],
                    help="micro-batch sizes (sequences per forward) measured one after another on the same learner")
    ap.add_argument("--phases", action="store_true", help="also time forward / loss / backward / optimizer")
    ap.add_argument("--profile-cases", nargs="*", default=[], help="cases to run one torch.profiler step for "
                    "(written to $OUT/profile_<case>_ranks<N>.txt, rank 0)")
    ap.add_argument("--case-timeout-s", type=float, default=240.0, help="limit of one (case, ranks) run")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(MARK + json.dumps(run_case(args.child, args)), flush=True)
        return 0
    import torch
    if not torch.cuda.is_available():
        print("learner_mfu needs a CUDA GPU", file=sys.stderr)
        return 2
    out_dir = args.out_dir = os.environ.get("OUT", "bench_out")
    os.makedirs(out_dir, exist_ok=True)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [g.strip() for g in visible.split(",") if g.strip()] if visible else \
        [str(i) for i in range(torch.cuda.device_count())]
    name = torch.cuda.get_device_name(0)
    versions = _versions()
    print(f"GPU {name} x {len(gpus)}; MFU peak {peak_flops(name) / 1e12:.0f} TFLOP/s bf16 dense; {args.samples} x "
          f"{args.seq_tokens} tokens per step and rank; {versions}", flush=True)
    results = []
    t0 = time.perf_counter()
    for c in args.cases:
        for world in ([1] if c in CHECKS else args.ranks):
            print(f"== {c} ranks {world}", flush=True)
            rows = _launch(c, world, args, gpus)
            results.extend(rows)
            _add_scaling(results)
            for r in rows:
                print(f"== {c} ranks {world} mb{r.get('micro_batch', '-')}: {r.get('status')} "
                      f"{r.get('error', '')[-1500:] if r.get('status') != 'ok' else ''}", flush=True)
                if c in CHECKS:
                    print(json.dumps(r, indent=1), flush=True)
            with open(os.path.join(out_dir, "learner_mfu.json"), "w") as fh:     # partial results survive a kill
                json.dump({"gpu": name, "gpus": len(gpus), "peak_flops": peak_flops(name), "versions": versions,
                           "command": " ".join(sys.argv), "results": results}, fh, indent=1)
    print(f"\nlearner MFU ({time.perf_counter() - t0:.0f}s total; peak {peak_flops(name) / 1e12:.0f} TFLOP/s):")
    print(_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
