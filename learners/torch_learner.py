"""The `torch` learner backend: one process, CPU or one GPU, fp32 or bf16 autocast over fp32 master weights, AdamW.

It does not average gradients across processes: `learner.num_ranks > 1` needs the `deepspeed` backend (the group
refuses torch with several ranks rather than train N diverging copies).

    python -m pytest tests/test_learner.py tests/test_learning_check.py -q
"""
from __future__ import annotations

import copy
import os
import random
from typing import Optional

import numpy as np
import torch

from learners.base import (Batch, LearnerBackend, LearnerError, compile_decoder_layers,
                           enable_activation_checkpointing, gather_state_dict, lr_factor, model_inputs)
from learners.fused_kernels import apply_fused_kernels


def adamw(params: list, lcfg, states_on_gpu: Optional[bool] = None) -> torch.optim.AdamW:
    """torch AdamW over `params`; fused (one CUDA kernel per step instead of a chain of multi-tensor ops) when
    learner.fused_optimizer is on and the tensors it will step are on a GPU (`states_on_gpu`; default: every
    parameter is a floating-point CUDA tensor), else torch's default."""
    if states_on_gpu is None:
        states_on_gpu = bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)
    fused = bool(lcfg.fused_optimizer) and states_on_gpu
    return torch.optim.AdamW(params, lr=lcfg.lr, weight_decay=lcfg.weight_decay, **({"fused": True} if fused else {}))


def total_optimizer_steps(cfg) -> int:
    """run.total_steps batches x algo.gradient_steps_per_batch optimizer steps each."""
    return int(cfg.run.total_steps) * int(cfg.algo.gradient_steps_per_batch)


def pad_token_id(tokenizer) -> int:
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pid if pid is not None else 0)


class TorchLearner(LearnerBackend):
    """GRPO learner on one device. `model` / `ref_model` may be given (tests, custom models); else they are loaded
    from cfg.model with seed cfg.run.seed (the same seed the rollout engine uses, so a tiny random model matches).
    The reference model is loaded only when algo.kl_coef > 0 and is a frozen copy of the initial policy."""

    def __init__(self, cfg, device: Optional[str] = None, model=None, pad_id: Optional[int] = None,
                 compile_layers: bool = False):
        if pad_id is None:
            from engines.models import load_tokenizer
            pad_id = pad_token_id(load_tokenizer(cfg.model))
        super().__init__(cfg.algo, cfg.learner, cfg.rollout.max_new_tokens, cfg.rollout.temperature, pad_id,
                         total_optimizer_steps(cfg))
        self.cfg = cfg
        self.device = torch.device(device or ("cuda" if cfg.learner.gpus_per_rank > 0 and torch.cuda.is_available()
                                              else "cpu"))
        if model is None:
            from engines.models import load_model
            model = load_model(_with_dtype(cfg.model, "float32"), seed=cfg.run.seed, device=self.device)
        self.model = model.to(device=self.device, dtype=torch.float32)     # fp32 master weights
        self.fused_kernels = apply_fused_kernels(self.model, cfg.learner.fused_kernels, self.device)
        if self.device.type == "cuda":
            print(f"[learner] fused kernels: {self.fused_kernels}", flush=True)
        self.ref_model = None
        if cfg.algo.kl_coef > 0:
            self.ref_model = copy.deepcopy(self.model).eval()
            apply_fused_kernels(self.ref_model, cfg.learner.fused_kernels, self.device)   # rebinds to the copy
            for p in self.ref_model.parameters():
                p.requires_grad_(False)
        if cfg.learner.gradient_checkpointing:
            enable_activation_checkpointing(self.model)
        if compile_layers:
            compile_decoder_layers(self.model)
        self.autocast_dtype = torch.bfloat16 if cfg.learner.precision == "bf16" else None
        self.export_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                             "float16": torch.float16}[cfg.model.dtype]
        self.optimizer = adamw([p for p in self.model.parameters() if p.requires_grad], cfg.learner)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, self.warmup))
        self.model.train()

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return (f"TorchLearner(params={n / 1e6:.1f}M, device={self.device}, fused_kernels={self.fused_kernels}, "
                f"step={self.step})")

    # hooks -------------------------------------------------------------------------------------------------
    def _forward(self, model, batch: Batch) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            out = model(**model_inputs(batch))
        return out.logits                                                   # [B, K+1, V]

    def _logits(self, batch: Batch) -> torch.Tensor:
        return self._forward(self.model, batch)

    @torch.no_grad()
    def _ref_logits(self, batch: Batch) -> Optional[torch.Tensor]:
        return None if self.ref_model is None else self._forward(self.ref_model, batch)

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def _backward(self, loss: torch.Tensor, last_in_part: bool) -> None:
        loss.backward()

    def _optimizer_step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.lcfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return float(norm)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train_mode(self, on: bool) -> None:
        self.model.train(on)

    # weights and checkpoints -------------------------------------------------------------------------------
    @torch.no_grad()
    def state_dict_cpu(self) -> dict[str, torch.Tensor]:
        """Full weights as CPU tensors in the engine's dtype (model.dtype); a tied weight is one tensor under both
        names."""
        return gather_state_dict(self.model, 0, None, self.export_dtype)

    def save(self, directory: str) -> str:
        """Weights, optimizer, scheduler, step counter and RNG states into `directory`/learner.pt (atomic rename)."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "learner.pt")
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "step": self.step,
                 "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                         "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
        if self.ref_model is not None:
            state["ref_model"] = self.ref_model.state_dict()
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)
        return path

    def load(self, directory: str) -> None:
        path = os.path.join(directory, "learner.pt")
        if not os.path.exists(path):
            raise LearnerError(f"no learner checkpoint at {path}")
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        if self.ref_model is not None and "ref_model" in state:
            self.ref_model.load_state_dict(state["ref_model"])
        rng = state.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"].cpu())
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
            if rng.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])


def _with_dtype(model_cfg, dtype: str):
    c = copy.copy(model_cfg)
    c.dtype = dtype
    return c
