"""Prompts of the multi-turn kernel task (pure: no Ray, no model; a tokenizer only for the budget).

Turn 0: one user message = the task's reference architecture, the instructions of the Kevin recipe adapted to the
backend ("cuda": raw CUDA kernels for an NVIDIA H100; "cpu": C++ CPU kernels with raw loops, load_inline with
cpp_sources), and a one-shot example (an elementwise add written with load_inline, for that backend).
Turn t > 0: the same user message without the example, then for every earlier turn still in the budget an assistant
message (its kernel in a fenced block and its summary; never its chain of thought) and a user message (the
evaluator's feedback, ending with "Restart your reasoning process and generate new, complete code.").
The model's chat template turns the messages into token ids (`encode_with_budget`).

Budget (rollout.max_context_tokens, counted on the templated prompt including the generation prompt):
  1. earlier turns are dropped oldest first until the prompt fits (the number dropped is returned);
  2. on turn 0 (no history) the one-shot example is truncated: first its reference Model is left out, then the whole
     example;
  3. if even the bare base prompt (the task source and the instructions) is too long, it is returned as is, over the
     budget: the task source is never cut (a partial architecture would be a different task). The caller can see it
     (len(prompt_ids) > max_context_tokens); RolloutWorker counts such prompts in its stats, and an engine whose
     context is shorter than the prompt rejects that request.

    python -m pytest tests/test_kernel_prompts.py -q
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

from rlcore.types import TurnRecord

RESTART = "Restart your reasoning process and generate new, complete code."

_INSTRUCTIONS = {
    "cuda": (
        "Replace pytorch operators in the given architecture with raw CUDA kernels, optimizing for performance on "
        "NVIDIA H100 (e.g. shared memory, kernel fusion, warp primitives, vectorization, ...). Use "
        "torch.utils.cpp_extension.load_inline and name your optimized output architecture ModelNew. You're not "
        "allowed to use torch.nn (except for Parameter, containers, and init). The input and output have to be on "
        "CUDA device."),
    "cpu": (
        "Replace pytorch operators in the given architecture with C++ CPU kernels with raw loops, optimizing for "
        "performance on this CPU (e.g. loop fusion, cache blocking, vectorization, OpenMP, ...). Use "
        "torch.utils.cpp_extension.load_inline with cpp_sources (no cuda_sources) and name your optimized output "
        "architecture ModelNew. You're not allowed to use torch.nn (except for Parameter, containers, and init), and "
        "the kernels must not call ATen compute functions (torch::empty and data_ptr are fine). The input and output "
        "stay on the CPU."),
}
_ANSWER_RULES = (
    "Your answer must be the complete new architecture (no testing code, no other code): it will be evaluated and "
    "you will be given feedback on its correctness and speedup so you can keep iterating, trying to maximize the "
    "speedup. After your answer, summarize your changes in a few sentences.")

_EXAMPLE_MODEL = '''import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()

    def forward(self, a, b):
        return a + b


def get_inputs():
    return [torch.randn(1, 128), torch.randn(1, 128)]


def get_init_inputs():
    return []
'''

_EXAMPLE_NEW = {
    "cuda": '''import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

source = """
#include <torch/extension.h>
#include <cuda_runtime.h>

__global__ void add_kernel(const float* a, const float* b, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

torch::Tensor add_cuda(torch::Tensor a, torch::Tensor b) {
    auto out = torch::empty_like(a);
    int n = a.numel();
    int threads = 256;
    add_kernel<<<(n + threads - 1) / threads, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        a.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>(), n);
    return out;
}
"""
cpp_source = "torch::Tensor add_cuda(torch::Tensor a, torch::Tensor b);"

add = load_inline(name="add", cpp_sources=cpp_source, cuda_sources=source, functions=["add_cuda"],
                  extra_cuda_cflags=["-O3"])


class ModelNew(nn.Module):
    def __init__(self) -> None:
        super().__init__()

    def forward(self, a, b):
        return add.add_cuda(a.contiguous(), b.contiguous())
''',
    "cpu": '''import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

source = """
#include <torch/extension.h>

torch::Tensor add_cpu(torch::Tensor a, torch::Tensor b) {
    a = a.contiguous();
    b = b.contiguous();
    auto out = torch::empty_like(a);
    const float* pa = a.data_ptr<float>();
    const float* pb = b.data_ptr<float>();
    float* po = out.data_ptr<float>();
    const int64_t n = a.numel();
    #pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) po[i] = pa[i] + pb[i];
    return out;
}
"""

add = load_inline(name="add", cpp_sources=source, functions=["add_cpu"], extra_cflags=["-O3", "-fopenmp"],
                  extra_ldflags=["-fopenmp"])


class ModelNew(nn.Module):
    def __init__(self) -> None:
        super().__init__()

    def forward(self, a, b):
        return add.add_cpu(a, b)
''',
}

# one-shot levels, most to least complete
ONE_SHOT_FULL, ONE_SHOT_NEW_ONLY, ONE_SHOT_NONE = 2, 1, 0

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)


def strip_thought(text: str) -> str:
    """Remove every <think>...</think> span (an unclosed one up to the end) and a stray </think> prefix."""
    text = _THINK.sub("", text)
    if "</think>" in text:            # a template that opens <think> in the prompt leaves only the closing tag
        text = text.split("</think>")[-1]
    return text.strip()


def _check_backend(backend: str) -> None:
    if backend not in _INSTRUCTIONS:
        raise ValueError(f"backend: {backend!r} is not supported; allowed: {', '.join(sorted(_INSTRUCTIONS))}")


def one_shot_text(backend: str, level: int = ONE_SHOT_FULL) -> str:
    _check_backend(backend)
    if level <= ONE_SHOT_NONE:
        return ""
    new = f"```python\n{_EXAMPLE_NEW[backend]}```"
    if level == ONE_SHOT_NEW_ONLY:
        return f"Here is an example of an optimized architecture with a custom kernel (for a = b + c):\n\n{new}"
    return ("Here is an example. The example architecture:\n\n"
            f"```python\n{_EXAMPLE_MODEL}```\n\nThe example optimized architecture with a custom kernel:\n\n{new}")


def base_prompt(task_source: str, backend: str, one_shot: int = ONE_SHOT_FULL) -> str:
    _check_backend(backend)
    parts = [f"You are given the following architecture:\n\n```python\n{task_source.rstrip()}\n```",
             _INSTRUCTIONS[backend] + " " + _ANSWER_RULES]
    example = one_shot_text(backend, one_shot)
    if example:
        parts.append(example)
    return "\n\n".join(parts)


def _assistant_turn(rec: TurnRecord) -> str:
    summary = strip_thought(rec.summary or "")
    if rec.kernel is None:
        return summary or "(no code block)"
    kernel = strip_thought(rec.kernel)
    return f"```python\n{kernel}\n```" + (f"\n\n{summary}" if summary else "")


def _feedback_turn(rec: TurnRecord) -> str:
    fb = (rec.feedback or "").strip()
    return fb if RESTART in fb else (f"{fb}\n\n{RESTART}" if fb else RESTART)


def build_messages(task_source: str, history: Sequence[TurnRecord], backend: str,
                   one_shot: Optional[int] = None) -> list[dict]:
    """Chat messages of the next turn. `history`: the earlier turns still in the prompt, oldest first. The one-shot
    example is included on turn 0 only (one_shot=None); pass a level to override."""
    level = (ONE_SHOT_FULL if not history else ONE_SHOT_NONE) if one_shot is None else one_shot
    messages = [{"role": "user", "content": base_prompt(task_source, backend, level)}]
    for rec in history:
        messages.append({"role": "assistant", "content": _assistant_turn(rec)})
        messages.append({"role": "user", "content": _feedback_turn(rec)})
    return messages


def encode(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of `messages` through the tokenizer's chat template, with the assistant generation prompt."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):    # BatchEncoding in some transformers versions
        ids = ids["input_ids"]
    return list(ids)


def encode_with_budget(tokenizer, task_source: str, history: Sequence[TurnRecord], backend: str,
                       max_context_tokens: int) -> tuple[list[int], int]:
    """(prompt ids, number of earlier turns dropped). See the module docstring for the order in which things go."""
    history = list(history)
    level = ONE_SHOT_NONE if history else ONE_SHOT_FULL      # a later turn never regains the example
    for dropped in range(len(history) + 1):
        ids = encode(tokenizer, build_messages(task_source, history[dropped:], backend, one_shot=level))
        if len(ids) <= max_context_tokens:
            return ids, dropped
    if history:            # every turn is gone; the base prompt of later turns has no example to cut
        return ids, len(history)
    for level in (ONE_SHOT_NEW_ONLY, ONE_SHOT_NONE):
        ids = encode(tokenizer, build_messages(task_source, [], backend, one_shot=level))
        if len(ids) <= max_context_tokens:
            return ids, 0
    return ids, 0
