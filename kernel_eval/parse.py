"""Split a model response into its kernel (the final fenced code block), its summary and its thoughts.

    parsed = parse_response(text)      # ParsedResponse(code, summary, thought, error)

Rules (Kevin's multi-turn format: think, then one code block, then a short summary that the next turn sees):
- `<think>...</think>` blocks are removed before anything else and returned, joined, as `thought`. A response that
  starts inside a thought (the chat template opened `<think>` in the prompt, so the text has a `</think>` but no
  `<think>`) counts everything before that first `</think>` as thought. An unterminated `<think>` swallows the rest.
- The kernel is the LAST fenced block (```python, ```cpp, ```cuda or a bare ```), fences of three or more backticks,
  indented by at most three spaces; the closing fence needs at least as many backticks as the opening one.
- The summary is the text after that block (thoughts excluded), stripped.
- No block, an unclosed final block (a response cut off by the token limit) or an empty block give
  `error="format"` and a `summary` that says what is wrong; parsing never raises.

Limits: a Python string inside the kernel that itself holds a line made only of ``` ends the block early (models
rarely write that; the static checks then report a syntax error with its line).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

_FENCE = re.compile(r"^ {0,3}(`{3,})\s*([\w+#.-]*)[^`]*$")     # opening fence: ```lang (info string may follow)
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
FORMAT_HELP = ("put the complete ModelNew module in one fenced code block (```python ... ```), "
               "then a short summary after the block")


@dataclass
class ParsedResponse:
    code: Optional[str]       # the kernel source (final fenced block), None on a format error
    summary: str              # text after the final block (thoughts removed); on error, what is wrong
    thought: str              # the removed <think> content, blocks joined by blank lines
    error: Optional[str]      # None, or "format"
    language: str = ""        # info string of the final fence ("python", "cpp", "" ...)


def split_thoughts(text: str) -> tuple[str, str, bool]:
    """-> (visible text, thought text, unterminated). Removes every <think>..</think> block."""
    visible, thoughts = [], []
    rest = text
    first_close, first_open = rest.find(_THINK_CLOSE), rest.find(_THINK_OPEN)
    if first_close != -1 and (first_open == -1 or first_close < first_open):
        # The response began inside a thought opened by the prompt template.
        thoughts.append(rest[:first_close])
        rest = rest[first_close + len(_THINK_CLOSE):]
    while True:
        start = rest.find(_THINK_OPEN)
        if start == -1:
            visible.append(rest)
            return "".join(visible), "\n\n".join(t.strip() for t in thoughts), False
        visible.append(rest[:start])
        end = rest.find(_THINK_CLOSE, start)
        if end == -1:
            thoughts.append(rest[start + len(_THINK_OPEN):])
            return "".join(visible), "\n\n".join(t.strip() for t in thoughts), True
        thoughts.append(rest[start + len(_THINK_OPEN):end])
        rest = rest[end + len(_THINK_CLOSE):]


def _blocks(lines: list[str]):
    """Yield (lang, first_body_line, end_line or None) for each fenced block; end None = never closed."""
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        ticks, lang = len(m.group(1)), m.group(2).lower()
        close = re.compile(r"^ {0,3}`{%d,}\s*$" % ticks)
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        if j == len(lines):
            yield lang, i + 1, None
            return
        yield lang, i + 1, j
        i = j + 1


def parse_response(text: str) -> ParsedResponse:
    if not isinstance(text, str):
        return ParsedResponse(None, f"the response is not text ({type(text).__name__})", "", "format")
    visible, thought, unterminated = split_thoughts(text)
    lines = visible.split("\n")
    blocks = list(_blocks(lines))
    if not blocks:
        why = ("the response ended inside <think> (no closing </think>) before any code block"
               if unterminated else "no fenced code block found")
        return ParsedResponse(None, f"{why}: {FORMAT_HELP}", thought, "format")
    lang, start, end = blocks[-1]
    if end is None:
        return ParsedResponse(None, f"the final code block is never closed (response cut off?): {FORMAT_HELP}",
                              thought, "format", lang)
    code = "\n".join(lines[start:end])
    summary = "\n".join(lines[end + 1:]).strip()
    if not code.strip():
        return ParsedResponse(None, f"the final code block is empty: {FORMAT_HELP}", thought, "format", lang)
    return ParsedResponse(code.strip("\n") + "\n", summary, thought, None, lang)
