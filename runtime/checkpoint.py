"""The full training state in one directory, reported to Ray Tune as a Checkpoint (DESIGN.md invariant: resuming
twice from one checkpoint gives the same next step).

    <checkpoint>/
        controller.pkl    step, weight version, task sampler (RNG, epoch, order, cursor), buffered samples,
                          process RNG states (python, numpy, torch) of the controller
        learner/          the learner group's weights and optimizer state (LearnerGroup.async_save)
        meta.json         step and weight version, human-readable

Limit: the learner writes `learner/` from its own process, so rank 0 must see the controller's file system (same node
or a shared file system). Tune then copies the directory to its storage path.

    python -m pytest tests/test_resume.py -q
"""
from __future__ import annotations

import json
import os
import pickle
import random
from typing import Optional

import numpy as np
import ray
import torch

FILE = "controller.pkl"


def rng_states() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_states(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def save(directory: str, controller, learner=None, timeout_s: float = 900.0) -> str:
    """Write the controller's state and (if given) the learner's; returns `directory`."""
    os.makedirs(directory, exist_ok=True)
    if learner is not None:
        ray.get(learner.async_save(os.path.join(directory, "learner")), timeout=timeout_s)
    state = {"controller": controller.state_dict(), "rng": rng_states()}
    tmp = os.path.join(directory, FILE + ".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(state, fh)
    os.replace(tmp, os.path.join(directory, FILE))       # a kill mid-write never leaves a half state
    with open(os.path.join(directory, "meta.json"), "w") as fh:
        json.dump({"step": state["controller"]["step"], "weight_version": state["controller"]["weight_version"]}, fh)
    return directory


def load(directory: str, controller, learner=None, timeout_s: float = 900.0) -> dict:
    """Restore what `save` wrote; returns the controller part of the state."""
    path = os.path.join(directory, FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory} is not a checkpoint of this pipeline ({FILE} missing)")
    with open(path, "rb") as fh:
        state = pickle.load(fh)
    controller.load_state_dict(state["controller"])
    set_rng_states(state["rng"])
    if learner is not None and os.path.isdir(os.path.join(directory, "learner")):
        ray.get(learner.async_load(os.path.join(directory, "learner")), timeout=timeout_s)
    return state["controller"]


def read_step(directory: str) -> Optional[int]:
    try:
        with open(os.path.join(directory, "meta.json")) as fh:
            return int(json.load(fh)["step"])
    except (OSError, ValueError, KeyError):
        return None
