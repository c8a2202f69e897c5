"""Host-object cache of the build step (CPU, real compilation): a candidate whose load_inline differs from an
earlier one only where main.cpp's compilation does not look (here: extra_ldflags) reuses the cached main.o and only
links; both load and compute correct results. A compile process that changes its object after building it does not
get it published. Shares the session cache of tests/test_evaluator.py (its one relu build is reused here).

    python -m pytest tests/test_build_cache.py -q
"""
from __future__ import annotations

import os

import torch

from kernel_eval.build import compile_candidate
from kernel_eval.evaluate import evaluate_candidate
from test_evaluator import RELU_OK, RELU_TASK, make_cfg

LINK_VARIANT = RELU_OK.replace('extra_cflags=["-O3"])', 'extra_cflags=["-O3"], extra_ldflags=["-lm"])')


def test_shared_host_object_reused_and_both_correct():
    cfg = make_cfg(host_object_cache=True, timing_trials=1, timing_warmup=0, correctness_trials=2)
    first = evaluate_candidate(RELU_TASK, RELU_OK, cfg)              # builds main.o (or finds the session's build)
    assert first.correct and first.stage == "done", first.detail
    objects = os.path.join(cfg.cache_dir, "objects")
    assert LINK_VARIANT != RELU_OK
    build = compile_candidate(LINK_VARIANT, "cpu", cfg, torch.__version__)
    assert build.ok and not build.cache_hit, build.log[-2000:]
    assert "host objects from the cache: main.o" in build.log, build.log
    assert build.objects_published == 0 and build.cpu_s < 15.0, (build.objects_published, build.cpu_s)
    assert len(os.listdir(objects)) >= 1
    second = evaluate_candidate(RELU_TASK, LINK_VARIANT, cfg)
    assert second.correct and second.stage == "done" and second.cache_hit, second.detail


def test_object_changed_after_build_not_published(tmp_path):
    """The candidate's module overwrites its freshly built objects before the compile process ends: the sha256
    taken right after the build no longer matches, so nothing of it enters the cache."""
    code = RELU_OK.replace("q[i] = p[i] > 0.f ? p[i] : 0.f;\n  return y;\n}\n// writes",
                           "q[i] = p[i] > 0.f ? p[i] : 0.f;\n  return y + 0;\n}\n// writes", 1) + '''
import glob
for _p in glob.glob("out/*/*.o") + glob.glob("out/*/*.so"):
    open(_p, "wb").write(b"tampered")
'''
    cfg = make_cfg(cache_dir=str(tmp_path), host_object_cache=True)
    build = compile_candidate(code, "cpu", cfg, torch.__version__)
    assert not os.listdir(tmp_path / "objects") if (tmp_path / "objects").exists() else True
    assert not build.ok and "no shared library" in build.log, build.log[-2000:]


def test_build_env_of_cuda_sandboxes_checks_cuda_through_nvml():
    """CUDA sandboxes answer torch.cuda.is_available() (asked when cpp_extension is imported) from NVML instead of
    initializing the driver; the arch list travels with it. CPU sandboxes get neither."""
    from kernel_eval.build import build_env
    from runtime.config import EvaluatorConfig
    assert build_env(EvaluatorConfig(backend="cpu")) == {}
    env = build_env(EvaluatorConfig(backend="cuda", cuda_arch_list="9.0"))
    assert env == {"PYTORCH_NVML_BASED_CUDA_CHECK": "1", "TORCH_CUDA_ARCH_LIST": "9.0"}


def test_concurrent_near_duplicates_build_once(tmp_path):
    """Two candidates that differ only in Python (same C++), compiled at the same time into an empty cache: one
    compile process builds the extension, the other waits for it (<cache>/building/<key>.lock) and takes it from the
    cache."""
    import threading
    cfg = make_cfg(cache_dir=str(tmp_path))
    variants = [RELU_OK, RELU_OK + "\n# the same kernel, another comment\n"]
    builds: list = [None, None]

    def one(i: int) -> None:
        builds[i] = compile_candidate(variants[i], "cpu", cfg, torch.__version__)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert all(b is not None and b.ok for b in builds), [b and b.log[-1500:] for b in builds]
    assert builds[0].keys == builds[1].keys
    assert sorted(b.waited_builds for b in builds) == [0, 1], [(b.waited_builds, b.cpu_s) for b in builds]
    waiter = next(b for b in builds if b.waited_builds)
    assert waiter.waited_s > 0.5 and waiter.cpu_s < 10.0, (waiter.waited_s, waiter.cpu_s)
