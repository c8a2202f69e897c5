"""`launch.py plan` and the trainer's start-up check.

    python launch.py plan --config configs/<recipe>.yaml [key=value ...]     # table, verdict, cheapest change

Trainer start-up (before any actor starts):

    from planner.cli import check_fits
    report = check_fits(cfg)
    if not report.fits and not cfg.run.skip_fit_check:
        print(report.message, file=sys.stderr); return 2

`check_fits` never raises: a model whose architecture the planner cannot tell gives `fits=True, checked=False` and a
message saying the check was skipped and why.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional

from planner.fit import GIB, Plan, build_plan, cheapest_change
from planner.model_shape import ModelShape, UnknownModelError, model_shape


@dataclass
class FitReport:
    fits: bool
    checked: bool                       # False: the planner could not judge (unknown model); fits is then True
    message: str                        # verdict, problems and the fix, self-explanatory
    plan: Optional[Plan] = None
    shape: Optional[ModelShape] = None
    fix: list = field(default_factory=list)       # overrides that make it fit, e.g. ["learner.offload_optimizer=true"]


def _gib(x: float) -> str:
    return f"{x / GIB:8.2f}" if x else "       -"


def format_table(plan: Plan, shape: ModelShape) -> str:
    lines = [f"model {shape.name}: {shape.num_params / 1e9:.3f}B params, hidden {shape.hidden_size}, "
             f"{shape.num_layers} layers, {shape.num_heads} heads / {shape.num_kv_heads} KV heads, "
             f"vocab {shape.vocab_size}",
             f"{'role':<10} {'item':<38} {'GiB/GPU':>8} {'GiB/node':>8}  note",
             "-" * 100]
    for r in plan.rows:
        if r.gpu_bytes or r.cpu_bytes or r.note:
            lines.append(f"{r.role:<10} {r.item:<38} {_gib(r.gpu_bytes)} {_gib(r.cpu_bytes)}  {r.note}")
    lines.append("-" * 100)
    for ph in plan.phases:
        lines.append(f"{'peak':<10} {ph.name:<38} {_gib(ph.gpu_bytes)} {'':>8}  "
                     f"of {plan.gpu_capacity / GIB:.1f} GiB per GPU")
    lines.append(f"{'peak':<10} {'CPU memory':<38} {'':>8} {_gib(plan.cpu_need)}  "
                 f"of {plan.cpu_capacity / GIB:.1f} GiB per node")
    lines.append(f"GPUs: {plan.gpus_needed} needed, {plan.gpus_available} in the cluster")
    return "\n".join(lines)


def _verdict(cfg, plan: Plan, shape: ModelShape) -> tuple[str, list]:
    if plan.fits:
        margin = max(-plan.shortfall, 0.0) + 0.0     # no "-0.0"
        return f"verdict: FITS (tightest resource has {margin / GIB:.1f} GiB to spare)", []
    lines = [f"verdict: DOES NOT FIT (short by {max(plan.shortfall, 0) / GIB:.1f} GiB)"]
    lines += [f"  - {p}" for p in plan.problems]
    if plan.gpus_needed > plan.gpus_available:
        lines.append("  fix: give the cluster more GPUs (placement.num_nodes / placement.gpus_per_node) or ask "
                     "for fewer (learner.num_ranks, rollout.num_workers, evaluator.num_runners)")
        return "\n".join(lines), []
    changes, new_plan = cheapest_change(cfg, shape)
    if changes:
        overrides = [o for ch in changes for o in ch.overrides()]
        lines.append(f"  cheapest change that fits: {' '.join(overrides)}  "
                     f"(then peak {new_plan.gpu_peak / GIB:.1f} GiB per GPU, {new_plan.cpu_need / GIB:.1f} GiB "
                     f"CPU per node)")
        return "\n".join(lines), overrides
    lines.append("  no change of up to two settings (micro-batch, checkpointing, concurrency, vLLM memory "
                 "fraction, ZeRO stage, offload, TP size) makes it fit: use more or larger GPUs")
    return "\n".join(lines), []


def plan_report(cfg, num_params: Optional[int] = None) -> FitReport:
    """The full report (raises UnknownModelError when the architecture is unknown)."""
    shape = model_shape(cfg.model, num_params)
    plan = build_plan(cfg, shape)
    verdict, fix = _verdict(cfg, plan, shape)
    notes = "".join(f"note: {n}\n" for n in plan.notes)
    return FitReport(plan.fits, True, notes + verdict, plan, shape, fix)


def check_fits(cfg) -> FitReport:
    """The trainer's start-up check: a FitReport whose message tells the user what to change (or how to skip)."""
    try:
        report = plan_report(cfg)
    except UnknownModelError as e:
        return FitReport(True, False, f"resource planner: memory check skipped: {e}")
    if not report.fits:
        report.message = ("resource planner: this configuration will run out of memory.\n" + report.message +
                          "\n  (see `python launch.py plan --config ...` for the full table; set "
                          "run.skip_fit_check=true to start anyway)")
    return report


def main(cfg, args) -> int:
    """`launch.py plan`: print the table and verdict. Exit code 0 fits, 1 does not fit, 2 unknown model."""
    try:
        report = plan_report(cfg)
    except UnknownModelError as e:
        print(f"plan: {e}", file=sys.stderr)
        return 2
    print(format_table(report.plan, report.shape))
    print(report.message)
    return 0 if report.fits else 1
