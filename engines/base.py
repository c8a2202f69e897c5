"""The generation interface every rollout engine implements, and `make_engine`.

An engine turns prompts given as token ids into generations given as token ids, plus the log-probability of every
sampled token under the distribution the engine sampled from. Token ids are never re-tokenized: the learner trains on
exactly `Generation.token_ids`, and `Generation.text` is only decoded from them.

Log-probabilities (both engines): log softmax(logits / temperature) at the sampled token, i.e. exactly what
`rlcore.losses.token_logprobs(logits, targets, temperature)` recomputes, as long as top_p == 1. With top_p < 1 the
engine samples from the nucleus renormalized to sum 1 and returns the log-prob under that renormalized distribution
(what vLLM's logprobs_mode="processed_logprobs" gives); the learner does not apply top-p, so importance ratios no longer
start at 1 — keep rollout.top_p=1 for training and use top_p < 1 for evaluation only.

    python -c "from runtime.config import load_config; from engines.base import make_engine, SamplingParams; \
cfg = load_config(overrides=['model.tiny_random=true']); e = make_engine(cfg.model, cfg.rollout, seed=0); \
print(e.generate([[1, 2, 3]], SamplingParams(max_new_tokens=8, seed=0)))"
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, replace
from typing import Optional

import torch


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: Optional[int] = None      # same seed (and weights, prompt): same tokens; None: fresh randomness

    def validate(self) -> "SamplingParams":
        if not self.temperature > 0:
            raise ValueError(f"SamplingParams.temperature: must be > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p: must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens: must be >= 1, got {self.max_new_tokens}")
        return self

    def for_row(self, i: int) -> "SamplingParams":
        """Params of the i-th prompt of a `generate` call: each prompt gets its own seed (seed + i), so a prompt's
        tokens do not depend on what else is in the batch."""
        return self if self.seed is None else replace(self, seed=self.seed + i)


@dataclass
class Generation:
    prompt_ids: list[int]
    token_ids: list[int]        # as sampled, EOS included when the model stopped on it
    logprobs: list[float]       # one per token_ids entry (see the module docstring for which distribution)
    text: str                   # decoded token_ids (special tokens skipped); "" when the engine has no tokenizer
    finish_reason: str          # "stop" (EOS) | "length" (max_new_tokens)


class Engine(abc.ABC):
    """One model behind generate / load_weights / sleep / wake_up. Not thread-safe: one caller at a time
    (engines/driver.py's EngineDriver calls an engine from one thread only).

    Two ways to generate:
      batch      `generate_each(prompts, params)` runs a whole batch to completion (every engine).
      streaming  engines with `supports_streaming` also take requests one at a time: `start_request` adds a request
                 to the running batch, each `step` advances every request in flight by one engine iteration and
                 returns the ones that finished. This is continuous batching: a request that arrives while others
                 are decoding joins at the next step instead of waiting for the whole batch. `load_weights`, `sleep`
                 and `generate_each` must only be called with nothing in flight (the driver drains first).
    """

    weight_version: int = 0
    supports_streaming: bool = False

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        """One generation per prompt; prompt i samples with seed params.seed + i (when a seed is given)."""
        return self.generate_each(prompts, [params.for_row(i) for i in range(len(prompts))])

    @abc.abstractmethod
    def generate_each(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Generation]:
        """Like `generate`, with one SamplingParams per prompt (how the RolloutWorker batches separate requests)."""

    # ------------------------------------------------------------------ streaming (engines with supports_streaming)
    def start_request(self, prompt: list[int], params: SamplingParams) -> str:
        """Add one request to the running batch; returns its handle (unique per engine). Raises on a bad request
        (nothing is added then)."""
        raise NotImplementedError(f"{type(self).__name__} does not stream; use generate_each")

    def step(self) -> list[tuple[str, Generation]]:
        """Advance every request in flight by one engine iteration; (handle, Generation) of those that finished."""
        raise NotImplementedError(f"{type(self).__name__} does not stream; use generate_each")

    def abort(self, handles: list[str]) -> None:
        """Drop requests in flight (unknown or finished handles are ignored); they are never returned by `step`."""
        raise NotImplementedError(f"{type(self).__name__} does not stream")

    def num_in_flight(self) -> int:
        """Requests started and neither returned by `step` nor aborted."""
        return 0

    @abc.abstractmethod
    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the weights in place with `state` (names as in the transformers model's state_dict)."""

    def sleep(self, level: int = 1) -> None:
        """Free accelerator memory until wake_up (no-op where there is nothing to free)."""

    def wake_up(self) -> None:
        """Undo sleep."""

    def close(self) -> None:
        """Release the model (the engine is unusable afterwards)."""


def make_engine(model_cfg, rollout_cfg, seed: int = 0, device: Optional[str] = None,
                hf_streaming: bool = False) -> Engine:
    """The engine that `rollout_cfg.engine` names. `seed` seeds tiny random weights (same seed as the learner's, so
    both start from the same model). `device`, `hf_streaming`: hf only; device defaults to cuda when available, else
    cpu; hf_streaming turns on the hf engine's cache-less streaming mode (see engines/hf_engine.py: for tests of the
    continuous-batching path on CPU, not for training)."""
    if rollout_cfg.engine == "hf":
        from engines.hf_engine import HFEngine
        return HFEngine(model_cfg, seed=seed, device=device, max_batch_sequences=rollout_cfg.max_concurrent_sequences,
                        streaming=hf_streaming)
    if rollout_cfg.engine == "vllm":
        from engines.vllm_engine import VLLMEngine
        return VLLMEngine(model_cfg, rollout_cfg, seed=seed)
    raise ValueError(f"rollout.engine: unknown engine {rollout_cfg.engine!r}; allowed: 'hf', 'vllm'")
