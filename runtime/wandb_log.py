"""wandb logging: offline by default (no account, files under <run dir>/wandb; `wandb sync` them later), online when
WANDB_API_KEY is set (run.wandb_mode=auto) or run.wandb_mode=online, off with run.wandb_mode=disabled or
WANDB_MODE=disabled (the tests set it). A wandb failure never stops training: it is reported once and logging stops.
"""
from __future__ import annotations

import os
import sys


def resolve_mode(cfg_mode: str) -> str:
    env = os.environ.get("WANDB_MODE")
    if env == "disabled" or cfg_mode == "disabled":
        return "disabled"
    if cfg_mode in ("offline", "online"):
        return cfg_mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class WandbLog:
    def __init__(self, run=None):
        self.run = run

    def log(self, m: dict) -> None:
        if self.run is None:
            return
        flat = {}
        for k, v in m.items():
            if isinstance(v, bool):
                continue
            if isinstance(v, (int, float)):
                flat[k] = v
            elif isinstance(v, list) and k.endswith("_per_turn"):
                flat.update({f"{k}/{t}": x for t, x in enumerate(v) if x is not None})
            elif isinstance(v, dict) and k == "rejections":
                flat.update({f"rejections/{r}": n for r, n in v.items()})
        try:
            self.run.log(flat, step=int(m.get("step", 0)))
        except Exception as e:  # noqa: BLE001
            print(f"wandb: logging failed ({e}); continuing without wandb", file=sys.stderr)
            self.run = None

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception:   # noqa: BLE001
                pass
            self.run = None


def start(cfg, rd) -> WandbLog:
    mode = resolve_mode(cfg.run.wandb_mode)
    if mode == "disabled":
        return WandbLog(None)
    try:
        import wandb
        run = wandb.init(project=cfg.run.wandb_project, name=cfg.run.name, id=_run_id(cfg), resume="allow",
                         dir=rd.root, mode=mode, config=cfg.to_dict())
        return WandbLog(run)
    except Exception as e:   # noqa: BLE001
        print(f"wandb: could not start ({e}); continuing without wandb", file=sys.stderr)
        return WandbLog(None)


def _run_id(cfg) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in cfg.run.name)[:64]
