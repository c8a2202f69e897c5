"""Per-iteration time (median) and model calls of DanceGRPO-style, MixGRPO, MixGRPO-Flash and Flash* on one system.

Each variant runs the full iteration (sampling, rewards, clipped-ratio update) for `--iters` iterations after one
warm-up; progressive windows move every iteration (window_interval_iters=1) so the timings average over window
positions 0..19, like a whole training run. Reported per variant: seconds per iteration (sampling / training), NFE
per sample path, trained steps, and the model rows actually evaluated with the shared ODE prefix vs. recomputing it
for each of the G branches (the official code's way). A separate sampling-only timing compares shared vs. unshared
prefix on the same plans.

    python benchmarks/mixgrpo_bench.py                       # toy 2-D flow on CPU (~1 min)
    python benchmarks/mixgrpo_bench.py --gpu                 # tiny random Flux transformer on one GPU (< 1 min)
    python benchmarks/mixgrpo_bench.py --gpu --size medium   # 1024 tokens, compute-bound calls (< 2 min)

Writes $OUT/mixgrpo_bench.json (--size medium: mixgrpo_bench_medium.json; default $OUT: ./bench_out). On the GPU, without diffusers it falls back to TinyDiT (a
same-size transformer of this project) and says so in the JSON and the table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowrl.window import WindowScheduler                       # noqa: E402
from pipelines.mixgrpo import MixGRPOPipeline                   # noqa: E402
from runtime.config import load_config                          # noqa: E402

VARIANTS = {
    # name: overrides (paper settings: DanceGRPO samples all 25 steps with the SDE and trains 14 of them)
    "dance_grpo": ["flow.window_mode=random_subset", "flow.sde_form=dance_grpo", "flow.eta=0.3",
                   "flow.subset_steps=14", "flow.flash='off'"],
    "mixgrpo": ["flow.window_mode=progressive", "flow.flash='off'"],
    "mixgrpo_flash": ["flow.window_mode=progressive", "flow.flash=flash"],
    "mixgrpo_flash_star": ["flow.window_mode=frozen", "flow.flash=flash_star"],
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_pipeline(args, overrides: list[str]):
    base = ["run.seed=0", "flow.window_interval_iters=1", f"flow.device={args.device}"]
    if args.gpu:
        from flowrl.flux import build_tiny_bundle
        mb = ["flow.micro_batch_samples=16"] if args.size == "medium" else []
        cfg = load_config(None, base + ["flow.model=flux_tiny_random", "flow.reward_weights={latent: 1.0}",
                                        "flow.lr=1e-4", "flow.clip_eps=1e-3"] + mb + overrides)
        bundle = build_tiny_bundle(args.device, allow_fallback=True, seed=0, size=args.size)
        return MixGRPOPipeline(cfg, bundle=bundle), bundle.model.display_name
    cfg = load_config("configs/mixgrpo_toy.yaml", base + overrides)
    return MixGRPOPipeline(cfg), "ToyFlow"


def run_variant(args, name: str) -> dict:
    pipe, model_name = make_pipeline(args, VARIANTS[name])
    pipe.step()                                                  # warm-up (allocations, kernels)
    pipe.iteration = 0
    ms = []
    for _ in range(args.iters):
        sync(args.device)
        t0 = time.perf_counter()
        m = pipe.step()
        sync(args.device)
        m["wall_s"] = time.perf_counter() - t0
        ms.append(m)
    mean = lambda k: float(np.mean([m[k] for m in ms]))          # noqa: E731
    med = lambda k: float(np.median([m[k] for m in ms]))         # noqa: E731  (times: robust to a busy machine)
    return {"variant": name, "model": model_name, "iters": args.iters, "iteration_s": med("wall_s"),
            "sample_s": med("time/sample_s"), "train_s": med("time/train_s"), "nfe": mean("nfe"),
            "trained_steps": mean("trained_steps"), "model_rows": mean("model_rows"),
            "model_rows_unshared": mean("model_rows_unshared"),
            "prefix_saving": 1.0 - mean("model_rows") / mean("model_rows_unshared"), "reward_last": ms[-1]["reward"],
            # |ratio - 1| before each iteration's first update (0 when rollout and training compute identically)
            "ratio_dev_first_max": float(max(m["train/ratio_dev_first"] for m in ms))}


@torch.no_grad()
def prefix_timing(args) -> dict:
    """Sampling only, MixGRPO windows at starts 0..19: shared prefix vs. G recomputations."""
    pipe, _ = make_pipeline(args, VARIANTS["mixgrpo"])
    win = WindowScheduler("progressive", 25, 4, 1, 1)
    out = {}
    for share in (True, False):
        pipe.local.sample(win.plan(5), [0, 1], [1, 2], pipe.chunk_rows, share_prefix=share)    # warm-up
        times = []
        for rep in range(3):                                     # median of 3 sweeps over window starts 0..19
            sync(args.device)
            t0 = time.perf_counter()
            for it in range(20):
                idx = [i % len(pipe.bundle.prompts) for i in range(pipe.fc.prompts_per_iter)]
                pipe.local.sample(win.plan(it), idx, list(range(len(idx))), pipe.chunk_rows, share_prefix=share)
            sync(args.device)
            times.append((time.perf_counter() - t0) / 20)
        out["shared_s" if share else "unshared_s"] = float(np.median(times))
    out["speedup"] = out["unshared_s"] / out["shared_s"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", action="store_true", help="tiny random Flux transformer on cuda")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--size", choices=["tiny", "medium"], default="tiny",
                    help="--gpu: tiny (94k params, 256 tokens) or medium (1024 tokens x 64 ch, width 256, 6 blocks)")
    args = ap.parse_args()
    args.device = "cuda" if args.gpu else "cpu"
    if args.gpu and not torch.cuda.is_available():
        print("--gpu needs CUDA", file=sys.stderr)
        return 2
    rows = []
    for name in VARIANTS:
        r = run_variant(args, name)
        rows.append(r)
        print(f"  {name:20s} {r['iteration_s']*1e3:8.1f} ms/iter  nfe {r['nfe']:5.1f}  "
              f"|ratio-1| {r['ratio_dev_first_max']:.1e}", flush=True)
    prefix = prefix_timing(args)
    result = {"device": torch.cuda.get_device_name(0) if args.gpu else "cpu", "torch": torch.__version__,
              "threads": torch.get_num_threads(), "variants": rows, "prefix_sampling": prefix}
    out_dir = os.environ.get("OUT", "bench_out")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"mixgrpo_bench_{args.size}.json" if args.gpu else "mixgrpo_bench_cpu.json")
    if args.gpu and args.size == "tiny":
        path = os.path.join(out_dir, "mixgrpo_bench.json")
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2)
    base = rows[0]["iteration_s"]
    print(f"\nMixGRPO variants on {result['device']} ({rows[0]['model']}), {args.iters} iterations each:")
    print("| variant | s/iter | vs DanceGRPO | sample s | train s | NFE/path | trained steps | rows (shared) | "
          "rows (unshared) | prefix saving |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['iteration_s']:.4f} | {base / r['iteration_s']:.2f}x | {r['sample_s']:.4f} | "
              f"{r['train_s']:.4f} | {r['nfe']:.1f} | {r['trained_steps']:.0f} | {r['model_rows']:.0f} | "
              f"{r['model_rows_unshared']:.0f} | {100 * r['prefix_saving']:.0f}% |")
    print(f"sampling only (MixGRPO windows 0..19): shared prefix {prefix['shared_s']*1e3:.1f} ms, "
          f"unshared {prefix['unshared_s']*1e3:.1f} ms ({prefix['speedup']:.2f}x)")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
