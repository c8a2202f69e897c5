"""Memory formulas of the resource planner (pure arithmetic on a ModelShape and a Config; bytes unless named _gib).

Sources of the formulas:
- Model states (ZeRO paper, Rajbhandari et al. 2019, arXiv:1910.02054, section 3 / figure 1; DeepSpeed docs
  https://deepspeed.readthedocs.io/en/stable/zero3.html and .../memory.html "API to estimate memory usage"):
  mixed-precision Adam keeps 2 (bf16 params) + 2 (bf16 grads) + 12 (fp32 master, momentum, variance) = 16 bytes per
  parameter. Per GPU with N data-parallel ranks: stage 0: 16P; stage 1: 4P + 12P/N; stage 2: 2P + 14P/N;
  stage 3: 16P/N. Pure fp32 Adam is 4 + 4 + 8 = 16 bytes per parameter, split the same way. ZeRO-3 also holds the
  gathered largest module (DeepSpeed's estimate: 4 bytes x largest layer). Optimizer offload (ZeRO-Offload) moves the
  fp32 states and fp32 gradients to CPU; DeepSpeed sizes the pinned CPU side with a 1.5 buffer factor
  (`additional_buffer_factor=1.5` in estimate_zero3_model_states_mem_needs).
- Activations: per-layer saved-tensor count in the style of Korthikanti et al. 2022 (arXiv:2205.05198, section 4),
  redone for the Llama/Qwen2 layer that transformers runs with SDPA/flash attention (no s^2 term, no dropout):
  per token and layer, RMSNorm x2 (fp32 input 4h, normed e*h, output e*h), q/k/v/attention output
  e*(2h + 2*kv_dim) plus the fp32 log-sum-exp 4*heads, SwiGLU MLP 4*e*intermediate. Counted against
  torch.autograd.graph.saved_tensors_hooks on CPU: within 0.5% (tests/test_planner.py). With gradient
  checkpointing (HF per-layer, non-reentrant) only each layer's input e*h is kept, plus one layer recomputed in
  backward (HF docs "GPU memory usage" / model_memory_anatomy: activations are the part checkpointing removes).
- Logits: the learners ask for logits of the response positions only (logits_to_keep), in the compute dtype; the
  fused log-prob function (learners/logprobs.py) keeps them and writes one gradient of the same dtype (no fp32
  copy). The reference loss rlcore.losses.token_logprobs holds five fp32 copies at its backward peak (logits_bytes).
- Attention: flash (16-bit, no mask) keeps q, k, v, output and log-sum-exp; fp32 with GQA falls back to the math
  kernel and keeps the [B, heads, S, S] softmax (uses_math_attention). bf16 autocast over fp32 weights keeps fp32
  norms and one bf16 cast per consuming linear (layer_activation_bytes_per_token).
- KV cache: 2 (K and V) x layers x kv_heads x head_dim x bytes per token (vLLM docs, CacheConfig; the
  gpu_memory_utilization fraction of *total* GPU memory is what one vLLM instance claims:
  https://docs.vllm.ai/en/v0.26.0/api/vllm/config/cache/). With tensor parallelism each GPU holds kv_heads / tp heads
  (at least one: heads are replicated when tp > kv_heads).

Limits (stated, not hidden): sizes are worst case (every sequence at max_context_tokens + max_new_tokens); allocator
fragmentation and NCCL buffers are covered only by placement.cuda_context_gib; vLLM's own activation profile and CUDA
graph pool are estimated (VLLM_PROFILE_TOKENS tokens of one layer's MLP plus a fixed pool); quantization other than
fp8 / 4-bit is treated as the model dtype. Validated on a GPU by benchmarks/planner_validate.py.

    python launch.py plan --config configs/<recipe>.yaml
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from planner.model_shape import ModelShape

GIB = 1024 ** 3
OFFLOAD_BUFFER_FACTOR = 1.5          # DeepSpeed's additional_buffer_factor for pinned CPU optimizer memory
VLLM_PROFILE_TOKENS = 8192           # vLLM's default max_num_batched_tokens for its dummy profiling batch
VLLM_GRAPH_POOL_BYTES = 0.5 * GIB    # CUDA graph capture pool (vLLM logs ~0.2-1 GiB for dense models)
EVAL_PROCESS_CPU_BYTES = 1.0 * GIB   # RSS of one compile worker / sandbox process (torch import + compiler)
RAY_NODE_CPU_BYTES = 2.0 * GIB       # raylet, GCS, dashboard, driver on a node

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
QUANT_WEIGHT_BYTES = {"fp8": 1.0, "awq": 0.5, "gptq": 0.5, "int4": 0.5, "bitsandbytes": 0.5}


# ----------------------------------------------------------------------------------------------- learner states
@dataclass
class ModelStates:
    """Per learner GPU (gpu_*) and in total on CPU (cpu_*), bytes."""
    gpu_params: float
    gpu_grads: float
    gpu_optimizer: float
    gpu_gather: float               # ZeRO-3: the largest module gathered whole during forward/backward
    cpu_offload: float              # pinned CPU memory of offloaded states, all ranks together

    @property
    def gpu_total(self) -> float:
        return self.gpu_params + self.gpu_grads + self.gpu_optimizer + self.gpu_gather


def bytes_per_param(precision: str) -> tuple[int, int, int]:
    """(param, grad, optimizer) bytes per parameter of Adam: bf16 mixed precision 2/2/12, fp32 4/4/8 (both 16)."""
    return (2, 2, 12) if precision == "bf16" else (4, 4, 8)


def model_state_bytes(num_params: int, largest_module: int, stage: int, num_ranks: int, precision: str,
                      offload_optimizer: bool = False, offload_params: bool = False) -> ModelStates:
    """ZeRO model states per GPU (ZeRO paper, figure 1): stage s partitions optimizer (s>=1), grads (s>=2),
    params (s=3) over num_ranks. Offload (stage >= 1) moves the optimizer states and fp32 gradients to CPU;
    parameter offload (stage 3 only) leaves only the gathered working set on the GPU."""
    P, N = float(num_params), max(1, num_ranks)
    pb, gb, ob = bytes_per_param(precision)
    params = pb * P / (N if stage >= 3 else 1)
    grads = gb * P / (N if stage >= 2 else 1)
    optim = ob * P / (N if stage >= 1 else 1)
    gather = 2 * pb * largest_module if stage >= 3 else 0.0   # params + grads of the gathered module
    cpu = 0.0
    if offload_optimizer and stage >= 1:
        cpu += (ob + 4) * P * OFFLOAD_BUFFER_FACTOR           # fp32 states + fp32 grads, pinned
        optim = 0.0
        grads = grads if stage < 2 else min(grads, gb * largest_module)   # only a bucket stays on the GPU
    if offload_params and stage >= 3:
        cpu += pb * P
        params = 0.0
    return ModelStates(params, grads, optim, gather, cpu)


# ----------------------------------------------------------------------------------------------- activations
def uses_math_attention(shape: ModelShape, e: int) -> bool:
    """fp32 compute with grouped KV heads runs SDPA's math kernel on CUDA: flash needs 16-bit inputs and the
    memory-efficient kernel has no GQA (torch sdp_utils: check_batch_size_and_num_heads_dense<false>). The math
    kernel keeps the [B, heads, S, S] softmax for backward. Measured: torch_fp32 in
    benchmarks/results/planner_validate_h100.json was 3.96 GiB over the flash-only formula."""
    return e == 4 and shape.num_kv_heads < shape.num_heads


def layer_activation_bytes_per_token(shape: ModelShape, e: int, autocast: bool = False,
                                     math_attention: bool | None = None) -> float:
    """Saved tensors of one decoder layer per token, compute dtype of e bytes (see the module docstring).

    autocast (fp32 weights, bf16 autocast): the residual stream and the RMSNorm outputs stay fp32, and autocast casts
    a norm's output to bf16 once per consuming linear (q, k, v: 3 casts; gate, up: 2), each saved by its linear:
    10 h bytes per token more than pure bf16 (torch_bf16 in planner_validate_h100.json; replayed on the meta device
    by planner.simulate). With math attention (see uses_math_attention) q, k, v are saved expanded to all heads and
    the output is copied once more for o_proj: 4 e h per token, plus attention_scores_bytes per sequence.
    math_attention: None follows the CUDA rule of uses_math_attention; False for CPU torch, whose flash kernel
    takes fp32 and GQA."""
    h, kvd, i = shape.hidden_size, shape.num_kv_heads * shape.head_dim, shape.intermediate_size
    if autocast:
        norms = 2 * (4 * h + 4 * h + 4) + 2 * (3 + 2) * h  # fp32 input and normed; 5 bf16 casts of the outputs
    else:
        norms = 2 * (4 * h + 2 * e * h + 4)             # fp32 input, normed, output, fp32 rstd; two norms
    if uses_math_attention(shape, e) if math_attention is None else math_attention:
        attn = 4 * e * h                                # q, repeated k and v, o_proj's input copy
    else:
        attn = e * (2 * h + 2 * kvd) + 4 * shape.num_heads  # q, k, v, output (flash); fp32 log-sum-exp per head
    mlp = 4 * e * i                                     # gate, silu(gate), up, silu(gate)*up
    return norms + attn + mlp


def attention_scores_bytes(shape: ModelShape, sequences: int, seq_len: int, e: int) -> float:
    """Math-kernel attention: the softmax [sequences, heads, S, S] one layer keeps for backward (0 with flash)."""
    return sequences * shape.num_heads * seq_len * seq_len * e if uses_math_attention(shape, e) else 0.0


def activation_bytes(shape: ModelShape, tokens: int, e: int, checkpointing: bool, autocast: bool = False,
                     seq_len: int = 0) -> float:
    """Activations kept for backward over `tokens` tokens (micro-batch x sequence of seq_len), plus the backward's
    transient: one layer's worth of gradients (and, with checkpointing, one layer recomputed)."""
    scores = attention_scores_bytes(shape, tokens // seq_len, seq_len, e) if seq_len else 0.0
    per_layer = layer_activation_bytes_per_token(shape, e, autocast) * tokens + scores
    final_norm = (4 * shape.hidden_size + 2 * e * shape.hidden_size) * tokens
    if checkpointing:
        return shape.num_layers * e * shape.hidden_size * tokens + final_norm + 2 * per_layer
    return shape.num_layers * per_layer + final_norm + per_layer


def logits_bytes(shape: ModelShape, positions: int, e: int, path: str = "fused") -> float:
    """Logit-sized tensors alive at the loss's backward peak.

    fused (learners/logprobs.py, the learners' path): the model's logits in the compute dtype, kept by the fused
    function, and their gradient written in the same dtype: 2 e bytes per position and vocabulary entry.
    reference (rlcore.losses.token_logprobs, what benchmarks/planner_validate.py ran): five fp32 [T, V] tensors at
    once while logsumexp's backward runs: the upcast-and-scaled logits it saved, the gathered gradient waiting in
    autograd's buffer, (x - log Z), its exp and the product (planner_validate_h100.json: 4 copies under-predicted
    torch_fp32 / _ckpt / bf16; the meta-device replay in planner.simulate shows the five)."""
    per = 2 * e if path == "fused" else 5 * 4
    return positions * shape.vocab_size * per


# ----------------------------------------------------------------------------------------------- rollout engines
def kv_cache_bytes(shape: ModelShape, sequences: int, tokens_per_sequence: int, e: float, tp: int = 1) -> float:
    """KV cache of `sequences` sequences of `tokens_per_sequence` tokens on one GPU of a tp-way engine."""
    heads_per_gpu = max(1, math.ceil(shape.num_kv_heads / max(1, tp)))
    per_token = 2 * shape.num_layers * heads_per_gpu * shape.head_dim * e
    return sequences * tokens_per_sequence * per_token


def weight_bytes(shape: ModelShape, dtype: str, quantization: str | None = None, tp: int = 1) -> float:
    per_param = QUANT_WEIGHT_BYTES.get((quantization or "").lower(), DTYPE_BYTES[dtype])
    return shape.num_params * per_param / max(1, tp)


def hf_generate_bytes(shape: ModelShape, sequences: int, prompt_tokens: int, new_tokens: int, e: int) -> dict:
    """transformers generate on one device: weights, dynamic KV cache at full length, prefill transient (one layer's
    MLP over all prompt tokens) and the fp32 next-token logits / probabilities."""
    kv = kv_cache_bytes(shape, sequences, prompt_tokens + new_tokens, e)
    prefill = sequences * prompt_tokens * (3 * shape.intermediate_size + 4 * shape.hidden_size) * e
    sampling = sequences * shape.vocab_size * 4 * 3       # logits, processed scores, probabilities
    return {"weights": shape.num_params * e, "kv": kv, "transient": prefill + sampling}


@dataclass
class VllmBudget:
    claimed: float          # gpu_memory_utilization x GPU memory: what the engine takes on each of its GPUs
    weights: float          # per GPU
    overhead: float         # profile activations + CUDA graph pool
    kv_available: float     # what is left for the KV cache
    kv_needed: float        # requested concurrency at full length
    seqs_that_fit: int      # full-length sequences the available KV cache holds

    @property
    def kv_short(self) -> float:
        return max(0.0, self.kv_needed - self.kv_available)


def vllm_budget(shape: ModelShape, gpu_bytes: float, utilization: float, dtype: str, quantization: str | None,
                tp: int, sequences: int, tokens_per_sequence: int) -> VllmBudget:
    """vLLM's memory split on one of its GPUs: claimed = utilization x total; KV = claimed - weights - overhead."""
    e = DTYPE_BYTES[dtype]
    claimed = utilization * gpu_bytes
    weights = weight_bytes(shape, dtype, quantization, tp)
    overhead = (VLLM_PROFILE_TOKENS * (3 * shape.intermediate_size / max(1, tp) + 4 * shape.hidden_size) * e
                + VLLM_GRAPH_POOL_BYTES)
    available = max(0.0, claimed - weights - overhead)
    per_seq = kv_cache_bytes(shape, 1, tokens_per_sequence, e, tp)
    needed = per_seq * sequences
    return VllmBudget(claimed, weights, overhead, available, needed, int(available // per_seq) if per_seq else 0)


@dataclass
class Row:
    """One line of the plan's table."""
    role: str
    item: str
    gpu_bytes: float = 0.0      # per GPU of the role
    cpu_bytes: float = 0.0      # per node
    note: str = ""


@dataclass
class Phase:
    """Peak per-GPU memory of one phase of the step (colocated) or of one role's GPUs (disaggregated)."""
    name: str
    gpu_bytes: float
    parts: dict = field(default_factory=dict)
