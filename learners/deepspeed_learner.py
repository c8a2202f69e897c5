"""The `deepspeed` learner backend: ZeRO (stage learner.zero_stage, default 3), bf16 compute with fp32 master weights
in the optimizer, optional optimizer / parameter CPU offload, gradient checkpointing. GPU only; deepspeed is imported
lazily so CPU machines never need it.

Process setup: every rank needs MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK in its environment before
construction (actors/learner.py sets them; benchmarks/learner_mfu.py sets a world of 1 itself). All ranks must call
every method together (train_batch, state_dict_cpu, save, load): they contain collectives.

Gradient accumulation is driven by hand (set_gradient_accumulation_boundary before each micro-batch, one engine.step()
per part) with DeepSpeed's own gradient_accumulation_steps = 1, so DeepSpeed does not rescale our loss: the
micro-batch losses already add up to the part loss. DeepSpeed averages gradients over ranks, so each rank divides its
loss by the part's counts summed over all ranks (real samples and tokens; padding excluded) and multiplies it by the
world size (LearnerBackend._global_part_counts): the averaged gradient then equals the gradient of the whole part on
one rank, also when the batch does not split evenly or token counts differ between ranks. Log-probs
(LearnerBackend.logprobs) are computed by all ranks together, each on its share. Weights for the rollout engines
are gathered one parameter at a time (GatheredParameters), so no rank ever holds more than one full tensor on GPU
besides its shard.

Limits: the ZeRO-3 model is built inside zero.Init through transformers' HfDeepSpeedConfig (never materialized whole
on one GPU); the reference model (KL) is a second, optimizer-free ZeRO engine. Not covered on CPU; exercised by the
GPU tests in tests/test_learner.py (-m gpu) and by benchmarks/learner_mfu.py.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from learners.base import (Batch, LearnerBackend, LearnerError, compile_decoder_layers, decoder_layers,
                           enable_activation_checkpointing, gather_state_dict, lr_factor, model_inputs)
from learners.fused_kernels import apply_fused_kernels
from learners.torch_learner import _with_dtype, adamw, pad_token_id, total_optimizer_steps


def deepspeed_config(cfg, world_size: int, with_optimizer: bool = True,
                     zero_overrides: Optional[dict] = None) -> dict:
    """The DeepSpeed config dict for `cfg.learner` (no 'auto' values: everything resolved here). `zero_overrides`
    replace keys of zero_optimization (benchmarks compare settings with it)."""
    lc = cfg.learner
    zero: dict = {"stage": lc.zero_stage, "overlap_comm": True, "contiguous_gradients": True,
                  "reduce_bucket_size": 5e7, "stage3_param_persistence_threshold": 1e5,
                  "stage3_prefetch_bucket_size": 5e7, "stage3_gather_16bit_weights_on_model_save": False}
    if world_size == 1 and lc.zero_stage == 3:
        # One rank holds the whole model anyway: partitioning buys no memory, while gathering and releasing every
        # layer in each pass costs a copy and Python work per layer (micro-batch 4: 16.0% -> 19.1% MFU on an H100).
        zero["stage3_param_persistence_threshold"] = 10 ** 12
    zero.update(zero_overrides or {})
    if lc.offload_optimizer and with_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if lc.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": lc.micro_batch_samples,
        "gradient_accumulation_steps": 1,
        "train_batch_size": lc.micro_batch_samples * world_size,
        "gradient_clipping": lc.max_grad_norm,
        "bf16": {"enabled": True},       # this backend always computes in bf16 (fp32 master weights in the optimizer)
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "wall_clock_breakdown": False,
        "steps_per_print": 10 ** 9,
    }


class DeepSpeedLearner(LearnerBackend):
    """GRPO learner on one rank of a DeepSpeed ZeRO group. `model_factory` may be given (benchmarks: a random Qwen2
    built under the zero.Init context); else the model is loaded from cfg.model with seed cfg.run.seed.
    `leaf_layers` (default on): ZeRO-3 hooks whole decoder layers, not each submodule. `compile_layers`:
    torch.compile each decoder layer; experimental with ZeRO-3 (benchmarks/README.md: its reported grad norm differs
    from the eager run's), so off. `zero_overrides`: keys replacing the zero_optimization settings."""

    def __init__(self, cfg, model_factory=None, pad_id: Optional[int] = None, zero_overrides: Optional[dict] = None,
                 leaf_layers: bool = True, compile_layers: bool = False):
        import deepspeed  # lazy: GPU machines only
        from transformers.integrations import HfDeepSpeedConfig

        if not torch.cuda.is_available():
            raise LearnerError("learner.backend=deepspeed needs a CUDA GPU; use learner.backend=torch on CPU")
        for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
            if var not in os.environ:
                raise LearnerError(f"deepspeed learner: environment variable {var} is not set "
                                   "(actors/learner.py sets it for every rank)")
        if pad_id is None:
            from engines.models import load_tokenizer
            pad_id = pad_token_id(load_tokenizer(cfg.model))
        super().__init__(cfg.algo, cfg.learner, cfg.rollout.max_new_tokens, cfg.rollout.temperature, pad_id,
                         total_optimizer_steps(cfg))
        self.cfg = cfg
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        self.device = torch.device("cuda", torch.cuda.current_device())
        deepspeed.init_distributed(dist_backend="nccl")
        self.ds_config = deepspeed_config(cfg, self.world_size, zero_overrides=zero_overrides)
        # Keep the HfDeepSpeedConfig alive while models are built: transformers then builds them inside zero.Init.
        self._hf_ds = HfDeepSpeedConfig(self.ds_config) if cfg.learner.zero_stage == 3 else None
        build = model_factory or (lambda: _load_policy(cfg, self.device))
        model = build()
        # Before checkpointing / leaf hooks / compile wrap the modules: liger rebinds the norms' and MLPs' forward.
        self.fused_kernels = apply_fused_kernels(model, cfg.learner.fused_kernels, self.device)
        if self.rank == 0:
            print(f"[learner] fused kernels: {self.fused_kernels}", flush=True)
        if cfg.learner.gradient_checkpointing:
            enable_activation_checkpointing(model)
        if leaf_layers and cfg.learner.zero_stage == 3:
            _set_leaf_layers(model)
        if compile_layers:
            compile_decoder_layers(model)
        optimizer = _make_optimizer(model, cfg, self.ds_config)
        warm = self.warmup
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warm)))
        self.ref_engine = None
        if cfg.algo.kl_coef > 0:
            ref_cfg = deepspeed_config(cfg, self.world_size, with_optimizer=False, zero_overrides=zero_overrides)
            ref = build()
            apply_fused_kernels(ref, cfg.learner.fused_kernels, self.device)
            if leaf_layers and cfg.learner.zero_stage == 3:
                _set_leaf_layers(ref)
            ref.eval()
            self.ref_engine = deepspeed.initialize(model=ref, config=ref_cfg)[0]
            self.ref_engine.eval()
        self.export_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                             "float16": torch.float16}[cfg.model.dtype]
        self.engine.train()

    def __repr__(self) -> str:
        return (f"DeepSpeedLearner(rank={self.rank}/{self.world_size}, zero={self.lcfg.zero_stage}, "
                f"fused_kernels={self.fused_kernels}, step={self.step})")

    # hooks -------------------------------------------------------------------------------------------------
    def _forward(self, engine, batch: Batch) -> torch.Tensor:
        out = engine(**model_inputs(batch))
        return out.logits                                                   # [B, K+1, V] bf16

    def _logits(self, batch: Batch) -> torch.Tensor:
        return self._forward(self.engine, batch)

    @torch.no_grad()
    def _ref_logits(self, batch: Batch) -> Optional[torch.Tensor]:
        return None if self.ref_engine is None else self._forward(self.ref_engine, batch)

    def _zero_grad(self) -> None:
        pass                                   # the engine zeroes gradients after its optimizer step

    def _begin_micro_batch(self, last_in_part: bool) -> None:
        # Set before forward as well as backward: ZeRO reduces and steps only at the boundary.
        self.engine.set_gradient_accumulation_boundary(last_in_part)

    def _backward(self, loss: torch.Tensor, last_in_part: bool) -> None:
        self.engine.backward(loss)

    def _optimizer_step(self) -> float:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def current_lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def _data_parallel_world(self) -> int:
        return self.world_size                 # ZeRO averages gradients over the data-parallel ranks

    def train_mode(self, on: bool) -> None:
        self.engine.train(on)

    # weights and checkpoints -------------------------------------------------------------------------------
    @torch.no_grad()
    def state_dict_cpu(self) -> Optional[dict[str, torch.Tensor]]:
        """Full weights (CPU tensors, model.dtype) on rank 0; None on other ranks. Every rank must call it."""
        import deepspeed
        gather = (lambda ps: deepspeed.zero.GatheredParameters(ps, modifier_rank=None)) \
            if self.lcfg.zero_stage == 3 else None
        return gather_state_dict(self.engine.module, self.rank, gather, self.export_dtype)

    def save(self, directory: str) -> str:
        """DeepSpeed checkpoint (sharded weights, optimizer, scheduler) + our step counter. All ranks call it."""
        os.makedirs(directory, exist_ok=True)
        self.engine.save_checkpoint(directory, tag="learner", client_state={"step": self.step})
        return directory

    def load(self, directory: str) -> None:
        path, client = self.engine.load_checkpoint(directory, tag="learner", load_optimizer_states=True,
                                                   load_lr_scheduler_states=True)
        if path is None:
            raise LearnerError(f"no deepspeed learner checkpoint (tag 'learner') in {directory}")
        self.step = int((client or {}).get("step", 0))


def _load_policy(cfg, device: torch.device):
    from engines.models import load_model
    # bf16 weights: DeepSpeed keeps the fp32 master copy inside its optimizer. The rank's own GPU as device: under
    # zero.Init the parameters are already partitioned there, and .to("cpu") would move only their placeholders.
    return load_model(_with_dtype(cfg.model, "bfloat16"), seed=cfg.run.seed, device=device)


def _set_leaf_layers(model) -> None:
    """ZeRO-3 fetches each decoder layer's parameters as one unit: hooks on the layer instead of on each of its ~10
    submodules. ZeRO-3's Python hooks, not the GPU, bound a step of a small model (profiled: benchmarks/README.md);
    one layer's full parameters are live at a time, which is what ZeRO-3 prefetching holds anyway."""
    from deepspeed.utils import set_z3_leaf_modules
    classes = list({type(m) for m in decoder_layers(model)})
    if classes:
        set_z3_leaf_modules(model, classes)


def _make_optimizer(model, cfg, ds_config: dict):
    """AdamW. With optimizer offload DeepSpeed wants its CPU Adam (a JIT-built op); without, torch's AdamW on the
    fp32 partitions (fused per learner.fused_optimizer) avoids building DeepSpeed's FusedAdam op."""
    params = [p for p in model.parameters() if p.requires_grad]
    lc = cfg.learner
    if lc.offload_optimizer:
        try:
            from deepspeed.ops.adam import DeepSpeedCPUAdam
            return DeepSpeedCPUAdam(params, lr=lc.lr, weight_decay=lc.weight_decay, adamw_mode=True)
        except Exception as e:                      # op build failed: torch AdamW on CPU still works, slower
            print(f"[learner] DeepSpeedCPUAdam unavailable ({type(e).__name__}: {e}); using torch AdamW on CPU",
                  flush=True)
            ds_config["zero_force_ds_cpu_optimizer"] = False
            return torch.optim.AdamW(params, lr=lc.lr, weight_decay=lc.weight_decay)   # states go to CPU
    # ZeRO hands the optimizer its fp32 partitions on this rank's GPU (no offload), whatever device the model was
    # built on; fused per learner.fused_optimizer.
    return adamw(params, lc, states_on_gpu=True)
