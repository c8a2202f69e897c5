"""Learner throughput, MFU and peak GPU memory of a 0.5B Qwen2-shaped model at 4k tokens per sequence, one GPU.

Cases (each in its own subprocess, so that peak memory and an OOM stay per case):
    ds_z3            DeepSpeed ZeRO-3, bf16, world of 1 (env rendezvous, no Ray)
    ds_z3_gc         same + gradient checkpointing
    ds_z3_offload    same as ds_z3 + optimizer states offloaded to CPU (DeepSpeedCPUAdam)
    torch            torch backend: fp32 master weights, bf16 autocast, torch AdamW
    torch_gc         same + gradient checkpointing

The model is a random init of Qwen2Config(hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab
151936, tied embeddings) = Qwen2-0.5B's shape; nothing is downloaded. Each step is one GRPO batch through the real
learner code (learners/): 8 sequences of 256 prompt + 3840 response tokens, micro-batches of 1, one optimizer step.
One warm-up step, then timed steps. tokens/s counts every token of every sequence (prompt tokens go through the
forward too); MFU = 6 * params * tokens/s / peak, with the peak printed (989 TFLOP/s bf16 dense on H100/H200 SXM).
6N ignores attention-score FLOPs (~7% more at 4k for this shape), so this MFU slightly understates the real one.
torch.cuda.max_memory_allocated is recorded per case (peak over init + steps, and over the timed steps only).

    python benchmarks/learner_mfu.py                     # all cases, < 5 minutes on one H100
    python benchmarks/learner_mfu.py --cases ds_z3 torch --steps 2
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
}
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


def _config(case: dict, args):
    from runtime.config import load_config
    over = {"learner.backend": case["backend"], "learner.gpus_per_rank": 1, "learner.precision": "bf16",
            "learner.zero_stage": 3, "learner.offload_optimizer": case["offload"],
            "learner.gradient_checkpointing": case["gc"], "learner.micro_batch_samples": 1, "learner.lr": 1e-6,
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


def run_case(name: str, args) -> dict:
    """One case in this process; returns its result dict (status ok / oom / error)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config
    case = CASES[name]
    cfg = _config(case, args)
    qcfg = Qwen2Config(**QWEN2_05B)
    res = {"case": name, **case, "seq_tokens": args.seq_tokens, "samples_per_step": args.samples,
           "gpu": torch.cuda.get_device_name(0), "peak_flops": peak_flops(torch.cuda.get_device_name(0))}
    t_init = time.perf_counter()
    try:
        if case["backend"] == "deepspeed":
            os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                               "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
            from learners.deepspeed_learner import DeepSpeedLearner
            learner = DeepSpeedLearner(cfg, model_factory=lambda: AutoModelForCausalLM.from_config(
                qcfg, dtype=torch.bfloat16), pad_id=0)
            module = learner.engine.module
            params = sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters())
        else:
            from learners.torch_learner import TorchLearner
            model = AutoModelForCausalLM.from_config(qcfg, dtype=torch.float32)
            learner = TorchLearner(cfg, device="cuda", model=model, pad_id=0)
            params = sum(p.numel() for p in learner.model.parameters())
        res["params"] = int(params)
        res["init_s"] = time.perf_counter() - t_init
        learner.train_batch(_samples(args, 0), 1)                     # warm-up (allocator, kernels, CPU Adam build)
        torch.cuda.synchronize()
        res["max_memory_allocated_gib_with_init"] = torch.cuda.max_memory_allocated() / 2 ** 30
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
            print(f"[{name}] step {s}: {times[-1]:.2f}s loss {m['loss']:.4f} grad_norm {m['grad_norm']:.3f}",
                  flush=True)
        tps = tokens / sum(times)
        res.update(status="ok", step_s=sum(times) / len(times), tokens_per_s=tps,
                   mfu=6 * params * tps / res["peak_flops"],
                   max_memory_allocated_gib_steps=torch.cuda.max_memory_allocated() / 2 ** 30)
        res["max_memory_allocated_gib"] = max(res["max_memory_allocated_gib_with_init"],
                                              res["max_memory_allocated_gib_steps"])
    except torch.cuda.OutOfMemoryError as e:
        res.update(status="oom", error=str(e).splitlines()[0],
                   max_memory_allocated_gib=torch.cuda.max_memory_allocated() / 2 ** 30)
    return res


def _child(name: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--steps", str(args.steps),
           "--samples", str(args.samples), "--seq-tokens", str(args.seq_tokens),
           "--prompt-tokens", str(args.prompt_tokens)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.case_timeout_s)
    except subprocess.TimeoutExpired as e:
        tail = (e.stdout or b"")[-2000:] if isinstance(e.stdout, bytes) else (e.stdout or "")[-2000:]
        return {"case": name, **CASES[name], "status": "timeout", "error": f"over {args.case_timeout_s}s",
                "log_tail": str(tail)}
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            res = json.loads(line[len(MARK):])
            res["wall_s"] = time.perf_counter() - t0
            return res
        print(line, flush=True)
    return {"case": name, **CASES[name], "status": "error", "returncode": proc.returncode,
            "error": (proc.stderr or proc.stdout)[-3000:]}


def _fmt(r: dict, key: str, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    return format(r[key] * scale, spec) + suffix if r.get(key) is not None else "-"


def _table(results: list[dict]) -> str:
    lines = [f"{'case':<15}{'status':<8}{'tokens/s':>10}{'step s':>8}{'MFU':>7}{'peak GiB':>10}{'params':>9}",
             "-" * 67]
    for r in results:
        lines.append(f"{r['case']:<15}{r.get('status', '?'):<8}{_fmt(r, 'tokens_per_s', '.0f'):>10}"
                     f"{_fmt(r, 'step_s', '.2f'):>8}{_fmt(r, 'mfu', '.1f', 100, '%'):>7}"
                     f"{_fmt(r, 'max_memory_allocated_gib', '.1f'):>10}{_fmt(r, 'params', '.0f', 1e-6, 'M'):>9}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per case (after one warm-up)")
    ap.add_argument("--samples", type=int, default=8, help="sequences per step")
    ap.add_argument("--seq-tokens", type=int, default=4096)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--case-timeout-s", type=float, default=150.0)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        res = run_case(args.child, args)
        print(MARK + json.dumps(res), flush=True)
        return 0
    import torch
    if not torch.cuda.is_available():
        print("learner_mfu needs a CUDA GPU", file=sys.stderr)
        return 2
    out_dir = os.environ.get("OUT", "bench_out")
    os.makedirs(out_dir, exist_ok=True)
    name = torch.cuda.get_device_name(0)
    print(f"GPU {name}; MFU peak {peak_flops(name) / 1e12:.0f} TFLOP/s bf16 dense; "
          f"{args.samples} x {args.seq_tokens} tokens per step", flush=True)
    results = []
    t0 = time.perf_counter()
    for c in args.cases:
        print(f"== {c}", flush=True)
        results.append(_child(c, args))
        r = results[-1]
        print(f"== {c}: {r.get('status')} {r.get('error', '')[:300] if r.get('status') != 'ok' else ''}", flush=True)
        with open(os.path.join(out_dir, "learner_mfu.json"), "w") as fh:      # partial results survive a kill
            json.dump({"gpu": name, "peak_flops": peak_flops(name), "results": results}, fh, indent=1)
    print(f"\nlearner MFU ({time.perf_counter() - t0:.0f}s total; peak {peak_flops(name) / 1e12:.0f} TFLOP/s):")
    print(_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
