"""`hf` engine: batched sampling with a transformers causal LM, on CPU or one GPU.

Why a sampling loop of its own instead of `model.generate`: the engine must return the log-prob of every sampled
token under exactly the distribution it sampled from, and a seeded prompt must give the same tokens whatever else is
in its batch. Here every row has its own torch.Generator (seed = SamplingParams.seed) and samples by the Gumbel-max
trick on its own noise, so batching (which the RolloutWorker does across requests) does not change a seeded row's
draw. Rows without a seed share one generator seeded from the engine seed and a call counter.

Batches: prompts are sorted by length, cut into chunks of at most `max_batch_sequences`, left-padded, prefilled once
and decoded with a KV cache; finished rows leave the batch (their cache rows are dropped), so long stragglers do not
keep paying for short ones. Limits: no continuous batching (a chunk runs until its last row finishes; the
RolloutWorker starts the next batch from everything queued the moment a call returns, see engines/driver.py), no
speculative decoding, memory grows with chunk size x (prompt + max_new_tokens).

Streaming mode (`streaming=True`, make_engine(..., hf_streaming=True)): the Engine streaming interface
(start_request / step / abort) without a KV cache: every step runs one left-padded forward over each request's prompt
and tokens so far and samples one token per request. It exists so that the continuous-batching path of the
RolloutWorker runs (and is tested) on CPU with a real model; it costs O(length^2) per request, so it is not for
training. A seeded request draws the same noise per token as in `generate_each`, so both modes give the same tokens.

    python -m pytest tests/test_engines.py -q
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Optional

import torch

from engines.base import Engine, Generation, SamplingParams
from engines.models import load_model, load_tokenizer


def sample_rows(logits: torch.Tensor, temperatures: torch.Tensor, top_ps: torch.Tensor,
                noise_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row and return (tokens [B], logprobs [B]).

    logits [B, V] (any float dtype), temperatures [B], top_ps [B], noise_u [B, V] uniform(0, 1) noise.
    Log-probs are under softmax(logits / T) restricted to the top-p nucleus and renormalized (the distribution the
    token was drawn from); with top_p = 1 that is log_softmax(logits / T), as rlcore.losses.token_logprobs computes.
    """
    logp = torch.log_softmax(logits.float() / temperatures[:, None], dim=-1)          # [B, V]
    if bool((top_ps < 1.0).any()):
        sorted_lp, order = torch.sort(logp, dim=-1, descending=True)                  # [B, V]
        cum = sorted_lp.exp().cumsum(-1)                                                # [B, V]
        # keep a token if the mass strictly before it is below top_p (the top token is always kept)
        keep_sorted = (cum - sorted_lp.exp()) < top_ps[:, None]                        # [B, V]
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)           # [B, V]
        logp = logp.masked_fill(~keep, float("-inf"))
        logp = logp - torch.logsumexp(logp, dim=-1, keepdim=True)                      # renormalize the nucleus
    gumbel = -torch.log(-torch.log(noise_u.clamp(min=1e-20, max=1.0 - 1e-7)))         # [B, V]
    tokens = torch.argmax(logp + gumbel, dim=-1)                                        # [B]
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)                         # [B], [B]


@dataclass
class _StreamRow:
    prompt: list[int]
    params: SamplingParams
    gen: torch.Generator
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


class HFEngine(Engine):
    def __init__(self, model_cfg, seed: int = 0, device: Optional[str] = None, max_batch_sequences: int = 64,
                 model=None, tokenizer=None, streaming: bool = False):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # model_cfg may be None when a model is given: then tokenizer may be None too (Generation.text is "")
        self.tokenizer = tokenizer if tokenizer is not None or model_cfg is None else load_tokenizer(model_cfg)
        self.model = model if model is not None else load_model(model_cfg, seed=seed, device=self.device)
        self.model.eval()
        self.max_batch_sequences = max_batch_sequences
        self.seed = seed
        self.weight_version = 0
        self._calls = itertools.count()
        self._asleep = False
        self.supports_streaming = bool(streaming)
        self._live: dict[str, _StreamRow] = {}
        self._handles = itertools.count()
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = sorted(eos_ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer is not None else None
        self.pad_id = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)

    def __repr__(self) -> str:
        return f"HFEngine({type(self.model).__name__}, device={self.device}, weight_version={self.weight_version})"

    # ------------------------------------------------------------------------------------------------- generation
    def generate_each(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Generation]:
        if len(prompts) != len(params):
            raise ValueError(f"generate_each: {len(prompts)} prompts but {len(params)} SamplingParams")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"generate_each: prompt {i} is empty (needs at least one token id)")
        for p in params:
            p.validate()
        if self._asleep:
            raise RuntimeError("HFEngine.generate_each: the engine is asleep; call wake_up() first")
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Optional[Generation]] = [None] * len(prompts)
        call = next(self._calls)
        for start in range(0, len(order), self.max_batch_sequences):
            idx = order[start:start + self.max_batch_sequences]
            for i, g in zip(idx, self._generate_chunk([prompts[i] for i in idx], [params[i] for i in idx], call)):
                out[i] = g
        return out  # type: ignore[return-value]

    def _generators(self, params: list[SamplingParams], call: int) -> list[torch.Generator]:
        gens = []
        shared = torch.Generator(device=self.device).manual_seed(hash((self.seed, call)) & 0x7FFFFFFF)
        for p in params:
            gens.append(shared if p.seed is None else torch.Generator(device=self.device).manual_seed(p.seed))
        return gens

    @torch.no_grad()
    def _generate_chunk(self, prompts: list[list[int]], params: list[SamplingParams], call: int) -> list[Generation]:
        dev = self.device
        b = len(prompts)
        max_len = max(len(p) for p in prompts)
        ids = torch.full((b, max_len), self.pad_id, dtype=torch.long)                  # [B, L] left-padded
        mask = torch.zeros((b, max_len), dtype=torch.long)                             # [B, L]
        for r, p in enumerate(prompts):
            ids[r, max_len - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, max_len - len(p):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)                                      # [B, L]
        temps = torch.tensor([p.temperature for p in params], device=dev)              # [B]
        top_ps = torch.tensor([p.top_p for p in params], device=dev)                   # [B]
        gens = self._generators(params, call)
        eos = torch.tensor(self.eos_ids, dtype=torch.long, device=dev)
        vocab = None

        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        logits = out.logits[:, -1]                                                     # [B, V]
        active = list(range(b))            # original row of each batch row still generating
        tokens: list[list[int]] = [[] for _ in range(b)]
        lps: list[list[float]] = [[] for _ in range(b)]
        finish = ["length"] * b
        last_pos = pos[:, -1]                                                          # [B]
        while True:
            vocab = logits.shape[-1]
            noise = torch.stack([torch.rand(vocab, generator=gens[r], device=dev) for r in active])   # [b, V]
            tok, lp = sample_rows(logits, temps[active], top_ps[active], noise)        # [b], [b]
            is_eos = torch.isin(tok, eos)
            tok_l, lp_l, eos_l = tok.tolist(), lp.tolist(), is_eos.tolist()
            keep = []
            for k, r in enumerate(active):
                tokens[r].append(tok_l[k])
                lps[r].append(lp_l[k])
                if eos_l[k]:
                    finish[r] = "stop"
                elif len(tokens[r]) < params[r].max_new_tokens:
                    keep.append(k)
            if not keep:
                break
            if len(keep) < len(active):
                sel = torch.tensor(keep, device=dev)
                cache.batch_select_indices(sel)
                mask, last_pos, tok = mask[sel], last_pos[sel], tok[sel]
                active = [active[k] for k in keep]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)              # [b, L+1]
            last_pos = last_pos + 1                                                    # [b]
            out = self.model(input_ids=tok[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                             past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1]                                                 # [b, V]
        return [Generation(prompt_ids=list(prompts[r]), token_ids=tokens[r], logprobs=lps[r],
                           text=self._decode(tokens[r]), finish_reason=finish[r])
                for r in range(b)]

    # ------------------------------------------------------------------------------------------------- streaming
    def start_request(self, prompt: list[int], params: SamplingParams) -> str:
        if not self.supports_streaming:
            raise NotImplementedError("HFEngine.start_request: construct with streaming=True")
        if not prompt:
            raise ValueError("HFEngine.start_request: empty prompt (needs at least one token id)")
        params.validate()
        if self._asleep:
            raise RuntimeError("HFEngine.start_request: the engine is asleep; call wake_up() first")
        n = next(self._handles)
        seed = params.seed if params.seed is not None else hash((self.seed, -1 - n)) & 0x7FFFFFFF
        handle = f"hf-{n}"
        self._live[handle] = _StreamRow(list(prompt), params, torch.Generator(device=self.device).manual_seed(seed))
        return handle

    @torch.no_grad()
    def step(self) -> list[tuple[str, Generation]]:
        if not self._live:
            return []
        dev = self.device
        handles = list(self._live)
        rows = [self._live[h] for h in handles]
        seqs = [r.prompt + r.tokens for r in rows]
        width = max(len(q) for q in seqs)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)          # [B, L] left-padded
        mask = torch.zeros((len(rows), width), dtype=torch.long)                     # [B, L]
        for i, q in enumerate(seqs):
            ids[i, width - len(q):] = torch.tensor(q, dtype=torch.long)
            mask[i, width - len(q):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)                                     # [B, L]
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
        vocab = logits.shape[-1]                                                     # logits [B, V]
        noise = torch.stack([torch.rand(vocab, generator=r.gen, device=dev) for r in rows])          # [B, V]
        temps = torch.tensor([r.params.temperature for r in rows], device=dev)                      # [B]
        top_ps = torch.tensor([r.params.top_p for r in rows], device=dev)                           # [B]
        tok, lp = sample_rows(logits, temps, top_ps, noise)                                          # [B], [B]
        done = []
        for h, r, t, l in zip(handles, rows, tok.tolist(), lp.tolist()):
            r.tokens.append(t)
            r.logprobs.append(l)
            reason = "stop" if t in self.eos_ids else "length" if len(r.tokens) >= r.params.max_new_tokens else None
            if reason is not None:
                del self._live[h]
                done.append((h, Generation(prompt_ids=r.prompt, token_ids=r.tokens, logprobs=r.logprobs,
                                           text=self._decode(r.tokens), finish_reason=reason)))
        return done

    def abort(self, handles: list[str]) -> None:
        for h in handles:
            self._live.pop(h, None)

    def num_in_flight(self) -> int:
        return len(self._live)

    def _decode(self, toks: list[int]) -> str:
        return self.tokenizer.decode(toks, skip_special_tokens=True) if self.tokenizer is not None else ""

    # ------------------------------------------------------------------------------------------------- weights
    @torch.no_grad()
    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Copy `state` into the model in place. Every key must be a model parameter/buffer; every parameter must be
        given except a tied lm_head (it shares the embedding's storage)."""
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if getattr(self.model.config, "tie_word_embeddings", False) else set()
        missing = [k for k in missing if k not in tied]
        if unexpected or missing:
            raise ValueError(f"HFEngine.load_weights: state dict does not match the model: "
                             f"unexpected {unexpected[:5]}, missing {missing[:5]}")

    def sleep(self, level: int = 1) -> None:
        """On a GPU: move the weights to CPU memory (level is ignored). On CPU: nothing to free."""
        if self.device.type == "cuda" and not self._asleep:
            self.model.to("cpu")
            torch.cuda.empty_cache()
        self._asleep = self.device.type == "cuda"

    def wake_up(self) -> None:
        if self._asleep:
            self.model.to(self.device)
        self._asleep = False

    def close(self) -> None:
        self.model = None
