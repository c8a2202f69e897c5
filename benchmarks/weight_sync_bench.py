"""Weight sync from a learner on one GPU to a vLLM engine on another: NCCL broadcast vs the object store + CUDA IPC vs
disk, for the Qwen2-0.5B shape (hidden 896, 24 layers, vocab 151936, tied embeddings; 494M parameters, 0.99 GB in
bf16) with random weights (nothing downloaded).

Cases, each in its own process with its own timeout (a failure is recorded and the others still run):
  nccl  rollout.weight_sync=nccl: this process is the engine (VLLMEngine on the 1st GPU) and starts the learner
        process (plain torch, bf16 parameters on the 2nd GPU). They form the NCCL group (engines/weight_transfer.py;
        timed: group_init_s), then per sync the engine calls receive_weights while the learner sends (packed
        broadcasts of 256 MiB). A file barrier starts both sides of a sync together, so sync_s (engine side, from the
        barrier to receive_weights returning: broadcast + vLLM's layer-wise reload + prefix-cache reset) is end to end.
  ipc   what disaggregated runs did before: on a local Ray, the learner actor (2nd GPU) returns its state dict as CPU
        tensors (GPU -> host copy, into the object store), the engine actor (1st GPU) fetches it and loads it with
        CUDA IPC handles (VLLMEngine weight_sync=ipc). sync_s: the driver's wall time of one export + load.
  disk  same actors and engine; the engine writes the state dict as safetensors to /dev/shm and vLLM reloads it.
Each case: 1 warm-up sync, then 3 timed; the table shows the median and the GB/s it implies (0.99 GB per sync).

    source .vllmkit/activate.sh; source .kit/activate.sh   # vLLM; Ray (ipc/disk only)
    python benchmarks/weight_sync_bench.py                  # 2 GPUs, < 3 min

Writes $OUT/weight_sync.json (OUT defaults to ./bench_out), per-case logs in $OUT/weight_sync_logs/, and prints a
table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from runtime.procs import end_process_group  # noqa: E402

MODEL_DIR = "/dev/shm/weight_sync_bench_qwen2_0p5b" if os.path.isdir("/dev/shm") else "/tmp/weight_sync_bench_qwen2"
WARMUP, TIMED = 1, 3


def qwen2_config():
    from transformers import Qwen2Config
    c = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643,
                    eos_token_id=151645, pad_token_id=151643, use_sliding_window=False)
    c.architectures = ["Qwen2ForCausalLM"]
    return c


def random_model(seed: int):
    """The 0.5B shape with random bf16 weights on the current GPU (the learner's model)."""
    import torch
    from transformers import Qwen2ForCausalLM
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(qwen2_config()).to(torch.bfloat16)
    return model.eval()


def ensure_model_dir() -> None:
    """The engine's initial checkpoint (written once; the engine's starting weights do not matter for timing)."""
    if os.path.exists(os.path.join(MODEL_DIR, "model.safetensors")):
        return
    import torch
    tmp = MODEL_DIR + f".tmp{os.getpid()}"
    random_model(0).save_pretrained(tmp, safe_serialization=True)
    os.rename(tmp, MODEL_DIR)
    torch.cuda.empty_cache()                    # leave the GPU to the engine


def engine_cfg(weight_sync: str):
    from runtime.config import load_config
    return load_config(None, [f"model.name_or_path={MODEL_DIR}", "model.dtype=bfloat16", "rollout.engine=vllm",
                              f"rollout.weight_sync={weight_sync}", "rollout.gpus_per_worker=1",
                              "learner.gpus_per_rank=1", "placement.mode=disaggregated",
                              "rollout.gpu_memory_utilization=0.5", "rollout.enable_sleep=false",
                              "rollout.vllm_enforce_eager=true", "rollout.max_context_tokens=512",
                              "rollout.max_new_tokens=64"])


def summary(times: list[float], nbytes: int) -> dict:
    med = statistics.median(times)
    return {"sync_s_median": round(med, 3), "sync_s": [round(t, 3) for t in times],
            "gb_per_s": round(nbytes / 1e9 / med, 2)}


# ------------------------------------------------------------------------------------------------------------ nccl
def nccl_learner(work: str, port: int) -> None:
    """Learner process: join, then one send per barrier file the engine writes."""
    import torch
    from engines.weight_transfer import NCCLWeightSender
    model = random_model(1)
    meta = json.load(open(os.path.join(work, "meta.json")))
    sender = NCCLWeightSender("127.0.0.1", port, world_size=2)
    sends = []
    for i in range(WARMUP + TIMED):
        flag = os.path.join(work, f"go_{i}")
        while not os.path.exists(flag):
            time.sleep(0.0005)
        with torch.no_grad():
            for p in model.parameters():          # new weights each round (what a training step produces)
                p.mul_(0.999)
        sends.append(sender.send(model, meta)["seconds"])
    json.dump({"send_s": sends}, open(os.path.join(work, "learner.json"), "w"))
    sender.close()


def case_nccl(work: str, learner_gpu: str) -> dict:
    import torch
    from engines.vllm_engine import VLLMEngine
    from engines.weight_transfer import free_port, metadata_bytes, transfer_metadata
    from transformers import Qwen2ForCausalLM
    with torch.device("meta"):
        meta = transfer_metadata(Qwen2ForCausalLM(qwen2_config()), torch.bfloat16)
    json.dump(meta, open(os.path.join(work, "meta.json"), "w"))
    port = free_port()
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=learner_gpu, NCCL_NVLS_ENABLE="0")
    log = open(os.path.join(work, "nccl_learner.log"), "w")
    # same process group as this case process: a timeout that ends the case ends the learner too
    learner = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--learner", work, "--port", str(port)],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        cfg = engine_cfg("nccl")
        t0 = time.perf_counter()
        engine = VLLMEngine(cfg.model, cfg.rollout, seed=0)
        r = {"engine_start_s": round(time.perf_counter() - t0, 1)}
        t0 = time.perf_counter()
        engine.init_weight_transfer("127.0.0.1", port, rank_offset=1, world_size=2)
        r["group_init_s"] = round(time.perf_counter() - t0, 2)
        times = []
        for i in range(WARMUP + TIMED):
            open(os.path.join(work, f"go_{i}"), "w").close()
            t0 = time.perf_counter()
            engine.receive_weights(meta)
            times.append(time.perf_counter() - t0)
            print(f"[nccl] sync {i}: {times[-1]:.3f}s", flush=True)
        learner.wait(timeout=60)
        r.update(summary(times[WARMUP:], metadata_bytes(meta)))
        r["learner_send_s"] = [round(t, 3) for t in json.load(open(os.path.join(work, "learner.json")))["send_s"]]
        r["tensors"] = len(meta["names"])
        engine.close()
        return r
    finally:
        if learner.poll() is None:
            learner.kill()
            learner.wait(timeout=30)


# ------------------------------------------------------------------------------------------------------- ipc, disk
class LearnerActor:
    def __init__(self):
        self.model = random_model(1)

    def ready(self) -> bool:
        return True

    def state_dict_cpu(self) -> dict:
        """As learners' state_dict_cpu: every tensor copied to host memory (then into the object store)."""
        import torch
        with torch.no_grad():
            for p in self.model.parameters():
                p.mul_(0.999)
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}


class EngineActor:
    def __init__(self):
        from engines.vllm_engine import VLLMEngine
        cfg = engine_cfg("ipc")
        self.engine = VLLMEngine(cfg.model, cfg.rollout, seed=0)

    def ready(self) -> bool:
        return True

    def load(self, wrapped: list, mode: str) -> dict:
        import ray
        t0 = time.perf_counter()
        state = ray.get(wrapped[0], timeout=300)
        t1 = time.perf_counter()
        self.engine.weight_sync = mode           # load_weights: "ipc" -> CUDA IPC, anything else -> disk
        self.engine.load_weights(state)
        return {"fetch_s": t1 - t0, "load_s": time.perf_counter() - t1,
                "bytes": sum(t.numel() * t.element_size() for k, t in state.items() if k != "lm_head.weight")}


def case_ray() -> dict:
    import ray
    ray.init(num_gpus=2, num_cpus=8, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
                                       "NCCL_NVLS_ENABLE": "0"}})
    try:
        t0 = time.perf_counter()
        learner = ray.remote(num_gpus=1)(LearnerActor).remote()
        engine = ray.remote(num_gpus=1)(EngineActor).remote()
        ray.get([learner.ready.remote(), engine.ready.remote()], timeout=300)
        out = {"actors_start_s": round(time.perf_counter() - t0, 1)}
        for mode in ("ipc", "disk"):
            times, parts = [], []
            for i in range(WARMUP + TIMED):
                t0 = time.perf_counter()
                ref = learner.state_dict_cpu.remote()
                parts.append(ray.get(engine.load.remote([ref], mode), timeout=300))
                times.append(time.perf_counter() - t0)
                del ref
                print(f"[{mode}] sync {i}: {times[-1]:.3f}s", flush=True)
            r = summary(times[WARMUP:], parts[-1]["bytes"])
            r["fetch_s"] = [round(p["fetch_s"], 3) for p in parts[WARMUP:]]
            r["load_s"] = [round(p["load_s"], 3) for p in parts[WARMUP:]]
            out[mode] = r
        return out
    finally:
        ray.shutdown()


# ------------------------------------------------------------------------------------------------------------ driver
def run_case(case: str, out_dir: str, gpus: list[str], timeout_s: int) -> dict:
    work = os.path.join(out_dir, "weight_sync_logs", case)
    os.makedirs(work, exist_ok=True)
    for f in os.listdir(work):
        if f.startswith("go_"):
            os.remove(os.path.join(work, f))
    env = dict(os.environ, NCCL_NVLS_ENABLE="0")
    if case == "nccl":                          # this side is the engine; its learner gets the other GPU
        env["CUDA_VISIBLE_DEVICES"] = gpus[0]
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[:2])
    cmd = [sys.executable, os.path.abspath(__file__), "--case", case, "--work", work, "--learner-gpu", gpus[1]]
    print(f"== {case}: {' '.join(cmd)}", flush=True)
    t = time.perf_counter()
    with open(os.path.join(work, "case.log"), "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            rc = f"timed out after {timeout_s} s"
        finally:
            end_process_group(proc)
    path = os.path.join(work, "result.json")
    if rc != 0 or not os.path.exists(path):
        tail = open(os.path.join(work, "case.log"), errors="replace").read()[-1500:]
        print(f"   {case} failed ({rc}); log tail:\n{tail}", flush=True)
        return {f"{case}_error": f"exit {rc}; log {os.path.join(work, 'case.log')}", f"{case}_log_tail": tail}
    r = json.load(open(path))
    r[f"{case}_wall_s"] = round(time.perf_counter() - t, 1)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=["nccl", "ray"], help="internal: run one case in this process")
    ap.add_argument("--learner", help="internal: the nccl learner process (its work directory)")
    ap.add_argument("--work")
    ap.add_argument("--port", type=int)
    ap.add_argument("--learner-gpu", default="1")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    args = ap.parse_args()
    if args.learner:
        nccl_learner(args.learner, args.port)
        return
    if args.case:
        ensure_model_dir()
        r = case_nccl(args.work, args.learner_gpu) if args.case == "nccl" else case_ray()
        json.dump(r, open(os.path.join(args.work, "result.json"), "w"), indent=1)
        return
    import torch
    n = torch.cuda.device_count()
    gpus = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()] or [str(i) for i in range(n)]
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    R: dict = {"model": "Qwen2-0.5B shape, random bf16, tied embeddings", "warmup_syncs": WARMUP,
               "timed_syncs": TIMED, "gpus": n}
    if n < 2:
        R["error"] = f"needs 2 GPUs (learner and engine on different GPUs); {n} visible"
    else:
        R["nccl"] = run_case("nccl", args.out, gpus, timeout_s=150)
        R.update(run_case("ray", args.out, gpus, timeout_s=170))
    R["total_s"] = round(time.perf_counter() - t0, 1)
    with open(os.path.join(args.out, "weight_sync.json"), "w") as fh:
        json.dump(R, fh, indent=1)
    print(f"\n{'case':6s} {'sync s (median)':>16s} {'GB/s':>6s}  detail")
    for case in ("nccl", "ipc", "disk"):
        c = R.get(case) or {}
        if "sync_s_median" in c:
            extra = {k: c[k] for k in ("group_init_s", "learner_send_s", "fetch_s", "load_s") if k in c}
            print(f"{case:6s} {c['sync_s_median']:16.3f} {c['gb_per_s']:6.2f}  {extra}")
        else:
            err = (c.get(f"{case}_error") or R.get(f"{case}_error") or R.get("ray_error") or R.get("error")
                   or "not run")
            print(f"{case:6s} {'-':>16s} {'-':>6s}  {err}")
    print(f"total {R['total_s']} s; {os.path.join(args.out, 'weight_sync.json')}")


if __name__ == "__main__":
    main()
