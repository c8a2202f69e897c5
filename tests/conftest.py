"""Shared fixtures. Tests run at three speeds (STYLE.md): pure (ms), one local Ray cluster per module (s), and one
end-to-end smoke run. GPU tests are marked `gpu` and skipped without CUDA."""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine; see benchmarks/README.md)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def ray_local():
    """One real local Ray cluster per test module (2 CPUs, no dashboard), shut down afterwards."""
    import ray
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=int(os.environ.get("TEST_RAY_CPUS", "4")), include_dashboard=False,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    yield ray
    ray.shutdown()
