"""Validates the resource planner's formulas against measured GPU memory (one GPU, < 4 minutes).

    source .kit/activate.sh && source .vllmkit/activate.sh && python3 benchmarks/planner_validate.py   # on the GPU
    (either kit may be left out: the DeepSpeed / vLLM cases are then skipped and say so)

Model: a randomly initialized Qwen2.5-0.5B-shaped model (no download). Cases, each predicted by planner/memory.py
from the same settings and measured with torch.cuda.max_memory_allocated (tensors only, no CUDA context):
  torch_fp32          one training step: forward (all positions' logits), token_logprobs, loss, backward, AdamW
  torch_fp32_ckpt     the same with gradient checkpointing
  torch_bf16          bf16 autocast over fp32 weights
  zero3 / zero3_offload   DeepSpeed ZeRO-3 (world size 1, bf16), without / with optimizer offload (if importable);
                          offload uses DeepSpeedCPUAdam like the learner (the 2026-11-22 run used torch AdamW)
  hf_generate_c8 / _c32   transformers generate, 8 and 32 sequences of 512 prompt + 256 new tokens (bf16)
  vllm_kv_c16 / _c64      vLLM (if importable): KV cache tokens vLLM reports vs the planner's, generating at 16 and 64
Predictions come from planner/validate.py (the same code tests/test_planner.py checks against the recorded run).
Writes $OUT/planner_validate.json (default ./bench_out) and prints a table (target: |error| <= 15%).
"""
from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from planner import memory as M  # noqa: E402
from planner.model_shape import shape_by_name  # noqa: E402
from planner.validate import predict_generate, predict_torch, predict_zero3  # noqa: E402

SHAPE = shape_by_name("qwen2.5-0.5b")
B, PROMPT, RESP = 2, 768, 256           # training micro-batch: 2 samples of 1024 tokens
GIB = M.GIB


def build_model(dtype=torch.float32, device="cuda"):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    s = SHAPE
    cfg = Qwen2Config(hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
                      num_hidden_layers=s.num_layers, num_attention_heads=s.num_heads,
                      num_key_value_heads=s.num_kv_heads, vocab_size=s.vocab_size, tie_word_embeddings=True,
                      attn_implementation="sdpa")
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg).to(device=device, dtype=dtype), cfg


def _loss(model, ids, autocast):
    from rlcore.losses import token_logprobs
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids, use_cache=False).logits                  # [B, T, V]
    logp = token_logprobs(logits[:, :-1], ids[:, 1:])                          # [B, T-1]
    return -logp.mean()


def _reset():
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def case_torch(checkpointing: bool, bf16: bool) -> dict:
    _reset()
    model, _ = build_model()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = torch.randint(0, SHAPE.vocab_size, (B, PROMPT + RESP), device="cuda")
    for _ in range(2):                                                          # step 2 has the Adam states
        _loss(model, ids, bf16).backward()
        opt.step()
        opt.zero_grad(set_to_none=False)                                       # planner counts grads as resident
    measured = torch.cuda.max_memory_allocated()
    del model, opt
    return {"predicted": predict_torch(checkpointing, bf16)["predicted"], "measured": measured}


def case_zero3(offload: bool) -> dict:
    import deepspeed
    _reset()
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511", "RANK": "0", "WORLD_SIZE": "1",
                 "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(k, v)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl")
    zero = {"stage": 3, "overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": 5e7,
            "stage3_param_persistence_threshold": 1e5, "stage3_prefetch_bucket_size": 5e7}
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    ds_cfg = {"train_micro_batch_size_per_gpu": B, "gradient_accumulation_steps": 1, "train_batch_size": B,
              "bf16": {"enabled": True}, "zero_optimization": zero, "zero_allow_untested_optimizer": True,
              "zero_force_ds_cpu_optimizer": False, "steps_per_print": 10 ** 9}
    with deepspeed.zero.Init(config_dict_or_path=ds_cfg):
        model, _ = build_model(torch.bfloat16, device="cpu")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    if offload:                      # the learner's optimizer with offload (learners/deepspeed_learner.py)
        try:
            from deepspeed.ops.adam import DeepSpeedCPUAdam
            opt = DeepSpeedCPUAdam(model.parameters(), lr=1e-6, adamw_mode=True)
            ds_cfg["zero_force_ds_cpu_optimizer"] = True
        except Exception as e:       # no CPU Adam op: the 2026-11-22 run's setting (torch AdamW), reported
            print(f"[planner_validate] DeepSpeedCPUAdam unavailable ({e}); torch AdamW", flush=True)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_cfg)
    ids = torch.randint(0, SHAPE.vocab_size, (B, PROMPT + RESP), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        loss = _loss(engine, ids, False)
        engine.backward(loss)
        engine.step()
    measured = torch.cuda.max_memory_allocated()
    predicted = predict_zero3(offload)["predicted"]
    engine.destroy()
    del engine, model, opt
    return {"predicted": predicted, "measured": measured}


def case_hf_generate(sequences: int) -> dict:
    _reset()
    model, _ = build_model(torch.bfloat16)
    model.eval()
    ids = torch.randint(0, SHAPE.vocab_size, (sequences, 512), device="cuda")                 # [C, 512] prompts
    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=256, min_new_tokens=256,
                       do_sample=True, pad_token_id=0)
    measured = torch.cuda.max_memory_allocated()
    del model
    return {"predicted": predict_generate(sequences)["predicted"], "measured": measured}


VLLM_CHILD = r'''
import os, sys, torch, json
from vllm import LLM, SamplingParams
path, conc = sys.argv[1], [int(c) for c in sys.argv[2].split(",")]
llm = LLM(model=path, skip_tokenizer_init=True, gpu_memory_utilization=0.5, max_model_len=1024,
          enforce_eager=True, max_num_seqs=max(conc), dtype="bfloat16")
for c in conc:
    prompts = [{"prompt_token_ids": [int(t) for t in torch.randint(0, 150000, (512,))]} for _ in range(c)]
    out = llm.generate(prompts, SamplingParams(max_tokens=256, min_tokens=256, ignore_eos=True))
    print("GENERATED", c, sum(len(o.outputs[0].token_ids) for o in out), flush=True)
'''


def case_vllm(concurrency: list) -> dict:
    import importlib.util
    if importlib.util.find_spec("vllm") is None:
        return {"skipped": "vllm not importable"}
    path = "/tmp/planner_validate_qwen05b"
    model, _ = build_model(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    del model
    _reset()
    proc = subprocess.run([sys.executable, "-c", VLLM_CHILD, path, ",".join(map(str, concurrency))],
                          capture_output=True, text=True, timeout=200)
    text = proc.stdout + proc.stderr
    m = re.search(r"GPU KV cache size: ([\d,]+) tokens", text)
    if proc.returncode or not m:
        return {"skipped": f"vLLM run failed (rc {proc.returncode}): {text[-1500:]}"}
    total = torch.cuda.get_device_properties(0).total_memory
    b = M.vllm_budget(SHAPE, total, 0.5, "bfloat16", None, 1, max(concurrency), 768)
    predicted_tokens = b.kv_available / SHAPE.kv_bytes_per_token(2)
    generated = {int(c): int(n) for c, n in re.findall(r"GENERATED (\d+) (\d+)", text)}
    return {"predicted": predicted_tokens, "measured": int(m.group(1).replace(",", "")), "unit": "KV tokens",
            "generated": generated}


def main() -> int:
    out_dir = os.environ.get("OUT", "bench_out")
    os.makedirs(out_dir, exist_ok=True)
    if not torch.cuda.is_available():
        print("planner_validate: needs a CUDA GPU")
        return 2
    cases = {"torch_fp32": lambda: case_torch(False, False), "torch_fp32_ckpt": lambda: case_torch(True, False),
             "torch_bf16": lambda: case_torch(False, True),
             "hf_generate_c8": lambda: case_hf_generate(8), "hf_generate_c32": lambda: case_hf_generate(32)}
    try:
        import deepspeed  # noqa: F401
        cases["zero3"] = lambda: case_zero3(False)
        cases["zero3_offload"] = lambda: case_zero3(True)
    except Exception as e:                                 # reported, not fatal: the other cases still count
        cases["zero3"] = lambda e=e: {"skipped": f"deepspeed not importable: {type(e).__name__}: {e}"}
    cases["vllm_kv_c16_c64"] = lambda: case_vllm([16, 64])
    results = {}
    for name, fn in cases.items():
        t0 = time.perf_counter()
        try:
            r = fn()
        except Exception as e:                             # one broken case must not hide the others
            r = {"skipped": f"{type(e).__name__}: {e}"}
        r["seconds"] = round(time.perf_counter() - t0, 1)
        if "measured" in r:
            r["error_pct"] = round(100.0 * (r["predicted"] - r["measured"]) / r["measured"], 1)
        results[name] = r
        print(f"[planner_validate] {name}: {r}", flush=True)
    meta = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": "qwen2.5-0.5b random",
            "micro_batch": B, "tokens_per_sample": PROMPT + RESP}
    with open(os.path.join(out_dir, "planner_validate.json"), "w") as fh:
        json.dump({"meta": meta, "results": results}, fh, indent=1)
    print(f"\n| case | predicted | measured | error |\n|---|---|---|---|")
    for name, r in results.items():
        if "measured" in r:
            unit = r.get("unit")
            fmt = (lambda x: f"{x:,.0f}") if unit else (lambda x: f"{x / GIB:.2f} GiB")
            print(f"| {name} | {fmt(r['predicted'])} | {fmt(r['measured'])} | {r['error_pct']:+.1f}% |")
        else:
            print(f"| {name} | - | - | skipped: {r['skipped'][:80]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
