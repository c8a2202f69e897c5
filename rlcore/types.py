"""Records that cross actor boundaries (through the Ray object store). Plain dataclasses, picklable, no torch state.

The controller never holds a TurnSample: rollout workers return it into the object store, the evaluator and the
learner receive its ObjectRef; the controller keeps only refs and small metadata (EvalResult, scores, advantages).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class TurnRecord:
    """What a later turn sees of an earlier one: its kernel, its summary and the evaluator's feedback.
    The chain of thought is never part of it."""
    kernel: Optional[str]
    summary: str
    feedback: str


@dataclass
class TurnSample:
    """One generated turn of one trajectory: exactly what the engine produced, plus its parse."""
    task_name: str
    trajectory_id: int            # unique within a step
    turn: int                     # 0-based refinement turn
    prompt_ids: list[int]         # the prompt as fed to the engine (chat template applied, budget trimmed)
    token_ids: list[int]          # generated tokens, as generated (never re-tokenized)
    logprobs: list[float]         # sampling log-probs of token_ids under the engine's weights (len == len(token_ids))
    text: str                     # decoded token_ids
    finish_reason: str            # "stop" | "length"
    weight_version: int           # version of the weights the engine sampled under
    kernel: Optional[str] = None  # parsed final code block (None: format failure)
    summary: str = ""             # text after the final code block
    thought: str = ""             # the <think> part, kept for metrics (Not-Okay ratio), never fed back
    prompt_text: str = ""         # decoded prompt, for trajectories.jsonl
    dropped_turns: int = 0        # earlier turns dropped from the prompt to fit the context budget


@dataclass
class TrainSample:
    """What the learner trains on: a TurnSample's tokens plus its advantage."""
    prompt_ids: list[int]
    response_ids: list[int]
    sampling_logprobs: list[float]
    advantage: float
    weight_version: int = 0
    meta: dict = field(default_factory=dict)
