"""What every learner backend shares: building TrainSamples, padding them into tensors, the GRPO micro-batch loss,
the warm-up schedule and the training loop over parts and micro-batches.

A backend (torch_learner.TorchLearner, deepspeed_learner.DeepSpeedLearner) supplies only the model-specific hooks:
`_logits` (forward), `_ref_logits`, `_backward`, `_optimizer_step`, `current_lr`. The loop is:

    batch of N samples --split--> gradient_steps parts --split--> micro-batches of learner.micro_batch_samples
    for each part: zero grads; for each micro-batch: loss_mb.backward(); clip grad norm; optimizer step; lr step

The micro-batch losses of one part add up exactly to the loss of the whole part (the normalizer is the part's size,
not the micro-batch's), so the accumulated gradient equals the full-part gradient.

Alignment: sequence = prompt_ids + response_ids, right-padded. logits at position t predict token t+1; only the
response tokens count (mask). The learner recomputes log-probs at the sampling temperature, so before the first
update ratio = exp(logp_new - logp_sampling) = 1 up to numerics.

    python -m pytest tests/test_learner.py -q
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from learners.logprobs import token_logprobs_entropy
from rlcore.losses import clipped_policy_loss
from rlcore.types import TrainSample, TurnSample


class LearnerError(RuntimeError):
    """A learner input or state problem; the message names it."""


# ------------------------------------------------------------------------------------------------------ samples
def build_train_samples(turns: Sequence[TurnSample], advantages: Sequence[float]) -> list[TrainSample]:
    """One TrainSample per TurnSample: its exact generated tokens, its sampling log-probs and its advantage."""
    if len(turns) != len(advantages):
        raise LearnerError(f"{len(turns)} samples but {len(advantages)} advantages")
    out = []
    for t, a in zip(turns, advantages):
        if len(t.logprobs) != len(t.token_ids):
            raise LearnerError(f"sample {t.task_name}/{t.trajectory_id}/turn {t.turn}: {len(t.token_ids)} tokens but "
                               f"{len(t.logprobs)} sampling log-probs")
        out.append(TrainSample(prompt_ids=list(t.prompt_ids), response_ids=list(t.token_ids),
                               sampling_logprobs=list(t.logprobs), advantage=float(a),
                               weight_version=t.weight_version,
                               meta={"task": t.task_name, "trajectory_id": t.trajectory_id, "turn": t.turn}))
    return out


def padding_sample(like: TrainSample) -> TrainSample:
    """A sample that runs through forward/backward but contributes nothing (all of its tokens are masked out).
    Ranks pad their slice to the same count so that every rank does the same number of forwards (ZeRO-3 gathers
    parameters collectively in forward)."""
    return TrainSample(prompt_ids=list(like.prompt_ids), response_ids=list(like.response_ids),
                       sampling_logprobs=list(like.sampling_logprobs), advantage=0.0,
                       weight_version=like.weight_version, meta={"padding": True})


def split_even(items: Sequence, parts: int) -> list[list]:
    """Split into `parts` contiguous chunks whose sizes differ by at most one (first chunks larger)."""
    if parts <= 0:
        raise LearnerError(f"cannot split into {parts} parts")
    n = len(items)
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(list(items[start:start + size]))
        start += size
    return out


@dataclass
class RankShares:
    """How one batch is cut over data-parallel ranks: rank r trains `slices[r]` (contiguous, sizes differ by at most
    one, larger first) padded with masked-out copies up to `pad_to` samples, so that every rank runs the same number
    of forwards (ZeRO-3 gathers parameters collectively in each)."""
    slices: list
    pad_to: int


def split_for_ranks(items: Sequence, world_size: int) -> RankShares:
    """Split `items` (samples or their refs) over `world_size` ranks; see RankShares. Rank 0 holds the largest slice,
    so it never trains padding; a slice may be empty only when there are fewer items than ranks."""
    slices = split_even(list(items), world_size)
    return RankShares(slices, max(len(s) for s in slices) if slices else 0)


def enable_activation_checkpointing(model) -> None:
    """Recompute activations in backward (non-reentrant: works with ZeRO-3 and frozen inputs)."""
    fn = getattr(model, "activation_checkpointing_enable", None)    # the newer transformers name
    if fn is not None:
        fn(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def decoder_layers(model) -> list:
    """The repeated decoder blocks: modules whose class the model lists in `_no_split_modules` (transformers names its
    decoder layer there, e.g. Qwen2DecoderLayer)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def compile_decoder_layers(model) -> int:
    """torch.compile each decoder layer's forward (its norms, rotary, SiLU*up and residual adds fuse into a few
    kernels; module hooks, e.g. ZeRO-3's, stay outside the compiled code). The first call per shape compiles (tens
    of seconds); a second sequence length recompiles once with a dynamic length. Returns the number of layers."""
    layers = decoder_layers(model)
    for m in layers:
        m.forward = torch.compile(m.forward)
    return len(layers)


def gather_state_dict(module: torch.nn.Module, rank: int, gather: Optional[Callable[[list], Any]],
                      dtype: torch.dtype) -> Optional[dict]:
    """The full state dict as CPU tensors (floating ones in `dtype`) on rank 0, None on other ranks. `gather` (None:
    parameters are whole on every rank) makes a context in which the listed parameters are whole, collectively
    (ZeRO-3's GatheredParameters): every rank must call this, and every rank enters the same gathers in the same
    order -- a tied parameter (e.g. embed_tokens / lm_head) is gathered once, on every rank, and exported under both
    names; a rank that gathered it a second time would wait forever for the others."""
    def export(x: torch.Tensor) -> Optional[torch.Tensor]:
        if rank != 0:
            return None
        return x.detach().to("cpu", dtype=dtype if x.is_floating_point() else x.dtype, copy=True)

    params = {id(p) for p in module.parameters()}
    out: dict[str, torch.Tensor] = {}
    done: dict[int, Optional[torch.Tensor]] = {}
    for key, t in module.state_dict(keep_vars=True).items():
        if id(t) not in done:
            if gather is not None and id(t) in params:
                with gather([t]):
                    done[id(t)] = export(t.data)
            else:
                done[id(t)] = export(t)
        if rank == 0:
            out[key] = done[id(t)]
    return out if rank == 0 else None


def chunks(items: Sequence, size: int) -> list[list]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


@dataclass
class Batch:
    """Right-padded tensors of one micro-batch. K = number of kept logit positions (response region)."""
    input_ids: torch.Tensor        # [B, T] prompt + response, right-padded
    attention_mask: torch.Tensor   # [B, T]
    targets: torch.Tensor          # [B, K] token predicted at each kept position
    mask: torch.Tensor             # [B, K] 1 where the target is a (non-padding-sample) response token
    old_logprobs: torch.Tensor     # [B, K] sampling log-probs aligned with targets (0 where mask is 0)
    advantages: torch.Tensor       # [B]
    logits_to_keep: int            # the model returns logits of the last logits_to_keep positions (K + 1)
    start: int                     # sequence position of the first kept logit
    resp_ranges: list              # per sample (first, end) indices into K of its response tokens


def collate(samples: Sequence[TrainSample], pad_id: int, device: torch.device | str = "cpu") -> Batch:
    """Pad samples into a Batch. Only positions from the shortest prompt on get logits (long multi-turn prompts would
    otherwise dominate the [B, T, V] logits memory)."""
    if not samples:
        raise LearnerError("empty micro-batch")
    for s in samples:
        if not s.prompt_ids or not s.response_ids:
            raise LearnerError(f"sample {s.meta}: needs a non-empty prompt and response")
        if len(s.sampling_logprobs) != len(s.response_ids):
            raise LearnerError(f"sample {s.meta}: {len(s.response_ids)} response tokens but "
                               f"{len(s.sampling_logprobs)} sampling log-probs")
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
    T = max(lengths)
    start = min(len(s.prompt_ids) for s in samples) - 1          # logit position predicting the earliest response token
    K = T - 1 - start
    B = len(samples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, K), dtype=torch.float32)
    old = torch.zeros((B, K), dtype=torch.float32)
    ranges = []
    for b, s in enumerate(samples):
        seq = list(s.prompt_ids) + list(s.response_ids)
        input_ids[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        attn[b, :len(seq)] = 1
        first = len(s.prompt_ids) - 1 - start                     # index in K of the first response target
        end = first + len(s.response_ids)
        ranges.append((first, end))
        old[b, first:end] = torch.tensor(s.sampling_logprobs, dtype=torch.float32)
        if not s.meta.get("padding"):
            mask[b, first:end] = 1.0
    targets = input_ids[:, start + 1:]                            # [B, K]
    adv = torch.tensor([s.advantage for s in samples], dtype=torch.float32)   # [B]
    dev = torch.device(device)
    return Batch(input_ids.to(dev), attn.to(dev), targets.to(dev), mask.to(dev), old.to(dev), adv.to(dev),
                 logits_to_keep=K + 1, start=start, resp_ranges=ranges)


def model_inputs(batch: Batch) -> dict:
    """Keyword arguments of the policy forward. No attention mask: sequences are right-padded, so under the causal
    mask a real token never sees a pad, and positions are 0..T-1 either way; outputs at real positions are exactly the
    masked ones. Without a mask, SDPA takes its flash kernel (is_causal) instead of the slower masked kernel."""
    return {"input_ids": batch.input_ids, "logits_to_keep": batch.logits_to_keep, "use_cache": False}


# ------------------------------------------------------------------------------------------------------ schedule
def warmup_steps(total_optimizer_steps: int, warmup_ratio: float) -> int:
    return int(math.ceil(max(0.0, warmup_ratio) * max(0, total_optimizer_steps)))


def lr_factor(step: int, warmup: int) -> float:
    """Linear warm-up, then constant. Step 0 already moves (factor 1/(W+1), never 0); factor 1 from step W on."""
    if warmup <= 0:
        return 1.0
    return min(1.0, (step + 1) / (warmup + 1))


# ------------------------------------------------------------------------------------------------------ backend
class LearnerBackend:
    """The GRPO training loop; subclasses provide the model hooks. `algo` = AlgoConfig, `learner` = LearnerConfig,
    `constant_length` = rollout.max_new_tokens (Dr. GRPO's constant), `temperature` = rollout.temperature."""

    def __init__(self, algo, learner, constant_length: int, temperature: float, pad_id: int,
                 total_optimizer_steps: int):
        self.algo = algo
        self.lcfg = learner
        self.constant_length = int(constant_length)
        self.temperature = float(temperature)
        self.pad_id = int(pad_id)
        self.total_optimizer_steps = int(total_optimizer_steps)
        self.warmup = warmup_steps(total_optimizer_steps, learner.warmup_ratio)
        self.step = 0                      # optimizer steps taken (the scheduler's position)
        self.device = torch.device("cpu")

    # hooks -------------------------------------------------------------------------------------------------
    def _logits(self, batch: Batch) -> torch.Tensor:               # [B, K+1, V]
        raise NotImplementedError

    def _ref_logits(self, batch: Batch) -> Optional[torch.Tensor]:  # [B, K+1, V] or None without KL
        return None

    def _zero_grad(self) -> None:
        raise NotImplementedError

    def _begin_micro_batch(self, last_in_part: bool) -> None:
        """Called before each micro-batch's forward (DeepSpeed marks the accumulation boundary here)."""

    def _backward(self, loss: torch.Tensor, last_in_part: bool) -> None:
        raise NotImplementedError

    def _optimizer_step(self) -> float:
        """Clip, step optimizer and scheduler; return the pre-clip grad norm."""
        raise NotImplementedError

    def current_lr(self) -> float:
        raise NotImplementedError

    def train_mode(self, on: bool) -> None:
        raise NotImplementedError

    def _data_parallel_world(self) -> int:
        """Ranks whose gradients the backend AVERAGES after backward (DeepSpeed: its world size). 1 = no averaging;
        above 1, torch.distributed must be initialized and every rank must call train_batch / logprobs together."""
        return 1

    def _global_part_counts(self, sequences: float, tokens: float) -> tuple[float, float, float]:
        """(sequences, tokens, loss factor) that make the gradient averaged over ranks equal the gradient of the whole
        part on one rank: every rank divides by the counts summed over ranks (real samples only, not padding) and
        multiplies by the world size (the backend then divides by it). One tiny all-reduce per part on every rank."""
        world = self._data_parallel_world()
        if world == 1:
            return sequences, tokens, 1.0
        import torch.distributed as dist
        t = torch.tensor([sequences, tokens], dtype=torch.float64, device=self.device)   # [2]
        dist.all_reduce(t)
        return float(t[0]), float(t[1]), float(world)

    # shared ------------------------------------------------------------------------------------------------
    def _part_loss_scale(self, mb: Batch, part_sequences: int, part_tokens: float) -> float:
        """Factor that makes the micro-batch losses sum to the part loss for the non-constant normalizations."""
        if self.algo.length_normalization == "token_mean":
            return float(mb.mask.sum().clamp(min=1.0)) / max(part_tokens, 1.0)
        if self.algo.length_normalization == "sequence_mean":
            return mb.input_ids.shape[0] / part_sequences
        return 1.0

    def micro_batch_loss(self, mb: Batch, part_sequences: int, part_tokens: float):
        """GRPO loss of one micro-batch (normalized by the part), its loss terms and its entropy sum (a tensor)."""
        logits = self._logits(mb)                                            # [B, K+1, V]
        logp, ent_tok = token_logprobs_entropy(logits, mb.targets, self.temperature)   # [B, K] x2
        del logits                                                           # autograd keeps what backward needs
        logp_ref = None
        if self.algo.kl_coef > 0:
            ref = self._ref_logits(mb)
            if ref is None:
                raise LearnerError("algo.kl_coef > 0 but no reference model is loaded")
            with torch.no_grad():
                logp_ref = token_logprobs_entropy(ref, mb.targets, self.temperature)[0]   # [B, K]
            del ref
        out = clipped_policy_loss(logp, mb.old_logprobs, mb.advantages, mb.mask,
                                  self.algo.clip_eps_low, self.algo.clip_eps_high,
                                  normalization=self.algo.length_normalization,
                                  constant_length=self.constant_length, num_sequences=part_sequences,
                                  logp_ref=logp_ref, kl_coef=self.algo.kl_coef)
        loss = out.loss * self._part_loss_scale(mb, part_sequences, part_tokens)
        ent = (ent_tok * mb.mask).sum()                                      # scalar tensor
        return loss, out, ent

    def train_batch(self, samples: Sequence[TrainSample], gradient_steps: int) -> dict:
        """`gradient_steps` optimizer steps over `samples` (split into that many parts). Returns metrics of the batch:
        loss (sum over parts of each part's loss / parts), clip_fraction, ratio_mean/min/max, grad_norm (mean of the
        steps' pre-clip norms), entropy, kl (token means), lr (after the last step), tokens, seconds, tokens_per_s."""
        t0 = time.perf_counter()
        if len(samples) < gradient_steps:
            raise LearnerError(f"{len(samples)} samples cannot be split into {gradient_steps} gradient steps")
        self.train_mode(True)
        acc = _MetricAcc()
        for part in split_even(list(samples), gradient_steps):
            real = [s for s in part if not s.meta.get("padding")]
            part_seqs, part_tokens, factor = self._global_part_counts(
                float(len(real)), float(sum(len(s.response_ids) for s in real)))
            mbs = chunks(part, self.lcfg.micro_batch_samples)
            self._zero_grad()
            for i, mb_samples in enumerate(mbs):
                self._begin_micro_batch(last_in_part=(i == len(mbs) - 1))
                mb = collate(mb_samples, self.pad_id, self.device)
                loss, out, ent = self.micro_batch_loss(mb, max(part_seqs, 1.0), part_tokens)
                if factor != 1.0:
                    loss = loss * factor
                self._backward(loss, last_in_part=(i == len(mbs) - 1))
                acc.add_micro(mb, loss, out, ent)
            acc.add_step(self._optimizer_step())
            self.step += 1
        m = acc.result(gradient_steps)
        # 1.0 when liger's fused kernels run in the model (learners/fused_kernels.py); a number, so metric sinks keep it
        m["fused_kernels_liger"] = 1.0 if str(getattr(self, "fused_kernels", "")).startswith("liger") else 0.0
        m["lr"] = self.current_lr()
        m["seconds"] = time.perf_counter() - t0
        m["tokens_per_s"] = m["tokens"] / max(m["seconds"], 1e-9)
        m["optimizer_step"] = self.step
        return m

    @torch.no_grad()
    def logprobs(self, samples: Sequence[TrainSample]) -> list[list[float]]:
        """Log-probs of each sample's response tokens under the current weights, at the sampling temperature.

        With several data-parallel ranks every rank must call it with the same samples (a ZeRO-3 forward gathers
        parameters collectively: a forward on one rank alone waits forever). Each rank then computes its even share
        (padded to the same number of forwards) and all ranks return the whole list."""
        world = self._data_parallel_world()
        samples = [_unpadded(s) for s in samples]
        if world == 1 or not samples:
            return self._local_logprobs(samples)
        import torch.distributed as dist
        rank = dist.get_rank()
        shares = split_for_ranks(samples, world)
        mine = shares.slices[rank] or [samples[0]]                       # an empty share still runs the forwards
        mine = mine + [mine[-1]] * (shares.pad_to - len(mine))
        got = self._local_logprobs(mine)[:len(shares.slices[rank])]
        every: list = [None] * world
        dist.all_gather_object(every, got)
        return [lp for part in every for lp in part]

    def _local_logprobs(self, samples: Sequence[TrainSample]) -> list[list[float]]:
        self.train_mode(False)
        out: list[list[float]] = []
        try:
            for mb_samples in chunks(list(samples), self.lcfg.micro_batch_samples):
                mb = collate(mb_samples, self.pad_id, self.device)
                logp = token_logprobs_entropy(self._logits(mb), mb.targets, self.temperature)[0].cpu()   # [B, K]
                out.extend(logp[b, a:e].tolist() for b, (a, e) in enumerate(mb.resp_ranges))
        finally:
            self.train_mode(True)
        return out


def _unpadded(s: TrainSample) -> TrainSample:
    return s if not s.meta.get("padding") else TrainSample(s.prompt_ids, s.response_ids, s.sampling_logprobs, 0.0)


class _MetricAcc:
    """Token-weighted metric sums over micro-batches and steps."""

    def __init__(self):
        self.loss = 0.0
        self.tokens = 0.0
        self.clip = 0.0
        self.ratio = 0.0
        self.kl = 0.0
        self.entropy = 0.0
        self.rmin = math.inf
        self.rmax = -math.inf
        self.grad_norms: list[float] = []
        self.samples = 0

    def add_micro(self, mb: Batch, loss: torch.Tensor, out, ent_sum: torch.Tensor) -> None:
        n = float(mb.mask.sum())
        self.loss += float(loss.detach())
        self.samples += int(mb.input_ids.shape[0])
        if n == 0:
            return
        self.tokens += n
        self.clip += out.clip_fraction * n
        self.ratio += out.ratio_mean * n
        self.kl += out.kl * n
        self.entropy += float(ent_sum)
        self.rmin = min(self.rmin, out.ratio_min)
        self.rmax = max(self.rmax, out.ratio_max)

    def add_step(self, grad_norm: float) -> None:
        self.grad_norms.append(float(grad_norm))

    def result(self, steps: int) -> dict:
        n = max(self.tokens, 1.0)
        return {"loss": self.loss / steps, "clip_fraction": self.clip / n, "ratio_mean": self.ratio / n if self.tokens
                else 1.0, "ratio_min": self.rmin if self.tokens else 1.0, "ratio_max": self.rmax if self.tokens else 1.0,
                "grad_norm": sum(self.grad_norms) / max(len(self.grad_norms), 1), "entropy": self.entropy / n,
                "kl": self.kl / n, "tokens": int(self.tokens), "samples": self.samples}
