"""EvalResult: the one record the evaluator returns for every candidate, whatever happened to it.

Plain dataclass (picklable, JSON-able through `to_dict`), no torch state, so it crosses Ray actors cheaply.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

# Furthest stage reached, in order. "done" = correct and timed.
STAGES = ("format", "static", "compile", "run", "correctness", "timing", "done")

# Runtime reasons (static reasons come from kernel_eval.static_checks; "format" from parsing).
RUNTIME_REASONS = (
    "compile_error", "compile_timeout", "runtime_error", "crash", "timeout", "process_exit", "memory_limit",
    "wrong_output_type", "wrong_dtype", "wrong_shape", "wrong_device", "output_aliases_input", "non_finite",
    "mismatch", "input_modified", "deferred_write", "speedup_out_of_bounds", "timing_error", "evaluator_error",
)


@dataclass
class EvalResult:
    task: str
    backend: str
    size_profile: str
    stage: str = "format"              # furthest stage reached (STAGES)
    correct: bool = False
    reason: Optional[str] = None       # None when correct and timed; else a named reason
    ref_ms: Optional[float] = None     # median reference time per call (ms)
    ref_ms_iqr: Optional[float] = None
    kernel_ms: Optional[float] = None  # median candidate time per call (ms)
    kernel_ms_iqr: Optional[float] = None
    speedup: Optional[float] = None    # ref_ms / kernel_ms
    flags: list[str] = field(default_factory=list)
    rewarded: bool = False             # False: the candidate earns 0 whatever the rest says
    compile_s: float = 0.0             # wall seconds spent compiling (0 on a cache hit without a compile process)
    run_s: float = 0.0                 # wall seconds of the sandboxed run (start-up + checks + timing)
    startup_s: float = 0.0             # of run_s: request sent -> sandbox ready (~0 with a pre-spawned process)
    phase_s: dict = field(default_factory=dict)  # of run_s, inside the sandbox: setup (inputs, reference model),
    #                                    reference (its outputs, poison), load (candidate module and extension),
    #                                    correctness (the candidate calls and their checks), timing
    feedback: str = ""                 # the text the model sees on its next turn
    detail: str = ""                   # longer diagnostic (mismatch numbers, trimmed compiler log, message)
    cache_hit: bool = False            # every extension came from the build cache

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EvalResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
