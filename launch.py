"""Entry point. Locally it starts a Ray of its own; under `ray job submit` it joins the job's cluster.

    python launch.py [train] --config configs/demo_cpu.yaml [key.sub=value ...] [--resume RUN_DIR]
    python launch.py eval-kernel --task NAME_OR_PATH --kernel FILE [--backend cpu|cuda] [--size-profile P] [--json]
    python launch.py evaluate --config CFG [--checkpoint PATH] [key=value ...]
    python launch.py search   --config CFG [--checkpoint PATH] [key=value ...]
    python launch.py plan     --config CFG [key=value ...]
    python launch.py --help-config           # every config key with its type, default and meaning

Exit codes: 0 done; 2 bad configuration or arguments (nothing was started); 1 the run itself failed.
"""
from __future__ import annotations

import argparse
import sys

COMMANDS = ("train", "eval-kernel", "evaluate", "search", "plan")


def _config_parser(prog: str, extra: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"launch.py {prog}")
    p.add_argument("--config", help="YAML recipe under configs/ (defaults apply to keys it leaves out)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, applied after the file")
    if prog == "train":
        p.add_argument("--resume", metavar="RUN_DIR",
                       help="resume the run in RUN_DIR (its Tune experiment) from its last checkpoint")
    if extra:
        p.add_argument("--checkpoint", help="checkpoint directory to load the policy from (default: the base model)")
        p.add_argument("--out", help="output directory for reports (default: <run dir>/<command>)")
    return p


def _load(args: argparse.Namespace):
    from runtime.config import ConfigError, load_config
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--help-config":
        from runtime.config import describe
        print("\n".join(describe()))
        return 0
    cmd = argv.pop(0) if argv and argv[0] in COMMANDS else "train"
    if argv and argv[0] in ("-h", "--help") and cmd == "train" and not sys.argv[1:2] == ["train"]:
        print(__doc__)
        return 0

    if cmd == "eval-kernel":
        from kernel_eval.cli import main as eval_kernel_main
        return eval_kernel_main(argv)

    args = _config_parser(cmd, extra=cmd in ("evaluate", "search")).parse_args(argv)
    if cmd == "plan":
        from planner.cli import main as plan_main
        return plan_main(_load(args), args)
    if cmd in ("evaluate", "search"):
        from pipelines.evaluate import main as evaluate_main
        return evaluate_main(cmd, _load(args), args)
    from runtime.trainer import main as train_main
    return train_main(_load(args), args)


if __name__ == "__main__":
    sys.exit(main())
