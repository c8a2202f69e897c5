"""`python launch.py eval-kernel`: evaluate one kernel file against one task, print the verdict.

    python launch.py eval-kernel --task builtin/relu --kernel my_relu.py [--backend cpu|cuda] [--size-profile P] [--json]

--json prints exactly one JSON object on stdout (EvalResult.to_dict(): correct, stage, reason, speedup, ref_ms,
kernel_ms, feedback, ...). Exit 0 whenever the evaluation completed, whatever the verdict; 2 when it could not run
(bad arguments, missing task or kernel file), with the problem on stderr. Evaluator settings come from the
`evaluator` config section (`--config`, `key=value` overrides, e.g. evaluator.timing_trials=50).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py eval-kernel", description=__doc__.split("\n")[0])
    p.add_argument("--task", required=True, help="builtin task name, level1/19_ReLU in KERNELBENCH_DIR, or a file")
    p.add_argument("--kernel", required=True, help="Python file defining ModelNew (or a full model response)")
    p.add_argument("--backend", choices=("cpu", "cuda"), default=None, help="default: evaluator.backend")
    p.add_argument("--size-profile", default="as_published", help="as_published, cpu_small, gpu_small, x0.25, ...")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the readable verdict")
    p.add_argument("--response", action="store_true", help="the file is a model response: parse its final code block")
    p.add_argument("--config", help="YAML config whose evaluator section applies")
    p.add_argument("overrides", nargs="*", help="evaluator.key=value overrides")
    return p


def _fail(msg: str) -> int:
    print(f"eval-kernel: {msg}", file=sys.stderr)
    return 2


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:                       # argparse already printed the problem
        return 0 if e.code == 0 else 2
    from runtime.config import ConfigError, load_config
    try:
        cfg = load_config(args.config, args.overrides).evaluator
    except ConfigError as e:
        return _fail(f"config error: {e}")
    if args.backend:
        cfg.backend = args.backend
    cfg.warm_sandboxes = 0            # one candidate: a pre-spawned reserve would only be thrown away
    if not os.path.isfile(args.kernel):
        return _fail(f"kernel file not found: {args.kernel}")
    try:
        from kernel_eval.tasks import get_task
        task = get_task(args.task, size_profile=args.size_profile)
    except Exception as e:                        # unknown name, missing file, bad profile: all the user's input
        return _fail(f"cannot load task '{args.task}': {e}")
    with open(args.kernel, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    from kernel_eval.evaluate import evaluate_candidate, evaluate_response
    res = evaluate_response(task, text, cfg) if args.response else evaluate_candidate(task, text, cfg)
    if args.json:
        print(json.dumps(res.to_dict()))
        return 0
    verdict = "CORRECT" if res.correct else "REJECTED"
    print(f"{verdict}  task={res.task} backend={res.backend} stage={res.stage} reason={res.reason}")
    if res.speedup is not None:
        print(f"  reference {res.ref_ms:.4f} ms (IQR {res.ref_ms_iqr:.4f})  kernel {res.kernel_ms:.4f} ms "
              f"(IQR {res.kernel_ms_iqr:.4f})  speedup {res.speedup:.2f}x  rewarded={res.rewarded}")
    print(f"  compile {res.compile_s:.1f}s{' (cache hit)' if res.cache_hit else ''}, run {res.run_s:.1f}s")
    if res.flags:
        print(f"  flags: {', '.join(res.flags)}")
    print("\nfeedback:\n" + res.feedback)
    return 0
