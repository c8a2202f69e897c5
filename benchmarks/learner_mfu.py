"""Learner throughput, MFU and peak GPU memory of a 0.5B Qwen2-shaped model at 4k tokens per sequence, one GPU.

Cases (each in its own subprocess, so that peak memory and an OOM stay per case):
    ds_z3            DeepSpeed ZeRO-3, bf16, world of 1 (env rendezvous, no Ray), the learner's default settings
    ds_z3_gc         same + gradient checkpointing
    ds_z3_offload    same as ds_z3 + optimizer states offloaded to CPU (DeepSpeedCPUAdam)
    torch            torch backend: fp32 master weights, bf16 autocast, torch AdamW
    torch_gc         same + gradient checkpointing
  ZeRO settings compared (not in the default list):
    ds_z3_noleaf     hooks on every submodule instead of whole decoder layers
    ds_z3_gather     parameters below 1e5 elements persistent only (the multi-rank default) instead of all
    ds_z3_compile    + torch.compile of each decoder layer (experimental)
    torch_compile    torch backend + torch.compile of each decoder layer
    ds_z2            ZeRO stage 2
    check            not a learner: Triton log-prob kernels vs the torch path (relative errors, ms per 4k sequence)

`--micro-batches 4 8` measures each size in turn on the same learner (warm-up step, then timed steps per size).
`--phases` adds synchronized forward / log-prob+loss / backward / optimizer times; `--profile-cases` writes one
torch.profiler step per named case to $OUT/profile_<case>.txt.

The model is a random init of Qwen2Config(hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab
151936, tied embeddings) = Qwen2-0.5B's shape; nothing is downloaded. Each step is one GRPO batch through the real
learner code (learners/): 8 sequences of 256 prompt + 3840 response tokens, one optimizer step.
One warm-up step, then timed steps. tokens/s counts every token of every sequence (prompt tokens go through the
forward too); MFU = 6 * params * tokens/s / peak, with the peak printed (989 TFLOP/s bf16 dense on H100/H200 SXM).
6N ignores attention-score FLOPs (~18% more at 4k with a causal mask for this shape), so this MFU understates
the real one.
torch.cuda.max_memory_allocated is recorded per case (peak over init + steps, and over the timed steps only).

    python benchmarks/learner_mfu.py                     # default cases at micro-batch 1, < 5 minutes on one H100
    python benchmarks/learner_mfu.py --cases ds_z3 torch --steps 2 --micro-batches 4 8
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

CASES = {
    "ds_z3": dict(backend="deepspeed", gc=False, offload=False),
    "ds_z3_gc": dict(backend="deepspeed", gc=True, offload=False),
    "ds_z3_offload": dict(backend="deepspeed", gc=False, offload=True),
    "torch": dict(backend="torch", gc=False, offload=False),
    "torch_gc": dict(backend="torch", gc=True, offload=False),
    # ZeRO settings compared on one GPU (the product default is ds_z3)
    "ds_z3_noleaf": dict(backend="deepspeed", gc=False, offload=False, leaf_layers=False),
    "ds_z3_gather": dict(backend="deepspeed", gc=False, offload=False,
                         zero_overrides={"stage3_param_persistence_threshold": 10 ** 5}),
    "ds_z3_compile": dict(backend="deepspeed", gc=False, offload=False, compile_layers=True),
    "torch_compile": dict(backend="torch", gc=False, offload=False, compile_layers=True),
    "ds_z2": dict(backend="deepspeed", gc=False, offload=False, zero_stage=2),
}
DEFAULT_CASES = ["ds_z3", "ds_z3_gc", "ds_z3_offload", "torch", "torch_gc"]
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
            "learner.gradient_checkpointing": case["gc"], "learner.micro_batch_samples": micro_batch, "learner.lr": 1e-6,
            "learner.warmup_ratio": 0.0, "algo.gradient_steps_per_batch": 1, "algo.tasks_per_step": 1,
            "algo.trajectories_per_task": args.samples, "algo.max_turns": 1,
            "rollout.max_new_tokens": args.seq_tokens - args.prompt_tokens, "run.total_steps": args.steps + 1,
            "model.dtype": "bfloat16"}
    return load_config(None, [f"{k}={v}" for k, v in over.items()])


def _samples(args, seed: int):
    import torch
    from rlcore.types import TrainSample
    g = torch.Generator().manual_seed(seed)
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
    res.update(status="ok", step_s=sum(times) / len(times), tokens_per_s=tps, mfu=6 * res["params"] * tps /
               res["peak_flops"], max_memory_allocated_gib_steps=torch.cuda.max_memory_allocated() / 2 ** 30)


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


def run_case(name: str, args) -> dict:
    """One case in this process; returns {"rows": one result dict per micro-batch size, "profile": text}."""
    import torch
    from transformers import Qwen2Config
    if name == "check":
        return {"rows": [{"case": "check", "status": "ok", **_check_logprobs()}], "profile": ""}
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
    base.update(params=params, init_s=time.perf_counter() - t_init,
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


def _child(name: str, args) -> list[dict]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--steps", str(args.steps),
           "--samples", str(args.samples), "--seq-tokens", str(args.seq_tokens),
           "--prompt-tokens", str(args.prompt_tokens), "--micro-batches", *map(str, args.micro_batches),
           "--profile-cases", *args.profile_cases] + (["--phases"] if args.phases else [])
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    fail = {"case": name, **CASES.get(name, {})}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.case_timeout_s)
    except subprocess.TimeoutExpired as e:
        tail = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        print(tail[-3000:], flush=True)
        return [{**fail, "status": "timeout", "error": f"over {args.case_timeout_s}s"}]
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            out = json.loads(line[len(MARK):])
            for r in out["rows"]:
                r["wall_s"] = time.perf_counter() - t0
            if out["profile"]:
                with open(os.path.join(args.out_dir, f"profile_{name}.txt"), "w") as fh:
                    fh.write(out["profile"])
                print(out["profile"].splitlines()[0], flush=True)
            return out["rows"]
        print(line, flush=True)
    return [{**fail, "status": "error", "returncode": proc.returncode, "error": (proc.stderr or proc.stdout)[-3000:]}]


def _fmt(r: dict, key: str, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    return format(r[key] * scale, spec) + suffix if r.get(key) is not None else "-"


def _table(results: list[dict]) -> str:
    lines = [f"{'case':<15}{'mb':>3} {'status':<8}{'tokens/s':>10}{'step s':>8}{'MFU':>7}{'peak GiB':>10}"
             f"{'params':>9}", "-" * 71]
    for r in results:
        if r["case"] == "check":
            continue
        lines.append(f"{r['case']:<15}{r.get('micro_batch', '-'):>3} {r.get('status', '?'):<8}"
                     f"{_fmt(r, 'tokens_per_s', '.0f'):>10}"
                     f"{_fmt(r, 'step_s', '.2f'):>8}{_fmt(r, 'mfu', '.1f', 100, '%'):>7}"
                     f"{_fmt(r, 'max_memory_allocated_gib', '.1f'):>10}{_fmt(r, 'params', '.0f', 1e-6, 'M'):>9}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES) + ["check"],
                    help="'check' compares the Triton log-prob kernels with the torch path (errors, ms)")
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per case (after one warm-up)")
    ap.add_argument("--samples", type=int, default=8, help="sequences per step")
    ap.add_argument("--seq-tokens", type=int, default=4096)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--micro-batches", nargs="+", type=int, default=[1],
                    help="micro-batch sizes (sequences per forward) measured one after another on the same learner")
    ap.add_argument("--phases", action="store_true", help="also time forward / loss / backward / optimizer")
    ap.add_argument("--profile-cases", nargs="*", default=[], help="cases to run one torch.profiler step for "
                    "(written to $OUT/profile_<case>.txt)")
    ap.add_argument("--case-timeout-s", type=float, default=150.0)
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
    name = torch.cuda.get_device_name(0)
    print(f"GPU {name}; MFU peak {peak_flops(name) / 1e12:.0f} TFLOP/s bf16 dense; "
          f"{args.samples} x {args.seq_tokens} tokens per step", flush=True)
    results = []
    t0 = time.perf_counter()
    for c in args.cases:
        print(f"== {c}", flush=True)
        rows = _child(c, args)
        results.extend(rows)
        for r in rows:
            print(f"== {c} mb{r.get('micro_batch', '-')}: {r.get('status')} "
                  f"{r.get('error', '')[:300] if r.get('status') != 'ok' else ''}", flush=True)
            if c == "check":
                print(json.dumps(r, indent=1), flush=True)
        with open(os.path.join(out_dir, "learner_mfu.json"), "w") as fh:      # partial results survive a kill
            json.dump({"gpu": name, "peak_flops": peak_flops(name), "results": results}, fh, indent=1)
    print(f"\nlearner MFU ({time.perf_counter() - t0:.0f}s total; peak {peak_flops(name) / 1e12:.0f} TFLOP/s):")
    print(_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
