"""Size profiles: scale a task's module-level integer size constants so it fits the machine that evaluates it.

    python -m kernel_eval.size_profiles --profile cpu_small path/to/level1/*.py    # table: published -> scaled sizes

Profiles
- "as_published": the source unchanged.
- "xF" (e.g. "x0.25", "x2"): every large size constant multiplied by F (no shapes needed; pure AST rewrite).
- "cpu_small": the largest factor 2**(-k/2) whose largest tensor (inputs, parameters, output) is at most
  CPU_SMALL_MAX_BYTES (4 MiB) - a few milliseconds per call on one CPU core.
- "gpu_small": the largest such factor whose total tensor memory is at most a quarter of the published one.

What is scaled: module-level assignments `NAME = <int expression>` (also `a = b = 128`, `N = 2048 * 2`, and tuples of
ints such as `shape = (128, 4096)`), only values >= LARGE_MIN (64), rounded to a multiple of the power of two that
divided the original (at most 16) so divisibility by small group/head counts survives, and never below FLOOR (32).
Names that are not sizes (kernel_size, stride, padding, dilation, groups, heads, ...) are never touched, and neither
is anything computed inside functions. The two shape-based profiles execute the task's get_inputs, constructor and
forward on torch's "meta" device (no memory, no compute) in ONE child process per call, so task code never runs in
the caller. A factor whose meta run fails where the published sizes worked is skipped. Limits: sizes hard-coded inside
get_inputs() or Model cannot be scaled; a task whose forward is not supported on "meta" is measured by its inputs
and parameters only.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import subprocess
import sys
from typing import Any, Optional

LARGE_MIN = 64
FLOOR = 32
CPU_SMALL_MAX_BYTES = 4 << 20
GPU_SMALL_MEMORY_SHARE = 0.25
MAX_HALVINGS = 36                       # factors 2**(-k/2), k = 0..36 (down to ~4e-6)
NAMED_PROFILES = ("as_published", "cpu_small", "gpu_small")
_KEEP_NAME = re.compile(r"kernel|stride|pad|dilation|group|head|axis|eps|seed", re.IGNORECASE)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_profile(profile: str) -> Optional[float]:
    """None for a named profile, the factor for "xF". Raises ValueError naming the allowed values."""
    if profile in NAMED_PROFILES:
        return None
    m = re.fullmatch(r"x(\d+(?:\.\d*)?|\.\d+)", profile or "")
    if m and float(m.group(1)) > 0:
        return float(m.group(1))
    raise ValueError(f"tasks.size_profile: {profile!r} is not allowed; allowed values: "
                     f"{', '.join(NAMED_PROFILES)}, or a factor like x0.25")


# ------------------------------------------------------------------------------------------------------ AST rewrite
def _fold_int(node: ast.AST) -> Optional[int]:
    """Value of an int expression made only of literals (+ - * // ** and unary minus), else None."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        v = _fold_int(node.operand)
        return -v if v is not None else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Pow)):
        a, b = _fold_int(node.left), _fold_int(node.right)
        if a is None or b is None:
            return None
        try:
            return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(type(node.op)) if not isinstance(
                node.op, (ast.FloorDiv, ast.Pow)) else (a // b if isinstance(node.op, ast.FloorDiv) else a ** b)
        except ZeroDivisionError:
            return None
    return None


def scale_value(v: int, factor: float, min_value: int = LARGE_MIN, floor: int = FLOOR) -> int:
    if v < min_value or factor == 1.0:
        return v
    multiple = min(16, v & -v, floor)    # largest power of two dividing v, capped (keeps small divisors)
    scaled = max(1, round(v * factor / multiple)) * multiple
    return max(scaled, min(floor, v)) if factor < 1.0 else scaled


def _int_slots(source: str) -> list[tuple[str, ast.AST]]:
    """(name, value node) of every module-level int size constant, tuple elements and `a, b = 1, 2` included."""
    slots: list[tuple[str, ast.AST]] = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for t in targets:
            if isinstance(t, ast.Name):
                parts = [value] if _fold_int(value) is not None else (
                    list(value.elts) if isinstance(value, (ast.Tuple, ast.List)) else [])
                slots += [(t.id, p) for p in parts if _fold_int(p) is not None]
            elif isinstance(t, ast.Tuple) and isinstance(value, ast.Tuple) and len(t.elts) == len(value.elts):
                slots += [(n.id, v) for n, v in zip(t.elts, value.elts)
                          if isinstance(n, ast.Name) and _fold_int(v) is not None]
    return [(n, p) for n, p in slots if not _KEEP_NAME.search(n)]


def size_constants(source: str) -> dict[str, list[int]]:
    """Module-level size constants the profiles may scale: name -> its int values (several for tuples)."""
    out: dict[str, list[int]] = {}
    for name, node in _int_slots(source):
        out.setdefault(name, []).append(_fold_int(node))  # type: ignore[arg-type]
    return out


def scale_source(source: str, factor: float, min_value: int = LARGE_MIN, floor: int = FLOOR) -> str:
    """Rewrite the size constants' values in place (comments and layout elsewhere stay as they were).
    Batch sizes (names containing "batch") are scaled from 2 up, never below 2."""
    if factor == 1.0:
        return source
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def pos(lineno: int, col: int) -> int:     # AST columns count UTF-8 bytes
        return offsets[lineno - 1] + len(lines[lineno - 1].encode()[:col].decode())

    edits: dict[tuple[int, int], str] = {}      # keyed by span: `a = b = 128` names one value twice
    for name, node in _int_slots(source):
        v = _fold_int(node)
        lo, fl = (2, 2) if "batch" in name.lower() else (min_value, floor)
        new = scale_value(v, factor, lo, fl)  # type: ignore[arg-type]
        if new != v:
            span = (pos(node.lineno, node.col_offset), pos(node.end_lineno, node.end_col_offset))  # type: ignore
            edits.setdefault(span, str(new))
    for (start, end), text in sorted(edits.items(), reverse=True):
        source = source[:start] + text + source[end:]
    return source


# ------------------------------------------------------------------------------------------------------ measuring
def _tensors(obj: Any) -> list:
    import torch
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def measure(source: str) -> dict:
    """Execute the task on the meta device: bytes of the largest tensor and of all tensors, and which parts ran.
    Executes task code: call it only in a child process (apply_profile_many / measure_many do)."""
    import torch
    ns: dict = {"__name__": "task_under_measure"}
    res = {"inputs": False, "model": False, "forward": False, "max_bytes": 0, "total_bytes": 0, "error": ""}
    tensors: list = []
    try:
        exec(compile(source, "<task>", "exec"), ns)
        with torch.device("meta"):
            torch.manual_seed(0)
            inputs = ns["get_inputs"]()
            tensors += _tensors(inputs)
            res["inputs"] = True
            model = ns["Model"](*ns["get_init_inputs"]())
            tensors += list(model.parameters()) + list(model.buffers())
            res["model"] = True
            with torch.no_grad():
                tensors += _tensors(model(*inputs))
            res["forward"] = True
    except Exception as e:  # any task error: report what ran so far
        res["error"] = f"{type(e).__name__}: {str(e)[:160]}"
    sizes = [t.numel() * t.element_size() for t in tensors]
    res["max_bytes"], res["total_bytes"] = max(sizes, default=0), sum(sizes)
    return res


def _fits(m: dict, profile: str, published: dict) -> bool:
    if profile == "cpu_small":
        return m["max_bytes"] <= CPU_SMALL_MAX_BYTES
    return m["total_bytes"] <= GPU_SMALL_MEMORY_SHARE * published["total_bytes"]


def choose_scaled(source: str, profile: str) -> dict:
    """Search factors 1, 2**-0.5, 2**-1, ... for the first that fits `profile` (first scaling only constants >= 64,
    then, if that cannot fit, constants >= 16 with floor 8); runs task code (child process only)."""
    published = measure(source)
    if not published["inputs"]:
        return {"source": source, "factor": 1.0, **published, "note": "get_inputs failed on meta; left as published"}
    if _fits(published, profile, published) and profile == "cpu_small":
        return {"source": source, "factor": 1.0, **published, "note": ""}
    best = None
    seen = {source}
    for min_value, floor in ((LARGE_MIN, FLOOR), (16, 8)):
        for k in range(1, MAX_HALVINGS + 1):
            factor = 0.5 ** (k / 2)
            scaled = scale_source(source, factor, min_value, floor)
            if scaled in seen:
                continue            # rounding and floors made no change
            seen.add(scaled)
            m = measure(scaled)
            if any(published[p] and not m[p] for p in ("inputs", "model", "forward")):
                continue            # these sizes break the task (e.g. a dim that must equal another)
            cand = {"source": scaled, "factor": factor, **m, "note": "" if min_value == LARGE_MIN else "small dims scaled"}
            if best is None or m["max_bytes"] < best["max_bytes"]:
                best = cand
            if _fits(m, profile, published):
                return cand
    best = best or {"source": source, "factor": 1.0, **published}
    best["note"] = "no factor fits the profile; using the smallest valid sizes"
    return best


def _with_published(source: str, profile: str) -> dict:
    published = measure(source)
    out = choose_scaled(source, profile)
    out.update(published_max_bytes=published["max_bytes"], published_total_bytes=published["total_bytes"])
    return out


def _child_main() -> None:
    req = json.loads(sys.stdin.read())
    if req["op"] == "measure":
        out = [measure(s) for s in req["sources"]]
    else:
        out = [_with_published(s, req["profile"]) for s in req["sources"]]
    sys.stdout.write(json.dumps(out))


def _run_child(req: dict, timeout_s: float) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": _ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "CUDA_VISIBLE_DEVICES": ""}
    try:
        proc = subprocess.run([sys.executable, "-c", "from kernel_eval.size_profiles import _child_main; "
                               "_child_main()"], input=json.dumps(req), capture_output=True, text=True,
                              timeout=timeout_s, env=env, cwd=_ROOT)
    except subprocess.TimeoutExpired:
        raise ValueError(f"size profile {req.get('profile', 'measure')}: measuring {len(req['sources'])} tasks took "
                         f"over {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise ValueError(f"size profile {req.get('profile', 'measure')}: the measuring process failed "
                         f"(exit {proc.returncode}): {proc.stderr[-800:]}")
    return json.loads(proc.stdout)


def apply_profile_many(sources: list[str], profile: str, timeout_s: float = 600.0) -> list[str]:
    """Sources with `profile` applied (see the module docstring). One child process for cpu_small/gpu_small."""
    factor = parse_profile(profile)
    if profile == "as_published":
        return list(sources)
    if factor is not None:
        return [scale_source(s, factor) for s in sources]
    if not sources:
        return []
    return [r["source"] for r in profile_report(sources, profile, timeout_s)]


def profile_report(sources: list[str], profile: str, timeout_s: float = 600.0) -> list[dict]:
    """Per source: scaled source, chosen factor, max/total bytes on meta (also published_*), which parts ran, note."""
    parse_profile(profile)
    return _run_child({"op": "apply", "profile": profile, "sources": list(sources)}, timeout_s)


def measure_many(sources: list[str], timeout_s: float = 600.0) -> list[dict]:
    """measure() of each source, in one child process."""
    return _run_child({"op": "measure", "sources": list(sources)}, timeout_s)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Show what a size profile does to task files.")
    ap.add_argument("--profile", default="cpu_small")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    sources = [open(p, encoding="utf-8").read() for p in args.files]
    before = measure_many(sources)
    after = profile_report(sources, args.profile)
    print(f"{'file':60s} {'published MB':>12s} {'scaled MB':>10s} {'factor':>8s}  note")
    for path, b, a in zip(args.files, before, after):
        print(f"{os.path.basename(path)[:60]:60s} {b['max_bytes'] / 2**20:12.1f} {a['max_bytes'] / 2**20:10.2f} "
              f"{a['factor']:8.4f}  {a['note'] or a['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
