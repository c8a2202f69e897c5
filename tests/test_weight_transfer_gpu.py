"""NCCL weight sync on 2 GPUs: a plain torch "learner" process on the second GPU updates a vLLM engine (the project's
VLLMEngine, rollout.weight_sync=nccl) on the first GPU through engines/weight_transfer.py, twice, with a small packing
buffer so that each sync spans several packed broadcasts (a decoder layer split across two of them included).

Model: a random 2-layer Qwen2 with tied embeddings, written to a temporary directory (nothing downloaded). After each
sync the engine samples from a fixed prompt, and the log-probs it reports for its tokens must equal a transformers
forward (CPU, fp32) of the weights the learner sent, within bf16 noise, and must differ from the previous weights' --
so a sync that did not arrive, arrived in the wrong order, or landed in the wrong tensors fails.

Each side runs in its own subprocess (own process group, own timeout); a failure reports both logs' tails.

    python -m pytest tests/test_weight_transfer_gpu.py -m gpu -q      # needs 2 GPUs and vLLM (source .vllmkit/activate.sh)
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from runtime.procs import end_process_group  # noqa: E402

pytestmark = pytest.mark.gpu

SHAPE = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
BUFFER_BYTES = 300_000          # ~7 packed broadcasts per sync (the model is ~1.9 MB in bf16)
VERSIONS = (1, 2)
PROMPT = list(range(5, 37))
MATCH_MAX, MATCH_MEAN, DIFFER_MEAN = 0.08, 0.03, 0.2     # calibrated on CPU: bf16 vs fp32 max 0.019, mean 0.008;
#                                                          one version to the next: mean 0.65


def _model_cls():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    return Qwen2Config, Qwen2ForCausalLM


def write_model(directory: str) -> None:
    """The random model (bf16 safetensors + config.json), as vLLM and transformers both load it."""
    config_cls, model_cls = _model_cls()
    torch.manual_seed(0)
    cfg = config_cls(**SHAPE)
    cfg.architectures = ["Qwen2ForCausalLM"]
    model = model_cls(cfg).to(torch.bfloat16)
    model.save_pretrained(directory, safe_serialization=True)


def perturb(model: torch.nn.Module, version: int) -> None:
    """Version `version`'s weights: seeded noise on every parameter, rounded to bf16 (what the engine receives)."""
    g = torch.Generator(device="cpu").manual_seed(1000 + version)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g) * 0.05
            p.add_(noise.to(p.device))
            p.copy_(p.to(torch.bfloat16).to(p.dtype))


def load_version(directory: str, version: int) -> torch.nn.Module:
    """The weights of `version` on CPU in fp32 (version 0: the written model)."""
    _, model_cls = _model_cls()
    model = model_cls.from_pretrained(directory, dtype=torch.float32).eval()
    for v in range(1, version + 1):
        perturb(model, v)
    return model


@torch.no_grad()
def token_logprobs(model: torch.nn.Module, prompt: list[int], tokens: list[int]) -> list[float]:
    ids = torch.tensor([prompt + tokens])
    logp = torch.log_softmax(model(ids).logits.float()[0], dim=-1)           # [L, V]
    pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(tokens))
    return logp[pos, torch.tensor(tokens)].tolist()


# ------------------------------------------------------------------------------------------------------ the two sides
def learner_main(directory: str, port: int) -> None:
    """GPU learner: fp32 weights on cuda:0 (its only visible GPU), sends each version in bf16."""
    from engines.weight_transfer import NCCLWeightSender
    _, model_cls = _model_cls()
    model = model_cls.from_pretrained(directory, dtype=torch.float32).cuda().eval()
    meta = json.load(open(os.path.join(directory, "meta.json")))
    sender = NCCLWeightSender("127.0.0.1", port, world_size=2)
    print(f"[learner] joined: {sender}", flush=True)
    for v in VERSIONS:
        perturb(model, v)
        out = sender.send(model, meta)
        print(f"[learner] sent version {v}: {out}", flush=True)
    sender.close()


def engine_main(directory: str, port: int) -> None:
    """vLLM engine on cuda:0: join, sample, then for each version receive and sample again."""
    from engines.base import SamplingParams
    from engines.vllm_engine import VLLMEngine
    from runtime.config import load_config
    cfg = load_config(None, [f"model.name_or_path={directory}", "model.dtype=bfloat16", "rollout.engine=vllm",
                             "rollout.weight_sync=nccl", "rollout.gpus_per_worker=1", "learner.gpus_per_rank=1",
                             "placement.mode=disaggregated", "rollout.gpu_memory_utilization=0.3",
                             "rollout.enable_sleep=false", "rollout.vllm_enforce_eager=true",
                             "rollout.max_context_tokens=128", "rollout.max_new_tokens=16"])
    engine = VLLMEngine(cfg.model, cfg.rollout, seed=0)
    meta = json.load(open(os.path.join(directory, "meta.json")))
    t0 = time.perf_counter()
    engine.init_weight_transfer("127.0.0.1", port, rank_offset=1, world_size=2)
    print(f"[engine] joined in {time.perf_counter() - t0:.1f}s", flush=True)
    params = SamplingParams(temperature=1.0, max_new_tokens=16, seed=0)
    out = {"0": engine.generate([PROMPT], params)[0].__dict__}
    for v in VERSIONS:
        t0 = time.perf_counter()
        engine.receive_weights(meta)
        engine.weight_version = v
        print(f"[engine] received version {v} in {time.perf_counter() - t0:.2f}s", flush=True)
        out[str(v)] = engine.generate([PROMPT], params)[0].__dict__
    json.dump(out, open(os.path.join(directory, "engine_out.json"), "w"))
    engine.close()


def actors_main(directory: str, port: int) -> None:
    """The pipeline's own path on a local Ray: LearnerGroup (DeepSpeed ZeRO-3, 1 rank, 2nd GPU) and a vLLM
    RolloutWorker (1st GPU, other random weights), init_nccl_weight_sync + sync_weights from pipelines/kernel_grpo.py;
    the worker samples before and after, the learner recomputes the log-probs of both samples."""
    import ray
    from actors.learner import LearnerGroup
    from actors.rollout import start_rollout_worker
    from engines.base import SamplingParams
    from pipelines.kernel_grpo import init_nccl_weight_sync, sync_weights
    from rlcore.types import TurnSample
    from runtime.config import load_config
    cfg = load_config(None, [f"model.name_or_path={directory}", "model.random_init=true", "model.dtype=bfloat16",
                             "rollout.engine=vllm", "rollout.weight_sync=nccl", "rollout.gpus_per_worker=1",
                             "learner.backend=deepspeed", "learner.gpus_per_rank=1", "learner.num_ranks=1",
                             "learner.zero_stage=3", "placement.mode=disaggregated",
                             "rollout.gpu_memory_utilization=0.3", "rollout.enable_sleep=false",
                             "rollout.vllm_enforce_eager=true", "rollout.max_context_tokens=128",
                             "rollout.max_new_tokens=16", "rollout.temperature=1.0", "ray.get_timeout_s=300",
                             "algo.tasks_per_step=1", "algo.trajectories_per_task=2", "algo.max_turns=1",
                             "learner.micro_batch_samples=1"])
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    ray.init(num_gpus=2, num_cpus=8, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "NCCL_NVLS_ENABLE": "0"}})
    worker = start_rollout_worker(cfg.model, cfg.rollout, seed=cfg.run.seed + 7, name="wt-rollout")
    learner = LearnerGroup(cfg, name="wt-learner")
    params = SamplingParams(temperature=1.0, max_new_tokens=16, seed=0)
    out = {"before": ray.get(worker.generate.remote([PROMPT], params), timeout=300)[0].__dict__}
    meta = init_nccl_weight_sync(cfg, learner, [worker], 300)
    for v in (1, 2):                                   # the group is reused
        t0 = time.perf_counter()
        sync_weights(cfg, learner, [worker], v, 300)
        print(f"[actors] sync {v}: {time.perf_counter() - t0:.2f}s", flush=True)
    out["after"] = ray.get(worker.generate.remote([PROMPT], params), timeout=300)[0].__dict__
    out["version"] = ray.get(worker.weight_version.remote(), timeout=60)
    out["tensors"] = len(meta["names"])
    refs = [ray.put(TurnSample(task_name="t", trajectory_id=i, turn=0, prompt_ids=g["prompt_ids"],
                               token_ids=g["token_ids"], logprobs=g["logprobs"], text="", finish_reason="length",
                               weight_version=0)) for i, g in enumerate((out["before"], out["after"]))]
    out["learner_before"], out["learner_after"] = learner.get(learner.async_logprobs(refs))
    json.dump(out, open(os.path.join(directory, "actors_out.json"), "w"))
    learner.shutdown()
    ray.shutdown()


# ------------------------------------------------------------------------------------------------------ the test
def _tail(path: str, n: int = 3000) -> str:
    try:
        return open(path, errors="replace").read()[-n:]
    except OSError:
        return ""


def run_sides(directory: str, roles: tuple = ("engine", "learner"), timeout_s: float = 420.0) -> None:
    """Start each role in its own process (engine: 1st visible GPU, learner: 2nd, actors: both), wait for all;
    raise with every log's tail on failure."""
    from engines.weight_transfer import free_port
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()] or ["0", "1"]
    gpus = {"engine": visible[0], "learner": visible[1], "actors": ",".join(visible[:2])}
    port = free_port()
    procs, logs = {}, {}
    for role in roles:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpus[role], NCCL_NVLS_ENABLE="0",
                   PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        logs[role] = os.path.join(directory, f"{role}.log")
        procs[role] = subprocess.Popen([sys.executable, os.path.abspath(__file__), role, directory, str(port)],
                                       cwd=ROOT, env=env, stdout=open(logs[role], "w"), stderr=subprocess.STDOUT,
                                       start_new_session=True)
    deadline = time.monotonic() + timeout_s
    failed = ""
    try:
        while any(p.poll() is None for p in procs.values()):
            bad = [r for r, p in procs.items() if p.poll() not in (None, 0)]
            if bad:
                failed = f"{bad[0]} exited with {procs[bad[0]].returncode}"
                break
            if time.monotonic() > deadline:
                failed = f"timeout after {timeout_s:.0f}s"
                break
            time.sleep(0.5)
        bad = [r for r, p in procs.items() if p.poll() not in (None, 0)]
        if not failed and bad:
            failed = f"{bad[0]} exited with {procs[bad[0]].returncode}"
    finally:
        for p in procs.values():
            end_process_group(p)
    if failed:
        raise AssertionError(failed + "".join(f"\n--- {r} log ---\n{_tail(logs[r])}" for r in roles))


def _need(*modules: str) -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs (learner and engine on different GPUs); {torch.cuda.device_count()} visible")
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {missing} (vLLM: source .vllmkit/activate.sh; Ray, DeepSpeed: source .kit/activate.sh)")


def test_nccl_sync_from_a_torch_learner_updates_the_vllm_engine(tmp_path):
    _need("vllm")
    from engines.weight_transfer import transfer_metadata
    directory = str(tmp_path)
    write_model(directory)
    meta = transfer_metadata(load_version(directory, 0), torch.bfloat16, buffer_bytes=BUFFER_BYTES)
    assert "lm_head.weight" not in meta["names"]                   # tied: vLLM shares the embedding
    json.dump(meta, open(os.path.join(directory, "meta.json"), "w"))
    run_sides(directory)
    out = json.load(open(os.path.join(directory, "engine_out.json")))
    previous = None
    for v in (0,) + VERSIONS:
        gen = out[str(v)]
        assert gen["token_ids"] and len(gen["logprobs"]) == len(gen["token_ids"])
        ref = torch.tensor(token_logprobs(load_version(directory, v), PROMPT, gen["token_ids"]))
        got = torch.tensor(gen["logprobs"])
        err = (got - ref).abs()
        assert err.max() < MATCH_MAX and err.mean() < MATCH_MEAN, \
            f"version {v}: engine log-probs differ from the sent weights' (max {err.max():.3f}, mean {err.mean():.3f})"
        if previous is not None:
            old = torch.tensor(token_logprobs(previous, PROMPT, gen["token_ids"]))
            assert (got - old).abs().mean() > DIFFER_MEAN, f"version {v}: engine still matches version {v - 1}"
        previous = load_version(directory, v)


def test_nccl_sync_through_the_actors_with_deepspeed_zero3(tmp_path):
    """LearnerGroup (DeepSpeed ZeRO-3) -> vLLM RolloutWorker through the controller's init and sync functions: before
    the sync the engine's log-probs are another model's, after it they are the learner's own."""
    _need("vllm", "ray", "deepspeed")
    tok = os.path.join(ROOT, ".benchextra", "tokenizer")
    if not os.path.isdir(tok):
        pytest.skip("needs the SmolLM2 tokenizer in .benchextra/tokenizer (bash benchmarks/build_extra.sh)")
    import shutil
    config_cls, _ = _model_cls()
    directory = str(tmp_path)
    for f in os.listdir(tok):
        shutil.copy(os.path.join(tok, f), directory)
    cfg = config_cls(**dict(SHAPE, vocab_size=49152))
    cfg.architectures = ["Qwen2ForCausalLM"]
    cfg.save_pretrained(directory)                     # config only: model.random_init builds seeded weights
    run_sides(directory, roles=("actors",), timeout_s=480)
    out = json.load(open(os.path.join(directory, "actors_out.json")))
    assert out["version"] == 2 and out["tensors"] > 0
    before = (torch.tensor(out["before"]["logprobs"]) - torch.tensor(out["learner_before"])).abs()
    after = (torch.tensor(out["after"]["logprobs"]) - torch.tensor(out["learner_after"])).abs()
    assert before.mean() > 0.1, f"before the sync the engine already matched the learner ({before.mean():.3f})"
    assert after.max() < 0.1 and after.mean() < MATCH_MEAN, \
        f"after the sync: engine vs learner log-probs max {after.max():.3f}, mean {after.mean():.3f}"


if __name__ == "__main__":
    role, directory, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    {"learner": learner_main, "engine": engine_main, "actors": actors_main}[role](directory, port)
