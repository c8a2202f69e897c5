"""Replays a training step of a transformers model on PyTorch's meta device and reports the peak of live tensor
bytes: how the planner's formulas were calibrated without a GPU (no memory is allocated, no math is done).

What it models: every tensor an ATen op creates (a dispatch mode counts its storage until the storage is freed),
CUDA autocast(bf16) for linears and attention, and CUDA's SDPA choice (16-bit: flash, replayed with the CPU flash
op, which saves the same q, k, v, output and log-sum-exp; fp32 with GQA: the math kernel). What it does not: the
caching allocator's rounding, cuBLAS workspaces, DeepSpeed. For the three torch cases of
benchmarks/planner_validate.py it gives 21.00 / 13.34 / 17.13 GiB; the H100 measured 21.11 / 13.42 / 17.25.

    python -m planner.simulate fp32 | fp32_ckpt | bf16      # ~5 s each on 2 CPU cores
"""
from __future__ import annotations

import sys
import weakref

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the storages created under the mode that are still alive (storages of `existing` tensors, e.g.
    the parameters, are not counted, also when a view of them is returned)."""

    def __init__(self, existing=()):
        super().__init__()
        self.cur = self.peak = 0
        self._keep = [t.untyped_storage() for t in existing]
        self._seen = {id(s) for s in self._keep}

    def _free(self, key, n):
        self.cur -= n
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                s = t.untyped_storage()       # the Python storage object lives as long as the storage does
                key, n = id(s), s.nbytes()
                if key in self._seen or n == 0:
                    continue
                self._seen.add(key)
                self.cur += n
                weakref.finalize(s, self._free, key, n)
                self.peak = max(self.peak, self.cur)
        return out


class MetaAutocast(TorchFunctionMode):
    """CUDA autocast(bf16) as far as memory goes (enabled=True), and CUDA's attention kernel choice (always)."""

    def __init__(self, enabled: bool):
        super().__init__()
        self.enabled, self.cache = enabled, {}

    def _cast(self, t):
        if not (self.enabled and isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.bfloat16):
            return t
        if t.is_leaf and t.requires_grad:     # autocast caches casts of parameters for the region
            return self.cache.setdefault(id(t), t.to(torch.bfloat16))
        return t.to(torch.bfloat16)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            return func(*(self._cast(a) for a in args), **{k: self._cast(v) for k, v in kwargs.items()})
        if func is F.scaled_dot_product_attention:
            q, k, v = (self._cast(a) for a in args[:3])
            if q.dtype in (torch.bfloat16, torch.float16):
                return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    q, k, v, 0.0, bool(kwargs.get("is_causal", False)), scale=kwargs.get("scale"))[0]
            from torch.nn.attention import SDPBackend, sdpa_kernel
            with sdpa_kernel([SDPBackend.MATH]):
                return func(q, k, v, *args[3:], **kwargs)
        return func(*args, **kwargs)

    def __exit__(self, *exc):
        self.cache.clear()
        return super().__exit__(*exc)


def replay_validation_case(mode: str, layers: int = 24, batch: int = 2, seq: int = 1024) -> float:
    """Peak GPU bytes of planner_validate's torch case `mode` (fp32, fp32_ckpt, bf16): two steps of forward,
    rlcore.losses.token_logprobs, backward, AdamW, zero_grad(set_to_none=False), as the benchmark runs them."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    import transformers.models.qwen2.modeling_qwen2 as q2
    from planner.validate import SHAPE as s
    from rlcore.losses import token_logprobs
    cfg = Qwen2Config(hidden_size=s.hidden_size, intermediate_size=s.intermediate_size, num_hidden_layers=layers,
                      num_attention_heads=s.num_heads, num_key_value_heads=s.num_kv_heads, vocab_size=s.vocab_size,
                      tie_word_embeddings=True, attn_implementation="sdpa")
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    if mode == "fp32_ckpt":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, foreach=True)
    ids = torch.zeros(batch, seq, dtype=torch.long, device="meta")                   # [B, S]
    mask_fn, q2.create_causal_mask = q2.create_causal_mask, (lambda **kw: None)     # no mask: CUDA's is_causal path
    params = list(model.parameters()) + list(model.buffers())
    live = LiveBytes(params)
    try:
        with live:
            for _ in range(2):
                with MetaAutocast(mode == "bf16"):
                    logits = model(input_ids=ids, use_cache=False).logits        # [B, S, V]
                loss = -token_logprobs(logits[:, :-1], ids[:, 1:]).mean()
                del logits
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=False)
    finally:
        q2.create_causal_mask = mask_fn
    return sum(p.numel() * p.element_size() for p in model.parameters()) + live.peak


if __name__ == "__main__":
    for m in sys.argv[1:] or ["fp32", "fp32_ckpt", "bf16"]:
        print(f"{m}: {replay_validation_case(m) / 1024 ** 3:.2f} GiB", flush=True)
