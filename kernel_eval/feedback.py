"""Feedback text the model sees on its next turn, in the Kevin-32B wording (one template per outcome).

Outcomes: could not be parsed (format or a static rule) / failed to compile (trimmed compiler log) / runtime error
(the message) / incorrect (the mismatch) / correct, "can be made faster", with the speedup. Every message ends with
the same instruction to restart the reasoning.
"""
from __future__ import annotations

from typing import Optional

RESTART = "Restart your reasoning process and generate new, complete code."
MAX_LOG_CHARS = 2000          # compiler logs are trimmed to their first errors (the rest is noise to the model)


def trim_log(log: str, max_chars: int = MAX_LOG_CHARS) -> str:
    """Keep the lines that carry errors (and a little context), then cut to max_chars."""
    lines = [ln for ln in log.splitlines() if ln.strip()]
    picked = []
    for i, ln in enumerate(lines):
        if "error" in ln.lower() or "undefined" in ln.lower():
            picked.extend(lines[max(0, i - 1):i + 3])
    text = "\n".join(dict.fromkeys(picked)) if picked else "\n".join(lines[-30:])
    return text if len(text) <= max_chars else text[:max_chars] + "\n... (truncated)"


_RUNTIME_WORDS = {
    "crash": "the process crashed",
    "timeout": "the run did not finish within the time limit",
    "process_exit": "the process exited before returning results",
    "memory_limit": "the process ran out of memory",
    "runtime_error": "an exception was raised",
    "evaluator_error": "the evaluator failed while running it",
}


def make_feedback(stage: str, reason: Optional[str], detail: str = "", speedup: Optional[float] = None,
                  flags: Optional[list[str]] = None) -> str:
    """The feedback message for one evaluated candidate (see module docstring)."""
    detail = (detail or "").strip()
    if reason == "format":
        head = ("Your answer could not be parsed: it must end with one complete Python code block that defines "
                "ModelNew.")
    elif stage in ("timing", "done") and reason == "precision_downgrade":
        head = (f"Your kernel produced the correct output (speedup {speedup or 0.0:.2f}x), but it computes a float32 "
                "task in lower precision, which earns no reward.")
        detail = ""
    elif stage == "static" or (stage == "format" and reason is not None):
        head = f"Your kernel was rejected before running ({reason}): {detail or 'it breaks the rules of the task.'}"
        detail = ""
    elif reason in ("compile_error", "compile_timeout"):
        what = "timed out while compiling" if reason == "compile_timeout" else "failed to compile"
        head = f"Your kernel {what}. Compiler output:\n{trim_log(detail)}" if detail else f"Your kernel {what}."
        detail = ""
    elif reason in _RUNTIME_WORDS:
        head = f"Your kernel compiled but had runtime errors ({_RUNTIME_WORDS[reason]}):"
    elif reason in ("speedup_out_of_bounds", "timing_error"):
        head = (f"Your kernel produced the correct output, but its timing was rejected ({reason}).")
    elif reason is not None:
        head = f"Your kernel ran but its output was incorrect ({reason}):"
    else:
        head = (f"Your kernel is correct and has a speedup of {speedup:.2f}x over the PyTorch reference; "
                f"it can be made faster.")
    body = head if not detail else f"{head}\n{detail[:MAX_LOG_CHARS]}"
    return f"{body}\n\n{RESTART}"
