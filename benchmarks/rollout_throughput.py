"""Rollout throughput on one GPU: raw vLLM vs the vllm engine inside a RolloutWorker, sleep/wake and weight-update
times, and the hf engine vs plain `model.generate`.

Model: a Qwen2-0.5B-shaped model (hidden 896, 24 layers, 14 heads, 2 KV heads, vocab 151936, tied embeddings) with
RANDOM bf16 weights built from a config (nothing is downloaded; no tokenizer: prompts are random token ids and vLLM
runs with skip_tokenizer_init). 256 prompts of 128 tokens, up to 256 new tokens each (random weights almost never
emit EOS, so nearly all run to the limit; tokens are counted as generated).

Parts, each in its own process so that GPU memory is free between them (`--part` picks; default all):
  hf          HFEngine.generate vs model.generate (sampling, temperature 1), 256 sequences x 128 new tokens
  vllm_raw    vllm.LLM.generate of all 256 prompts in one call (same settings as the engine: logprobs=0,
              processed logprobs, stop_token_ids)
  vllm_worker 256 concurrent RolloutWorker.generate calls of one prompt each (how the controller sends turns) on a
              local Ray (continuous batching: engines/driver.py), with the driver's start window (batch_wait_ms 20)
              and without it (vllm_worker_nowindow), and all 256 prompts in one call (vllm_worker_one_call), each
              with its time split (engine steps, request admission, start window, queue wait); then staggered
              arrivals: 192 long requests, and
              0.5 s later 64 short ones (16 new tokens) -- their latency shows whether they wait behind the long
              ones (a static batcher would hold them until the running batch ends); then sleep(1)/wake_up and
              update_weights from an ObjectRef (ipc), timed
Target: vllm_worker output tokens/s >= 90% of vllm_raw.

    python benchmarks/rollout_throughput.py --part hf                       # no vLLM needed
    source .vllmkit/activate.sh && python benchmarks/rollout_throughput.py  # everything (< 5 min on one H100)

Writes $OUT/rollout_throughput.json (OUT defaults to ./bench_out) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

N_SEQ, PROMPT_LEN, NEW_VLLM, NEW_HF = 256, 128, 256, 128
MODEL_DIR = "/tmp/rollout_bench_qwen2_0p5b"
VOCAB, EOS = 151936, 151645


def qwen2_config():
    from transformers import Qwen2Config
    c = Qwen2Config(vocab_size=VOCAB, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
                    bos_token_id=151643, eos_token_id=EOS, pad_token_id=151643, use_sliding_window=False)
    c.architectures = ["Qwen2ForCausalLM"]
    return c


def random_state(seed: int) -> dict:
    """Random bf16 weights (CPU tensors) of the 0.5B Qwen2 shape; lm_head is tied, so it is left out."""
    import torch
    from transformers import Qwen2ForCausalLM
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Qwen2ForCausalLM(qwen2_config()).state_dict().items()}
    g = torch.Generator(device="cuda").manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if name == "lm_head.weight":
            continue
        if name.endswith("norm.weight"):
            t = torch.ones(shape, device="cuda")
        else:
            t = torch.randn(shape, generator=g, device="cuda") * (0.05 if "embed_tokens" in name else 0.02)
        state[name] = t.to(torch.bfloat16).cpu().contiguous()
    return state


def ensure_model_dir() -> None:
    if os.path.exists(os.path.join(MODEL_DIR, "model.safetensors")):
        return
    from safetensors.torch import save_file
    os.makedirs(MODEL_DIR, exist_ok=True)
    c = qwen2_config()
    c.torch_dtype = "bfloat16"
    c.save_pretrained(MODEL_DIR)
    save_file(random_state(1), os.path.join(MODEL_DIR, "model.safetensors"), metadata={"format": "pt"})


def prompts(n: int = N_SEQ, seed: int = 0) -> list[list[int]]:
    import torch
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 150000, (n, PROMPT_LEN), generator=g).tolist()


# ------------------------------------------------------------------------------------------------------------ parts
def part_hf() -> dict:
    import torch
    from transformers import Qwen2ForCausalLM
    from engines.base import SamplingParams
    from engines.hf_engine import HFEngine
    model = Qwen2ForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.bfloat16).cuda().eval()
    engine = HFEngine(None, model=model, device="cuda", max_batch_sequences=N_SEQ)
    ps = prompts()
    ids = torch.tensor(ps, device="cuda")
    r = {}

    def timed(fn):
        torch.cuda.synchronize()
        t = time.perf_counter()
        n = fn()
        torch.cuda.synchronize()
        return n / (time.perf_counter() - t)

    def plain():
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                 top_p=1.0, top_k=0, max_new_tokens=NEW_HF, min_new_tokens=NEW_HF, pad_token_id=0)
        return (out.shape[1] - PROMPT_LEN) * out.shape[0]

    def eng():
        gens = engine.generate(ps, SamplingParams(temperature=1.0, max_new_tokens=NEW_HF, seed=0))
        return sum(len(g.token_ids) for g in gens)

    engine.generate(ps[:8], SamplingParams(max_new_tokens=4))            # warm-up
    r["hf_plain_generate_tok_s"] = round(timed(plain), 1)
    r["hf_engine_tok_s"] = round(timed(eng), 1)
    r["hf_engine_vs_plain"] = round(r["hf_engine_tok_s"] / r["hf_plain_generate_tok_s"], 3)
    return r


def _vllm_kwargs(eager: bool) -> dict:
    return dict(model=MODEL_DIR, skip_tokenizer_init=True, gpu_memory_utilization=0.5, enable_sleep_mode=True,
                max_model_len=1024, seed=0, dtype="bfloat16", logprobs_mode="processed_logprobs",
                enforce_eager=eager, weight_transfer_config={"backend": "ipc"})


def part_vllm_raw(eager: bool) -> dict:
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    from vllm import LLM, SamplingParams
    t = time.perf_counter()
    llm = LLM(**_vllm_kwargs(eager))
    r = {"vllm_init_s": round(time.perf_counter() - t, 1)}
    ps = [{"prompt_token_ids": p} for p in prompts()]
    sp = [SamplingParams(temperature=1.0, max_tokens=NEW_VLLM, seed=i, logprobs=0, detokenize=False,
                         stop_token_ids=[EOS]) for i in range(N_SEQ)]
    llm.generate(ps[:16], sp[:16], use_tqdm=False)                     # warm-up
    rates = []
    for _ in range(2):
        t = time.perf_counter()
        outs = llm.generate(ps, sp, use_tqdm=False)
        rates.append(sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - t))
    r["vllm_raw_tok_s"] = round(max(rates), 1)
    return r


def part_vllm_worker(eager: bool) -> dict:
    import ray
    from actors.rollout import start_rollout_worker
    from engines.base import SamplingParams
    from runtime.config import load_config
    ray.init(num_gpus=1, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": {"PYTHONPATH": ":".join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
                                       "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}})
    cfg = load_config(overrides=[f"model.name_or_path={MODEL_DIR}", "model.dtype=bfloat16", "rollout.engine=vllm",
                                 "rollout.gpus_per_worker=1", "rollout.gpu_memory_utilization=0.5",
                                 "rollout.max_context_tokens=768", f"rollout.max_new_tokens={NEW_VLLM}",
                                 f"rollout.max_concurrent_sequences={N_SEQ}", "rollout.batch_wait_ms=20",
                                 f"rollout.vllm_enforce_eager={str(eager).lower()}"])
    t = time.perf_counter()
    w = start_rollout_worker(cfg.model, cfg.rollout, seed=0, name="rollout-bench", get_timeout_s=300)
    ray.get(w.stats.remote(), timeout=600)
    r = {"worker_init_s": round(time.perf_counter() - t, 1)}
    ps = prompts()

    def run(seed0: int, one_call: bool = False):
        t = time.perf_counter()
        if one_call:           # all prompts in one actor call (prompt i samples with seed seed0 + i)
            gens = ray.get(w.generate.remote(ps, SamplingParams(temperature=1.0, max_new_tokens=NEW_VLLM,
                                                                seed=seed0)), timeout=600)
        else:                  # one actor call per prompt, as the controller sends turns
            refs = [w.generate.remote([p], SamplingParams(temperature=1.0, max_new_tokens=NEW_VLLM, seed=seed0 + i))
                    for i, p in enumerate(ps)]
            gens = [g[0] for g in ray.get(refs, timeout=600)]
        return gens, sum(len(g.token_ids) for g in gens) / (time.perf_counter() - t)

    def variant(tag: str, wait_ms: float, one_call: bool):
        """Best of two runs, with the driver's time split for the better one (stats deltas)."""
        ray.get(w.set_batch_wait_ms.remote(wait_ms), timeout=60)
        best = None
        for _ in range(2):
            s0 = ray.get(w.stats.remote(), timeout=60)
            t = time.perf_counter()
            gens, rate = run(0, one_call)
            wall = time.perf_counter() - t
            s1 = ray.get(w.stats.remote(), timeout=60)
            if best is None or rate > best[1]:
                best = (gens, rate, wall, s0, s1)
        gens, rate, wall, s0, s1 = best
        d = {k: s1[k] - s0[k] for k in ("engine_calls", "busy_s", "admit_s", "start_window_s", "sequences")}
        wait_sum = s1["queue_wait_s_mean"] * s1["sequences"] - s0["queue_wait_s_mean"] * s0["sequences"]
        r.update({f"{tag}_tok_s": round(rate, 1), f"{tag}_run_s": round(wall, 3), f"{tag}_steps": d["engine_calls"],
                  f"{tag}_step_s": round(d["busy_s"], 3), f"{tag}_admit_s": round(d["admit_s"], 3),
                  f"{tag}_start_window_s": round(d["start_window_s"], 3),
                  f"{tag}_queue_wait_mean_s": round(wait_sum / max(1, d["sequences"]), 3)})
        return gens, rate

    ray.get(w.generate.remote(ps[:16], SamplingParams(max_new_tokens=16)), timeout=600)     # warm-up
    # the pipeline's path: one call per request, start window = rollout.batch_wait_ms (20 ms here)
    first, rate = variant("vllm_worker", 20.0, one_call=False)
    r["vllm_worker_tok_s"] = round(rate, 1)
    variant("vllm_worker_nowindow", 0.0, one_call=False)      # the same without a start window (before the fix)
    variant("vllm_worker_one_call", 20.0, one_call=True)      # all 256 prompts in one actor call
    ray.get(w.set_batch_wait_ms.remote(20.0), timeout=60)
    s = ray.get(w.stats.remote(), timeout=60)
    r["vllm_worker_streaming"] = s["streaming"]
    r["vllm_worker_in_flight_max"] = s["batch_size_max"]
    r["vllm_worker_queue_wait_s_max"] = round(s["queue_wait_s_max"], 3)
    r.update(staggered(w, ps))

    # one seeded request alone, before sleep and after wake: the same weights and batch must give the same tokens
    single = SamplingParams(temperature=1.0, max_new_tokens=64, seed=123)
    before = ray.get(w.generate.remote([ps[0]], single), timeout=300)[0]
    t = time.perf_counter()
    ray.get(w.sleep.remote(1), timeout=300)
    r["sleep1_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    ray.get(w.wake_up.remote(), timeout=300)
    r["wake_s"] = round(time.perf_counter() - t, 3)
    after = ray.get(w.generate.remote([ps[0]], single), timeout=300)[0]
    r["same_tokens_after_wake"] = after.token_ids == before.token_ids
    # Where they differ: the logprobs of the tokens both sampled alike tell numerics from broken weights (a random
    # model's next-token distribution is nearly flat, so bf16 noise -- e.g. prompt KV from the prefix cache, computed
    # in a batch of 256 before sleep, recomputed alone after wake -- can flip a sample; wrong weights move every
    # logprob by far more than 0.1)
    common = next((i for i, (a, b) in enumerate(zip(before.token_ids, after.token_ids)) if a != b),
                  min(len(before.token_ids), len(after.token_ids)))
    r["after_wake_common_prefix_tokens"] = common
    r["after_wake_logprob_max_abs_diff"] = round(max((abs(a - b) for a, b in zip(before.logprobs[:common],
                                                                                    after.logprobs[:common])),
                                                     default=0.0), 4)

    state_ref = ray.put(random_state(2))
    t = time.perf_counter()
    version = ray.get(w.update_weights.remote([state_ref], 1), timeout=300)
    r["weight_update_ipc_s"] = round(time.perf_counter() - t, 3)
    updated, _ = run(0)
    r["weight_version_after_update"] = version
    r["tokens_changed_after_update"] = sum(a.token_ids != b.token_ids for a, b in zip(first, updated))
    ray.kill(w)
    ray.shutdown()
    return r


def staggered(w, ps: list, n_long: int = 192, short_new: int = 16, gap_s: float = 0.5) -> dict:
    """Long requests, then gap_s later short ones; completion times from ray.wait."""
    import ray
    from engines.base import SamplingParams
    t0 = time.perf_counter()
    kind = {}
    for i, p in enumerate(ps[:n_long]):
        kind[w.generate.remote([p], SamplingParams(temperature=1.0, max_new_tokens=NEW_VLLM, seed=i))] = "long"
    time.sleep(gap_s)
    t_short = time.perf_counter()
    for i, p in enumerate(ps[n_long:]):
        kind[w.generate.remote([p], SamplingParams(temperature=1.0, max_new_tokens=short_new, seed=5000 + i))] = "short"
    done = {"long": [], "short": []}
    pending = list(kind)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=300, fetch_local=False)
        if not ready:
            raise TimeoutError("staggered case: no request finished within 300 s")
        for ref in ready:
            done[kind[ref]].append(time.perf_counter())
    ray.get(list(kind), timeout=60)
    short_lat = sorted(t - t_short for t in done["short"])
    long_end = max(done["long"]) - t0
    return {"staggered_n_long": n_long, "staggered_n_short": len(short_lat),
            "staggered_short_latency_p50_s": round(short_lat[len(short_lat) // 2], 3),
            "staggered_short_latency_max_s": round(short_lat[-1], 3),
            "staggered_long_last_done_s": round(long_end, 3),
            "staggered_shorts_done_before_first_long": sum(t < min(done["long"]) for t in done["short"])}


# ------------------------------------------------------------------------------------------------------------ driver
def run_part(part: str, out_dir: str, eager: bool, timeout_s: int) -> dict:
    path = os.path.join(out_dir, f"part_{part}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--phase", part, "--out", out_dir]
    cmd += ["--eager"] if eager else []
    print(f"== {part}: {' '.join(cmd)}", flush=True)
    t = time.perf_counter()
    try:
        rc = subprocess.run(cmd, timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        return {f"{part}_error": f"timed out after {timeout_s} s"}
    if rc != 0 or not os.path.exists(path):
        return {f"{part}_error": f"exit code {rc}"}
    with open(path) as fh:
        r = json.load(fh)
    r[f"{part}_wall_s"] = round(time.perf_counter() - t, 1)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["all", "hf", "vllm"], default="all", help="hf, vllm (raw + worker), or all")
    ap.add_argument("--phase", choices=["hf", "vllm_raw", "vllm_worker"], help="internal: run one part here")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--eager", action="store_true", help="vLLM without CUDA graphs (faster start, slower decode)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.phase:
        ensure_model_dir()
        fn = {"hf": part_hf, "vllm_raw": lambda: part_vllm_raw(args.eager),
              "vllm_worker": lambda: part_vllm_worker(args.eager)}[args.phase]
        with open(os.path.join(args.out, f"part_{args.phase}.json"), "w") as fh:
            json.dump(fn(), fh, indent=1)
        return
    t0 = time.perf_counter()
    R: dict = {"n_sequences": N_SEQ, "prompt_len": PROMPT_LEN, "new_tokens_vllm": NEW_VLLM, "new_tokens_hf": NEW_HF,
               "eager": args.eager}
    parts = {"all": ["hf", "vllm_raw", "vllm_worker"], "hf": ["hf"], "vllm": ["vllm_raw", "vllm_worker"]}[args.part]
    for p in parts:
        R.update(run_part(p, args.out, args.eager, timeout_s=150 if p == "hf" else 240))
    if "vllm_raw_tok_s" in R and "vllm_worker_tok_s" in R:
        R["vllm_worker_vs_raw"] = round(R["vllm_worker_tok_s"] / R["vllm_raw_tok_s"], 3)
    R["total_s"] = round(time.perf_counter() - t0, 1)
    with open(os.path.join(args.out, "rollout_throughput.json"), "w") as fh:
        json.dump(R, fh, indent=1)
    print(f"\n{'metric':36s} value")
    for k, v in R.items():
        print(f"{k:36s} {v}")


if __name__ == "__main__":
    main()
