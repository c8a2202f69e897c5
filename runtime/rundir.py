"""The run directory: everything a run leaves behind, in one place.

    <run.output_dir>/<run.name>/
        config.yaml           the resolved configuration (defaults + file + overrides)
        metrics.jsonl         one line per finished step (exact values; plots and wandb are made from it)
        trajectories.jsonl    one line per turn: prompt, response, kernel, evaluation, score, return, advantage, version
        plots/*.png           reward, correctness, speedup per step (rewritten every step)
        summary.md            last step's numbers and where everything is
        tune/                 the Ray Tune experiment (trial state, checkpoints); `launch.py train --resume <run dir>`
        wandb/                offline wandb runs (`wandb sync` them later)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class RunDir:
    root: str

    @property
    def config(self) -> str:
        return os.path.join(self.root, "config.yaml")

    @property
    def metrics(self) -> str:
        return os.path.join(self.root, "metrics.jsonl")

    @property
    def trajectories(self) -> str:
        return os.path.join(self.root, "trajectories.jsonl")

    @property
    def plots(self) -> str:
        return os.path.join(self.root, "plots")

    @property
    def summary(self) -> str:
        return os.path.join(self.root, "summary.md")

    @property
    def tune(self) -> str:
        return os.path.join(self.root, "tune")

    @property
    def experiment(self) -> str:
        """The Tune experiment directory (storage_path=<root>, name="tune")."""
        return self.tune

    def make(self) -> "RunDir":
        os.makedirs(self.plots, exist_ok=True)
        return self


def run_dir_for(cfg) -> RunDir:
    return RunDir(os.path.join(os.path.abspath(cfg.run.output_dir), cfg.run.name))


def truncate_jsonl(path: str, from_step: int) -> int:
    """Keep only lines whose "step" < from_step (a resumed run redoes the later steps: nothing counted twice).
    Returns the number of lines dropped. Lines that do not parse (a write cut by a kill) are dropped too."""
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path) as fh:
        for line in fh:
            try:
                ok = json.loads(line).get("step", -1) < from_step
            except (ValueError, AttributeError):
                ok = False
            if ok:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            fh.writelines(kept)
        os.replace(tmp, path)
    return dropped
