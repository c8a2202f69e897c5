"""Task loading, splits, size profiles and input distributions (pure; the profile test runs one child process).

    python -m pytest tests/test_tasks.py -q
"""
from __future__ import annotations

import glob
import os
import sys
import types

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kernel_eval import size_profiles  # noqa: E402
from kernel_eval.inputs import make_init_inputs, make_inputs  # noqa: E402
from kernel_eval.tasks import (Task, TaskError, builtin_solution, builtin_task_names, check_task_source,  # noqa: E402
                               get_task, holdout_score, load_tasks, split_tasks)
from runtime.config import ConfigError, TasksConfig, load_config  # noqa: E402

KB_DIR = os.environ.get("KERNELBENCH_DIR") or os.path.join(os.path.dirname(ROOT), "shared", "kernelbench")
needs_kb = pytest.mark.skipif(not os.path.isdir(os.path.join(KB_DIR, "level1")),
                              reason="KernelBench task files not found (set KERNELBENCH_DIR)")

GOOD = "import torch\nclass Model(torch.nn.Module):\n    pass\ndef get_inputs():\n    return []\n" \
       "def get_init_inputs():\n    return []\n"


def _module(source: str) -> types.ModuleType:
    mod = types.ModuleType("task_under_test")
    exec(compile(source, "<task>", "exec"), mod.__dict__)
    return mod


# ------------------------------------------------------------------------------------------------------ builtin
def test_builtin_suite_is_complete_and_valid():
    names = builtin_task_names()
    assert len(names) >= 12 and len(set(names)) == len(names)
    levels = {get_task(n).level for n in names}
    assert levels == {1, 2}
    assert sum(get_task(n).level == 2 for n in names) >= 3
    for n in names:
        t = get_task(n)
        assert t.origin == "builtin" and t.size_profile == "as_published"
        for backend in ("cpu", "cuda"):
            code = builtin_solution(n, backend)
            assert "class ModelNew" in code and "load_inline" in code
        assert "cuda_sources" not in builtin_solution(n, "cpu")
        assert "getCurrentCUDAStream" in builtin_solution(n, "cuda")


def test_builtin_cpu_solutions_use_no_aten_compute():
    """The suite must model honest kernels: allocation only in C++, never ATen math."""
    banned = ("torch::matmul", "at::", ".mm(", "torch::relu", "torch::softmax", "torch::conv", ".sum(", ".mean(",
              "torch::exp", ".matmul(", "torch::layer_norm", "torch::linear")
    for n in builtin_task_names():
        code = builtin_solution(n, "cpu")
        assert not [b for b in banned if b in code], n


def test_builtin_tasks_run_with_their_own_inputs():
    for n in builtin_task_names():
        mod = _module(get_task(n).source)
        model = mod.Model(*make_init_inputs(mod, 0))
        with torch.no_grad():
            out = model(*make_inputs(mod, "task", 0))
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and torch.isfinite(out).all(), n


def test_builtin_name_errors():
    with pytest.raises(TaskError, match="unknown built-in task 'builtin/nope'.*relu"):
        get_task("builtin/nope")
    with pytest.raises(TaskError, match="backend 'rocm'"):
        builtin_solution("builtin/relu", "rocm")
    with pytest.raises(TaskError, match="variant 0"):
        builtin_solution("relu", "cpu", variant=3)
    with pytest.raises(TaskError, match="not found"):
        get_task("something_else")


# ------------------------------------------------------------------------------------------------------ files and dirs
def test_check_task_source_names_what_is_missing():
    check_task_source(GOOD, "good.py")
    with pytest.raises(TaskError, match=r"bad\.py: not a KernelBench task file: missing def get_init_inputs\(\)"):
        check_task_source(GOOD.replace("def get_init_inputs", "def other"), "bad.py")
    with pytest.raises(TaskError, match=r"x\.py: .*missing class Model, def get_inputs\(\)"):
        check_task_source("def get_init_inputs():\n    return []\n", "x.py")
    with pytest.raises(TaskError, match=r"broken\.py: not valid Python \(line 1"):
        check_task_source("def (:\n", "broken.py")


def test_file_loader_and_errors(tmp_path):
    good = tmp_path / "level2" / "7_Thing.py"
    good.parent.mkdir()
    good.write_text(GOOD)
    t = get_task(str(good))
    assert (t.name, t.level, t.origin) == ("level2/7_Thing", 2, str(good))
    other = tmp_path / "mine.py"
    other.write_text(GOOD)
    assert get_task(str(other)).name == "file/mine"
    cfg = TasksConfig(source="file", path=str(other))
    assert [t.name for t in load_tasks(cfg)] == ["file/mine"]
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\ndef get_inputs():\n    return []\n")
    with pytest.raises(TaskError, match=f"{broken}.*missing class Model"):
        load_tasks(TasksConfig(source="file", path=str(broken)))
    with pytest.raises(TaskError, match="task file not found: .*nothere.py"):
        load_tasks(TasksConfig(source="file", path=str(tmp_path / "nothere.py")))


def test_dir_loader_and_errors(tmp_path):
    for level, fn in ((1, "1_A.py"), (1, "2_B.py"), (2, "10_C.py"), (3, "1_D.py")):
        d = tmp_path / f"level{level}"
        d.mkdir(exist_ok=True)
        (d / fn).write_text(GOOD)
    (tmp_path / "level1" / "notes.txt").write_text("ignored")
    cfg = TasksConfig(source="dir", path=str(tmp_path), levels=[1, 2], split="all")
    assert [t.name for t in load_tasks(cfg)] == ["level1/1_A", "level1/2_B", "level2/10_C"]
    assert get_task("level1/2", kernelbench_dir=str(tmp_path)).name == "level1/2_B"
    (tmp_path / "level2" / "11_Bad.py").write_text("x = 1\n")
    with pytest.raises(TaskError, match="11_Bad.py: not a KernelBench task file"):
        load_tasks(cfg)
    with pytest.raises(TaskError, match="task directory not found: .*missing"):
        load_tasks(TasksConfig(source="dir", path=str(tmp_path / "missing")))
    with pytest.raises(TaskError, match="no level directories"):
        load_tasks(TasksConfig(source="dir", path=str(tmp_path), levels=[4]))
    with pytest.raises(TaskError, match="no file 99_X.py"):
        get_task("level1/99_X", kernelbench_dir=str(tmp_path))


def test_hf_loader_without_datasets_names_the_fix():
    try:
        import datasets  # noqa: F401
        pytest.skip("datasets is installed; the hub is not reachable from tests")
    except ImportError:
        pass
    with pytest.raises(TaskError, match="datasets.*tasks.source=dir"):
        load_tasks(TasksConfig(source="hf"))


def test_load_tasks_filters_and_empty_result():
    cfg = TasksConfig(source="builtin", split="all", names=["relu"])
    assert [t.name for t in load_tasks(cfg)] == ["builtin/relu", "builtin/leaky_relu", "builtin/linear_relu",
                                                     "builtin/conv_relu_scale"]
    assert len(load_tasks(TasksConfig(source="builtin", split="all", max_tasks=2))) == 2
    assert all(t.level == 2 for t in load_tasks(TasksConfig(source="builtin", split="all", levels=[2])))
    with pytest.raises(TaskError, match="no tasks left: source=builtin found 13.*names=\\['zzz'\\]"):
        load_tasks(TasksConfig(source="builtin", names=["zzz"]))


def test_bad_size_profile_is_a_config_error_naming_allowed_values():
    with pytest.raises(ValueError, match="tasks.size_profile: 'tiny' is not allowed.*cpu_small.*x0.25"):
        load_tasks(TasksConfig(source="builtin", size_profile="tiny"))
    with pytest.raises(ConfigError, match="tasks.size_profile"):
        load_config(None, ["tasks.size_profile=huge"])


@needs_kb
def test_get_task_from_kernelbench_dir():
    t = get_task("level1/19_ReLU")
    assert t.level == 1 and "torch.relu" in t.source and t.origin.endswith("19_ReLU.py")
    assert get_task("level1/19").name == "level1/19_ReLU"


# ------------------------------------------------------------------------------------------------------ split
def test_split_is_deterministic_disjoint_and_stable():
    tasks = [get_task(n) for n in builtin_task_names()]
    fake = [Task(name=f"level1/{i}_T", level=1, source="", origin="x", size_profile="as_published")
            for i in range(400)]
    train = split_tasks(fake, "train", 0.25, 7)
    hold = split_tasks(fake, "holdout", 0.25, 7)
    assert {t.name for t in train}.isdisjoint({t.name for t in hold})
    assert len(train) + len(hold) == 400 and 60 < len(hold) < 140          # ~100 expected
    assert [t.name for t in split_tasks(fake, "holdout", 0.25, 7)] == [t.name for t in hold]
    # removing or adding tasks never moves another task to the other side
    assert {t.name for t in split_tasks(fake[::2], "holdout", 0.25, 7)} == {t.name for t in hold[::1]
                                                                            if t in fake[::2]}
    assert {t.name for t in split_tasks(fake + tasks, "holdout", 0.25, 7)} >= {t.name for t in hold}
    # another seed gives another split
    assert {t.name for t in split_tasks(fake, "holdout", 0.25, 8)} != {t.name for t in hold}
    assert holdout_score("a", 0) == holdout_score("a", 0) != holdout_score("a", 1)
    assert split_tasks(fake, "holdout", 0.0, 7) == []


def test_builtin_split_through_config():
    cfg_train = TasksConfig(source="builtin", holdout_fraction=0.3, split_seed=3)
    cfg_hold = TasksConfig(source="builtin", holdout_fraction=0.3, split_seed=3, split="holdout")
    train, hold = load_tasks(cfg_train), load_tasks(cfg_hold)
    assert len(train) + len(hold) == len(builtin_task_names())
    assert not {t.name for t in train} & {t.name for t in hold}


# ------------------------------------------------------------------------------------------------------ size profiles
def test_scale_source_rewrites_only_large_size_constants():
    src = ("import torch\n# sizes\nbatch_size = 4096  # rows\nN = 2048 * 2\nkernel_size = 128\nheight = width = 256\n"
           "D, H = 8, 512\nshape = (64, 100, 3)\nsmall = 16\nscale = 2.5\n"
           "def get_inputs():\n    n = 4096\n    return [torch.randn(batch_size, N)]\n")
    out = size_profiles.scale_source(src, 0.25)
    mod = _module(out)
    assert (mod.batch_size, mod.N, mod.kernel_size, mod.height, mod.width) == (1024, 1024, 128, 64, 64)
    assert (mod.D, mod.H, mod.shape, mod.small, mod.scale) == (8, 128, (32, 32, 3), 16, 2.5)
    assert "# rows" in out and "n = 4096" in out                 # comments and function bodies untouched
    assert size_profiles.scale_source(src, 1.0) == src
    assert _module(size_profiles.scale_source(src, 0.0001)).batch_size == 2     # batch floor
    assert _module(size_profiles.scale_source(src, 0.0001)).N == 32             # size floor
    assert _module(size_profiles.apply_profile_many([src], "x2")[0]).N == 8192
    assert size_profiles.apply_profile_many([src], "as_published") == [src]


def test_odd_sizes_stay_odd_and_divisibility_survives():
    assert size_profiles.scale_value(4095, 0.5) in (2047, 2048)
    assert size_profiles.scale_value(768, 0.25) % 16 == 0
    assert size_profiles.scale_value(63, 0.01) == 63


@needs_kb
def test_cpu_small_fits_every_kernelbench_level1_and_level2_task():
    files = sorted(glob.glob(os.path.join(KB_DIR, "level1", "*.py")) + glob.glob(os.path.join(KB_DIR, "level2", "*.py")))
    assert len(files) >= 150
    sources = [open(p, encoding="utf-8").read() for p in files]
    report = size_profiles.profile_report(sources, "cpu_small")
    too_big = [(os.path.basename(p), r["max_bytes"] >> 20) for p, r in zip(files, report) if r["max_bytes"] > 64 << 20]
    assert not too_big, too_big
    broken = [(os.path.basename(p), r["error"]) for p, r in zip(files, report) if not r["inputs"]]
    assert not broken, broken
    scaled = sum(r["source"] != s for r, s in zip(report, sources))
    assert scaled > len(files) * 0.8          # the published sizes are GPU-sized: nearly all must shrink
    # spot check for real (not meta): the scaled ReLU task runs on the CPU and is small
    relu = next(r for p, r in zip(files, report) if p.endswith("19_ReLU.py"))
    mod = _module(relu["source"])
    x = make_inputs(mod, "task", 0)[0]
    assert x.numel() * 4 <= size_profiles.CPU_SMALL_MAX_BYTES


@needs_kb
def test_gpu_small_quarters_memory():
    files = [os.path.join(KB_DIR, "level1", "23_Softmax.py"), os.path.join(KB_DIR, "level2", "1_Conv2D_ReLU_BiasAdd.py")]
    for r in size_profiles.profile_report([open(p, encoding="utf-8").read() for p in files], "gpu_small"):
        assert r["forward"] and r["total_bytes"] <= 0.25 * r["published_total_bytes"]
        assert r["total_bytes"] >= 0.05 * r["published_total_bytes"]      # not shrunk far more than asked


def test_profile_is_recorded_in_the_task():
    t = get_task("builtin/matmul", size_profile="x0.5")
    assert t.size_profile == "x0.5" and "M = 128" in t.source
    assert [t.size_profile for t in load_tasks(TasksConfig(source="builtin", split="all", size_profile="x2"))] == \
        ["x2"] * len(builtin_task_names())


# ------------------------------------------------------------------------------------------------------ inputs
MIXED_TASK = """
import torch
class Model(torch.nn.Module):
    def forward(self, x, idx, k):
        return x
def get_inputs():
    return [torch.rand(64, 128), torch.randint(0, 10, (64,)), 3]
def get_init_inputs():
    return [torch.randn(2).tolist()]
"""


def test_input_distributions():
    mod = _module(MIXED_TASK)
    task = make_inputs(mod, "task", 5)
    assert torch.equal(task[0], make_inputs(mod, "task", 5)[0])                 # seeded
    assert not torch.equal(task[0], make_inputs(mod, "task", 6)[0])
    assert (task[0] >= 0).all()                                                 # the task's own: torch.rand
    normal = make_inputs(mod, "normal", 5)
    mixed = make_inputs(mod, "mixed", 5)
    for dist in (normal, mixed):
        assert dist[0].shape == task[0].shape and dist[0].dtype == task[0].dtype
        assert (dist[0] < 0).any() and torch.equal(dist[1], task[1]) and dist[2] == 3   # ints and scalars kept
    assert torch.equal(mixed[0], make_inputs(mod, "mixed", 5)[0])
    assert not torch.equal(mixed[0], make_inputs(mod, "mixed", 6)[0])
    mags = mixed[0].abs()
    assert (mags == 0).any()                                                    # exact zeros
    assert mags.max() > 10 and mags[mags > 0].min() < 1e-2                      # mixed scale
    assert 0.3 < (mixed[0] < 0).float().mean() < 0.7                            # mixed sign
    assert abs(normal[0].std().item() - 1.0) < 0.1
    assert make_init_inputs(mod, 1) == make_init_inputs(mod, 1) != make_init_inputs(mod, 2)
    with pytest.raises(ValueError, match="unknown input distribution 'uniform'"):
        make_inputs(mod, "uniform", 0)


def test_half_precision_inputs_keep_their_dtype():
    mod = _module(MIXED_TASK.replace("torch.rand(64, 128)", "torch.rand(64, 128, dtype=torch.float16)"))
    for dist in ("normal", "mixed"):
        assert make_inputs(mod, dist, 0)[0].dtype == torch.float16
