"""Kernel tasks: the built-in suite, a KernelBench-style directory, one file, or the Hugging Face dataset.

    from kernel_eval.tasks import load_tasks, get_task, builtin_solution
    tasks = load_tasks(cfg.tasks)                      # honours source/path/levels/names/size_profile/split/max_tasks
    task = get_task("builtin/relu")                    # or "level1/19_ReLU" (KernelBench dir), or a file path
    code = builtin_solution("builtin/relu", "cpu")     # known-good candidate source ("cpu" | "cuda")

A task file defines `class Model`, `get_inputs()` and `get_init_inputs()` (KernelBench format). Files are checked by
their AST only: the controller never imports or runs task code. Size profiles that need shapes (cpu_small, gpu_small)
are computed in one child process (kernel_eval.size_profiles).

The train/holdout split hashes each task's name with `split_seed`, so a task stays on its side when other tasks are
added or removed. Limits: the HF loader needs the optional `datasets` package and network access to the hub.
"""
from __future__ import annotations

import ast
import hashlib
import os
import re
from dataclasses import dataclass, replace
from typing import Any, Iterable, Optional

from kernel_eval import size_profiles
from kernel_eval.builtin import MANIFEST

BUILTIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "builtin")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = ("class Model", "def get_inputs", "def get_init_inputs")


class TaskError(ValueError):
    """A task cannot be loaded; the message names the task or file and what is wrong."""


@dataclass(frozen=True)
class Task:
    name: str            # unique: "builtin/relu", "level1/19_ReLU"
    level: int
    source: str          # Python source of the reference (class Model, get_inputs, get_init_inputs), profile applied
    origin: str          # file path, "builtin", or "hf:<dataset>"
    size_profile: str    # recorded in every result


# ------------------------------------------------------------------------------------------------------ validation
def check_task_source(source: str, where: str) -> None:
    """Raise TaskError unless `source` parses and defines class Model, get_inputs and get_init_inputs at top level."""
    try:
        tree = ast.parse(source, filename=where)
    except SyntaxError as e:
        raise TaskError(f"{where}: not valid Python (line {e.lineno}: {e.msg})") from None
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    funcs = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    missing = [what for what, ok in (("class Model", "Model" in classes), ("def get_inputs()", "get_inputs" in funcs),
                                     ("def get_init_inputs()", "get_init_inputs" in funcs)) if not ok]
    if missing:
        raise TaskError(f"{where}: not a KernelBench task file: missing {', '.join(missing)} at module level")


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as e:
        raise TaskError(f"cannot read task file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise TaskError(f"task file {path} is not UTF-8 text") from None


# ------------------------------------------------------------------------------------------------------ builtin
def builtin_task_names() -> list[str]:
    return [f"builtin/{n}" for n in MANIFEST]


def _builtin_key(name: str) -> str:
    key = name[len("builtin/"):] if name.startswith("builtin/") else name
    if key not in MANIFEST:
        raise TaskError(f"unknown built-in task {name!r}; built-in tasks: {', '.join(MANIFEST)}")
    return key


def _builtin_task(name: str) -> Task:
    key = _builtin_key(name)
    path = os.path.join(BUILTIN_DIR, key, "task.py")
    source = _read(path)
    check_task_source(source, path)
    return Task(name=f"builtin/{key}", level=MANIFEST[key][0], source=source, origin="builtin",
                size_profile="as_published")


def builtin_solution(task_name: str, backend: str, variant: int = 0) -> str:
    """Known-good candidate source for a built-in task: backend "cpu" (C++) or "cuda"."""
    key = _builtin_key(task_name)
    if backend not in ("cpu", "cuda"):
        raise TaskError(f"backend {backend!r}: expected 'cpu' or 'cuda'")
    if variant != 0:
        raise TaskError(f"built-in task {task_name!r} has one solution per backend (variant 0), not {variant}")
    return _read(os.path.join(BUILTIN_DIR, key, f"solution_{backend}.py"))


# ------------------------------------------------------------------------------------------------------ directory
_FILE_RE = re.compile(r"^(\d+)_(.+)\.py$")
_LEVEL_RE = re.compile(r"^level(\d+)$")


def default_kernelbench_dir() -> str:
    """$KERNELBENCH_DIR, else ../shared/kernelbench next to the repository."""
    return os.environ.get("KERNELBENCH_DIR") or os.path.join(os.path.dirname(REPO_ROOT), "shared", "kernelbench")


def _sort_key(t: Task) -> tuple:
    stem = t.name.split("/")[-1]
    m = re.match(r"^(\d+)_", stem)
    return (t.level, int(m.group(1)) if m else 10**9, t.name)


def _task_from_file(path: str, name: Optional[str] = None, level: Optional[int] = None) -> Task:
    if not os.path.isfile(path):
        raise TaskError(f"task file not found: {path}")
    source = _read(path)
    check_task_source(source, path)
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    m = _LEVEL_RE.match(parent)
    stem = os.path.splitext(os.path.basename(path))[0]
    if level is None:
        level = int(m.group(1)) if m else 1
    if name is None:
        name = f"level{level}/{stem}" if m else f"file/{stem}"
    return Task(name=name, level=level, source=source, origin=os.path.abspath(path), size_profile="as_published")


def _dir_tasks(root: str, levels: Iterable[int]) -> list[Task]:
    if not os.path.isdir(root):
        raise TaskError(f"task directory not found: {root} (expected KernelBench layout levelN/<id>_<Name>.py; "
                        f"set tasks.path or KERNELBENCH_DIR)")
    tasks = []
    found_level = False
    for level in levels:
        ldir = os.path.join(root, f"level{level}")
        if not os.path.isdir(ldir):
            continue
        found_level = True
        for fn in sorted(os.listdir(ldir)):
            if _FILE_RE.match(fn):
                tasks.append(_task_from_file(os.path.join(ldir, fn), level=level))
    if not found_level:
        raise TaskError(f"{root}: no level directories for levels {list(levels)} (expected {root}/level1/... )")
    return sorted(tasks, key=_sort_key)


def _find_in_dir(root: str, name: str) -> Task:
    """"level1/19_ReLU", "level1/19_ReLU.py" or just "level1/19"."""
    level_part, _, stem = name.partition("/")
    m = _LEVEL_RE.match(level_part)
    if not m or not stem:
        raise TaskError(f"task name {name!r}: expected builtin/<name>, level<N>/<id>_<Name>, or a file path")
    ldir = os.path.join(root, level_part)
    if not os.path.isdir(ldir):
        raise TaskError(f"task {name!r}: directory {ldir} not found (set KERNELBENCH_DIR to a KernelBench checkout)")
    stem = stem[:-3] if stem.endswith(".py") else stem
    files = sorted(fn for fn in os.listdir(ldir) if _FILE_RE.match(fn))
    exact = [fn for fn in files if fn[:-3] == stem]
    by_id = [fn for fn in files if stem.isdigit() and _FILE_RE.match(fn).group(1) == stem]  # type: ignore[union-attr]
    hits = exact or by_id
    if len(hits) != 1:
        raise TaskError(f"task {name!r}: no file {stem}.py in {ldir}" if not hits
                        else f"task {name!r}: ambiguous in {ldir}: {hits}")
    return _task_from_file(os.path.join(ldir, hits[0]), level=int(m.group(1)))


# ------------------------------------------------------------------------------------------------------ hub
def _hf_tasks(dataset: str, levels: Iterable[int]) -> list[Task]:
    try:
        import datasets  # optional dependency
    except ImportError:
        raise TaskError("tasks.source=hf needs the optional 'datasets' package (pip install 'sandbox-rl[hub]'); "
                        "or download KernelBench and use tasks.source=dir tasks.path=<dir>") from None
    tasks = []
    for level in levels:
        try:
            rows = datasets.load_dataset(dataset, split=f"level_{level}")
        except Exception as e:  # the hub raises many types (connection, missing split, auth)
            raise TaskError(f"could not load Hugging Face dataset {dataset!r} split level_{level} "
                            f"({type(e).__name__}: {str(e)[:200]}); the hub may be unreachable: "
                            f"use tasks.source=dir with a local KernelBench directory") from None
        for row in rows:
            stem = str(row.get("name", row.get("problem_id", ""))).removesuffix(".py")
            if not re.match(r"^\d+_", stem) and row.get("problem_id") is not None:
                stem = f"{row['problem_id']}_{stem}"
            source = row["code"]
            origin = f"hf:{dataset}"
            check_task_source(source, f"{origin}/level_{level}/{stem}")
            tasks.append(Task(name=f"level{level}/{stem}", level=level, source=source, origin=origin,
                              size_profile="as_published"))
    return sorted(tasks, key=_sort_key)


# ------------------------------------------------------------------------------------------------------ split
def holdout_score(name: str, split_seed: int) -> float:
    """Uniform in [0, 1), a function of (name, seed) only: a task's side never depends on the other tasks."""
    digest = hashlib.sha256(f"{split_seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_tasks(tasks: list[Task], split: str, holdout_fraction: float, split_seed: int) -> list[Task]:
    if split == "all":
        return list(tasks)
    if split not in ("train", "holdout"):
        raise TaskError(f"tasks.split: {split!r} is not one of 'train', 'holdout', 'all'")
    want_holdout = split == "holdout"
    return [t for t in tasks if (holdout_score(t.name, split_seed) < holdout_fraction) == want_holdout]


# ------------------------------------------------------------------------------------------------------ public API
def with_profile(tasks: list[Task], size_profile: str) -> list[Task]:
    """Apply a size profile to every task (one child process for profiles that need shapes)."""
    size_profiles.parse_profile(size_profile)        # raises ValueError naming the allowed profiles
    if size_profile == "as_published":
        return [replace(t, size_profile=size_profile) for t in tasks]
    sources = size_profiles.apply_profile_many([t.source for t in tasks], size_profile)
    return [replace(t, source=s, size_profile=size_profile) for t, s in zip(tasks, sources)]


def get_task(name_or_path: str, size_profile: str = "as_published", kernelbench_dir: Optional[str] = None) -> Task:
    """One task: "builtin/<name>" (or a bare built-in name), "level<N>/<id>_<Name>" in the KernelBench directory
    (`kernelbench_dir`, else $KERNELBENCH_DIR, else ../shared/kernelbench), or a path to a task file."""
    if name_or_path.startswith("builtin/") or name_or_path in MANIFEST:
        task = _builtin_task(name_or_path)
    elif name_or_path.endswith(".py") and (os.sep in name_or_path or os.path.exists(name_or_path)) \
            and not _LEVEL_RE.match(name_or_path.split("/")[0]):
        task = _task_from_file(name_or_path)
    elif _LEVEL_RE.match(name_or_path.split("/")[0]):
        task = _find_in_dir(kernelbench_dir or default_kernelbench_dir(), name_or_path)
    else:
        raise TaskError(f"task {name_or_path!r} not found: expected builtin/<name> (one of {', '.join(MANIFEST)}), "
                        f"level<N>/<id>_<Name>, or an existing .py file")
    return with_profile([task], size_profile)[0]


def load_tasks(tasks_cfg: Any) -> list[Task]:
    """Tasks selected by a TasksConfig (runtime/config.py): source, path, hf_dataset, levels, names, split,
    holdout_fraction, split_seed, max_tasks, size_profile. Raises TaskError when nothing is left to train on."""
    source = tasks_cfg.source
    levels = list(tasks_cfg.levels)
    if source == "builtin":
        tasks = [t for t in (_builtin_task(n) for n in builtin_task_names()) if t.level in levels]
    elif source == "dir":
        tasks = _dir_tasks(tasks_cfg.path or default_kernelbench_dir(), levels)
    elif source == "file":
        if not tasks_cfg.path:
            raise TaskError("tasks.path: required when tasks.source is 'file'")
        tasks = [_task_from_file(tasks_cfg.path)]
    elif source == "hf":
        tasks = _hf_tasks(tasks_cfg.hf_dataset, levels)
    else:
        raise TaskError(f"tasks.source: {source!r} is not one of 'builtin', 'dir', 'file', 'hf'")
    total = len(tasks)
    if tasks_cfg.names:
        tasks = [t for t in tasks if any(s in t.name for s in tasks_cfg.names)]
    if source != "file":     # one explicit file is used as it is
        tasks = split_tasks(tasks, tasks_cfg.split, tasks_cfg.holdout_fraction, tasks_cfg.split_seed)
    if tasks_cfg.max_tasks is not None:
        tasks = tasks[: tasks_cfg.max_tasks]
    if not tasks:
        raise TaskError(f"no tasks left: source={source} found {total}, then levels={levels}, names={tasks_cfg.names}, "
                        f"split={tasks_cfg.split} (holdout_fraction={tasks_cfg.holdout_fraction}, "
                        f"split_seed={tasks_cfg.split_seed}) removed the rest")
    return with_profile(tasks, tasks_cfg.size_profile)
