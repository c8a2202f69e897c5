"""Prompt building: backend wording, one-shot on turn 0 only, chain of thought stripped, summary and feedback kept,
oldest turns dropped first under the budget, one-shot truncated last, token ids exactly the chat template's."""
from __future__ import annotations

import pytest

from engines.models import load_tokenizer
from pipelines.kernel_prompts import (RESTART, build_messages, encode, encode_with_budget, one_shot_text,
                                      strip_thought)
from rlcore.types import TurnRecord
from runtime.config import load_config

SRC = """import torch
import torch.nn as nn

class Model(nn.Module):
    def forward(self, x):
        return torch.relu(x)

def get_inputs():
    return [torch.randn(16, 16)]

def get_init_inputs():
    return []
"""


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(load_config().model)


def history(n: int) -> list[TurnRecord]:
    return [TurnRecord(kernel=f"# kernel of turn {i}\nclass ModelNew: ...",
                       summary=f"<think>secret reasoning {i}</think>summary of turn {i}",
                       feedback=f"feedback of turn {i}: speedup {i}.0x") for i in range(n)]


def test_first_turn_per_backend():
    cuda = build_messages(SRC, [], "cuda")
    cpu = build_messages(SRC, [], "cpu")
    assert len(cuda) == 1 and cuda[0]["role"] == "user"
    assert "raw CUDA kernels" in cuda[0]["content"] and "NVIDIA H100" in cuda[0]["content"]
    assert "C++ CPU kernels with raw loops" in cpu[0]["content"] and "cpp_sources" in cpu[0]["content"]
    assert "NVIDIA H100" not in cpu[0]["content"]
    for m, backend in ((cuda, "cuda"), (cpu, "cpu")):
        text = m[0]["content"]
        assert SRC.strip() in text and "ModelNew" in text and "summarize your changes" in text
        assert one_shot_text(backend) in text            # the example, on the first turn
    assert "<<<" in cuda[0]["content"] and "<<<" not in cpu[0]["content"]
    with pytest.raises(ValueError, match="backend"):
        build_messages(SRC, [], "tpu")


def test_later_turns_keep_kernel_summary_feedback_and_strip_thought():
    msgs = build_messages(SRC, history(2), "cpu")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert one_shot_text("cpu") not in msgs[0]["content"]            # no example after turn 0
    joined = "\n".join(m["content"] for m in msgs)
    assert "secret reasoning" not in joined and "<think>" not in joined
    for i in range(2):
        assert f"# kernel of turn {i}" in msgs[1 + 2 * i]["content"]
        assert f"summary of turn {i}" in msgs[1 + 2 * i]["content"]
        assert msgs[2 + 2 * i]["content"].startswith(f"feedback of turn {i}")
        assert msgs[2 + 2 * i]["content"].endswith(RESTART)
    # a turn that could not be parsed still shows its (thought-free) text; feedback already ending in RESTART
    # is not repeated
    msgs = build_messages(SRC, [TurnRecord(None, "<think>x", f"bad format. {RESTART}")], "cuda")
    assert msgs[1]["content"] == "(no code block)" and msgs[2]["content"].count(RESTART) == 1


def test_strip_thought():
    assert strip_thought("<think>a\nb</think>\nanswer") == "answer"
    assert strip_thought("reasoning without an opening tag</think>answer") == "answer"
    assert strip_thought("<think>never closed") == ""
    assert strip_thought("plain") == "plain"


def test_ids_are_the_chat_template(tok):
    ids, dropped = encode_with_budget(tok, SRC, history(2), "cuda", 100_000)
    expect = tok.apply_chat_template(build_messages(SRC, history(2), "cuda"), add_generation_prompt=True,
                                     tokenize=True, return_dict=False)
    assert dropped == 0 and ids == list(expect)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")


def test_budget_drops_oldest_first(tok):
    h = history(4)
    full = len(encode(tok, build_messages(SRC, h, "cpu")))
    two_left = len(encode(tok, build_messages(SRC, h[2:], "cpu", one_shot=0)))
    ids, dropped = encode_with_budget(tok, SRC, h, "cpu", two_left)
    assert dropped == 2 and len(ids) == two_left < full
    text = tok.decode(ids)
    assert "kernel of turn 0" not in text and "kernel of turn 1" not in text
    assert "kernel of turn 2" in text and "feedback of turn 3" in text
    # one token short of that: a third turn goes
    ids, dropped = encode_with_budget(tok, SRC, h, "cpu", two_left - 1)
    assert dropped == 3 and len(ids) <= two_left - 1 and "kernel of turn 3" in tok.decode(ids)
    # nothing fits: every turn dropped, the bare base prompt (no example) is returned over budget
    ids, dropped = encode_with_budget(tok, SRC, h, "cpu", 10)
    assert dropped == 4 and ids == encode(tok, build_messages(SRC, [], "cpu", one_shot=0))


def test_budget_truncates_one_shot_on_first_turn(tok):
    full, _ = encode_with_budget(tok, SRC, [], "cuda", 100_000)
    bare = encode(tok, build_messages(SRC, [], "cuda", one_shot=0))
    partial = encode(tok, build_messages(SRC, [], "cuda", one_shot=1))
    assert len(bare) < len(partial) < len(full)
    ids, dropped = encode_with_budget(tok, SRC, [], "cuda", len(partial))
    assert ids == partial and dropped == 0
    assert "class ModelNew" in tok.decode(ids) and "return a + b" not in tok.decode(ids)
    ids, _ = encode_with_budget(tok, SRC, [], "cuda", len(bare))
    assert ids == bare
    ids, _ = encode_with_budget(tok, SRC, [], "cuda", len(bare) - 1)      # over budget: returned whole
    assert ids == bare
