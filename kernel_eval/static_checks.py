"""Static checks on a candidate before anything runs: AST analysis of the Python module plus token checks of its
C++/CUDA sources (kernel_eval/cxx_checks.py).

    verdict = check_candidate(code, backend="cpu", task_source=task.source)
    # StaticVerdict(ok=False, reason="torch_compute_in_forward",
    #               detail="line 14: `return torch.relu(x)` -- PyTorch compute (torch.relu) in forward; ...")

The first failing rule (in the order of `REASONS`) decides the reason; the detail names the line. Rules:
- syntax error / empty -> "format"
- try/except anywhere -> "try_except"; any `pass` statement -> "pass_statement" (Kevin's rules)
- exec/eval/compile/__import__, importlib/runpy/pickle/marshal -> "exec_eval"
- threading, multiprocessing, subprocess, concurrent, asyncio, signal, ctypes, os.fork/system/_exit, torch.jit.fork,
  std::thread/fork/system in C++ -> "threads_or_processes"
- torch.cuda.Stream/stream/set_stream/CUDA graphs, cudaStreamCreate/getStreamFromPool -> "extra_stream"
- subclasses of torch.Tensor, __torch_function__/__torch_dispatch__, dispatch modes, as_subclass, assigning __class__
  -> "tensor_subclass"
- assigning/deleting attributes of imported modules or objects (torch.allclose = ..., time.perf_counter = ...),
  attributes named like the checker's tools (allclose, synchronize, perf_counter, ...) on anything, setattr/delattr
  on anything but self, builtins, attributes of the candidate's own classes after definition (ModelNew.forward = ...),
  forward/__call__ assigned in a class body instead of defined -> "monkey_patching"
- sys/inspect/gc/traceback/types, globals()/locals()/vars(), frame and function internals (f_back, __globals__,
  __dict__, ...), private torch attributes (torch._C ...), getattr with a computed name -> "introspection"
- id(...) anywhere; data_ptr()/tensors used as dict keys, in `in`/`is` tests; lru_cache/cache; weakref;
  static tensor/pointer state in C++ -> "identity_cache"
- open(), file/path modules, torch.load, cpp_extension.load (files), the task's classes or functions used or
  imported (Model, get_inputs), the task module imported -> "imports_reference"
- any other import outside ALLOWED_IMPORTS -> "forbidden_import"
- no module-level `class ModelNew` with a forward -> "no_model_new"; it (or any class) derives from a task class
  -> "subclasses_reference"
- cuda_sources / __global__ on the cpu backend, or no cuda_sources on the cuda backend -> "wrong_backend"
- no load_inline, empty or non-literal sources, a CPU source without a loop, CUDA without __global__ -> "no_kernel"
- ATen compute in the C++/CUDA source (torch::matmul, at::relu, x.mm(...)) -> "aten_compute_in_kernel"
- float32 task and half/bfloat16/tf32/autocast anywhere -> "precision_downgrade"
- PyTorch compute reachable from any forward (ModelNew's, its helper methods and functions, other candidate
  classes' forward): torch.* / F.* calls outside the glue allowlist, torch.nn modules called, compute tensor methods
  (x.sum(), x.matmul()), `@`, arithmetic or comparisons on values known to be tensors, torch compute functions used
  as values anywhere (`ops = [torch.relu]`, a default argument, `self.act = F.gelu`) -> "torch_compute_in_forward"
- no call of an extension function reachable from ModelNew.forward -> "kernel_not_called"

Allowed imports (ALLOWED_IMPORTS): torch and its public submodules (minus the ones above), math, typing, functools
(minus lru_cache/cache), __future__. Kernel sources must be string literals, module-level names bound to them, lists,
`+` concatenations, "sep".join([...]) or f-strings whose fields are such constants: a source the checker cannot read
is a "no_kernel" reject, because unreadable source cannot be checked for ATen calls.

Limits (be honest): this is a static filter over hostile code; determined obfuscation (code built at run time,
C macros) can hide things from it, which is why the evaluator's runtime defenses exist and the adversarial suite in
tests/adversarial/ keeps cases that only the runtime catches. "Known to be a tensor" is a local inference (forward
parameters, extension results, allocations, views, tensor attributes of self), so arithmetic on values it cannot
type is not flagged. Tests: `python -m pytest tests/test_static_checks.py tests/test_adversarial.py -q`.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Optional

from kernel_eval import cxx_checks
from kernel_eval.static_forward import ForwardChecker, Reject, snippet

REASONS = ("format", "try_except", "pass_statement", "exec_eval", "threads_or_processes", "extra_stream",
           "tensor_subclass", "monkey_patching", "introspection", "identity_cache", "imports_reference",
           "forbidden_import", "no_model_new", "subclasses_reference", "wrong_backend", "no_kernel",
           "aten_compute_in_kernel", "precision_downgrade", "torch_compute_in_forward", "kernel_not_called")
ALLOWED_IMPORTS = ("torch", "math", "typing", "functools", "__future__")
# Import roots that are cheats in themselves, with the reason they get (checked before the allowlist).
_IMPORT_REASONS = {
    **dict.fromkeys(("threading", "_thread", "multiprocessing", "subprocess", "concurrent", "asyncio", "signal",
                     "ctypes", "cffi", "sched", "torch.multiprocessing", "torch.distributed"), "threads_or_processes"),
    **dict.fromkeys(("importlib", "runpy", "code", "codeop", "marshal", "pickle", "dill", "cloudpickle", "imp",
                     "zipimport", "pkgutil"), "exec_eval"),
    **dict.fromkeys(("sys", "inspect", "gc", "traceback", "types", "dis", "tracemalloc", "builtins", "__builtin__",
                     "ast", "torch._C", "torch._dynamo", "torch._inductor", "torch.fx"), "introspection"),
    **dict.fromkeys(("weakref",), "identity_cache"),
    **dict.fromkeys(("io", "pathlib", "shutil", "tempfile", "glob", "fileinput", "__main__", "kernel_eval",
                     "kernelbench", "reference", "tests"), "imports_reference"),
    **dict.fromkeys(("torch.overrides", "torch.utils._python_dispatch"), "tensor_subclass"),
}
_BAD_QUALNAMES = {   # qualified names (after alias resolution) that are rejected wherever they appear
    "threads_or_processes": ("os.fork", "os.forkpty", "os.system", "os.popen", "os.spawn", "os.exec", "os._exit",
                             "os.kill", "os.abort", "torch.jit.fork", "torch.jit._fork", "torch.futures",
                             "torch.multiprocessing", "torch.distributed"),
    "extra_stream": ("torch.cuda.Stream", "torch.cuda.stream", "torch.cuda.StreamContext", "torch.cuda.set_stream",
                     "torch.cuda.ExternalStream", "torch.Stream", "torch.cuda.graph", "torch.cuda.CUDAGraph",
                     "torch.cuda.make_graphed_callables", "torch.cuda.graphs"),
    "tensor_subclass": ("torch.overrides", "torch.utils._python_dispatch", "torch.Tensor._make_subclass",
                        "torch.Tensor._make_wrapper_subclass", "torch.Tensor.as_subclass",
                        "torch._C.DisableTorchFunction",
                        "torch._C._disabled_torch_function_impl"),
    "exec_eval": ("@exec", "@eval", "@compile", "@__import__", "@execfile"),
    "introspection": ("@globals", "@locals", "@vars", "@breakpoint", "@__builtins__", "@__doc__", "@__loader__",
                      "@__spec__", "torch.get_rng_state", "torch.set_rng_state", "torch.random", "torch.Generator",
                      "torch.cuda.get_rng_state", "torch.cuda.set_rng_state"),
    "identity_cache": ("@id", "@hash", "functools.lru_cache", "functools.cache", "functools.cached_property"),
    "imports_reference": ("@open", "torch.load", "torch.save", "torch.utils.cpp_extension.load",
                          "torch.utils.cpp_extension.load_inline_file", "torch.hub", "torch.ops.load_library",
                          "@exit", "@quit"),
    "precision_downgrade": ("torch.float16", "torch.half", "torch.bfloat16", "torch.float8", "torch.autocast",
                            "torch.cuda.amp", "torch.amp", "torch.set_float32_matmul_precision",
                            "torch.backends.cuda.matmul.allow_fp16", "torch.cpu.amp"),
    "torch_compute_in_forward": ("torch.compile", "torch.jit", "torch.func", "torch.vmap"),
}
_INTROSPECTION_ATTRS = {"f_back", "f_locals", "f_globals", "f_code", "f_builtins", "f_trace", "tb_frame", "tb_next",
                        "gi_frame", "cr_frame", "ag_frame", "gi_code", "__globals__", "__code__", "__closure__",
                        "__dict__", "__subclasses__", "__bases__", "__base__", "__mro__", "__builtins__",
                        "_getframe", "__class__", "__reduce__", "__reduce_ex__", "__getattribute__", "__self__",
                        "__func__", "__wrapped__", "__module__", "__doc__", "__loader__", "__spec__", "_cdata",
                        "__init_subclass__", "__set_name__", "__defaults__", "__kwdefaults__"}
_SUBCLASS_ATTRS = {"__torch_function__", "__torch_dispatch__", "_make_subclass", "_make_wrapper_subclass",
                   "as_subclass"}
# Attribute names that belong to the checker's tools: assigning them on anything is a patch.
_PATCH_ATTRS = {"allclose", "isclose", "equal", "testing", "assert_close", "perf_counter", "perf_counter_ns",
                "time", "time_ns", "monotonic", "monotonic_ns", "process_time", "synchronize", "elapsed_time",
                "Event", "record", "manual_seed", "__eq__", "__ne__", "__torch_function__"}


@dataclass
class StaticVerdict:
    ok: bool
    reason: Optional[str]
    detail: str


def check_candidate(code: str, backend: str, task_source: Optional[str] = None) -> StaticVerdict:
    """Never raises for a bad candidate: every failure is a StaticVerdict with a reason from REASONS."""
    try:
        _check(code, backend, task_source)
    except Reject as r:
        return StaticVerdict(False, r.reason, r.detail)
    except RecursionError:
        return StaticVerdict(False, "format", "the module is too deeply nested to analyse")
    return StaticVerdict(True, None, "passed static checks")


def _task_names(task_source: Optional[str]) -> tuple[set[str], set[str], bool]:
    """-> (task class names, task function names, task is float32)."""
    if not task_source:
        return {"Model"}, {"get_inputs", "get_init_inputs"}, True
    try:
        tree = ast.parse(task_source)
    except SyntaxError:
        return {"Model"}, {"get_inputs", "get_init_inputs"}, True
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)} | {"Model"}
    funcs = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    low_precision = any(s in task_source for s in ("float16", "bfloat16", ".half()", "torch.half", "float8"))
    return classes, funcs, not low_precision


class _GetattrToAttribute(ast.NodeTransformer):
    """getattr(obj, "name") -> obj.name, so one set of attribute rules sees both spellings."""

    def visit_Call(self, node: ast.Call):
        self.generic_visit(node)
        if (isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) in (2, 3)
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            return ast.copy_location(ast.Attribute(value=node.args[0], attr=node.args[1].value, ctx=ast.Load()), node)
        return node


def _check(code: str, backend: str, task_source: Optional[str]) -> None:
    if backend not in ("cpu", "cuda"):
        raise ValueError(f"backend must be 'cpu' or 'cuda', got {backend!r}")
    if not isinstance(code, str) or not code.strip():
        raise Reject("format", "the candidate is empty: write a Python module defining class ModelNew")
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise Reject("format", f"line {e.lineno}: syntax error: {e.msg}") from None
    tree = ast.fix_missing_locations(_GetattrToAttribute().visit(tree))
    lines = code.split("\n")
    task_classes, task_funcs, float32 = _task_names(task_source)
    fc = ForwardChecker(tree, lines)
    sources = fc.kernel_sources()            # [(text, line)] of every load_inline argument, or Reject("no_kernel")
    cxx = cxx_checks.scan_sources(sources + fc.other_code_strings(), float32_task=float32)

    def cxx_reject(reason: str) -> None:
        if reason in cxx:
            raise Reject(reason, cxx[reason])

    nodes = list(ast.walk(tree))
    for n in nodes:
        if isinstance(n, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            raise Reject("try_except", f"{snippet(lines, n)} -- try/except is not allowed (no fallbacks); "
                                       f"let errors surface")
    for n in nodes:
        if isinstance(n, ast.Pass):
            raise Reject("pass_statement", f"{snippet(lines, n)} -- `pass` is not allowed; every block must do work")
    imports = _imports(nodes)
    for reason in ("exec_eval", "threads_or_processes", "extra_stream", "tensor_subclass"):
        _import_rule(imports, reason, lines)
        _qualname_rule(fc, nodes, reason, lines)
        if reason == "tensor_subclass":
            _tensor_subclass_rule(fc, nodes, lines)
        cxx_reject(reason)
    _monkey_patch_rule(fc, nodes, lines)
    cxx_reject("monkey_patching")
    for reason in ("introspection", "identity_cache"):
        _import_rule(imports, reason, lines)
        _qualname_rule(fc, nodes, reason, lines)
        if reason == "introspection":
            _introspection_attrs(fc, nodes, lines)
        else:
            fc.identity_keys()
        cxx_reject(reason)
    _import_rule(imports, "imports_reference", lines)
    _qualname_rule(fc, nodes, "imports_reference", lines)
    _reference_use(tree, nodes, imports, task_classes | task_funcs, lines)
    cxx_reject("imports_reference")
    for node, mod in imports:
        root = mod.split(".")[0]
        if root not in ALLOWED_IMPORTS:
            raise Reject("forbidden_import", f"{snippet(lines, node)} -- import of {mod!r} is not allowed "
                                             f"(allowed: {', '.join(ALLOWED_IMPORTS)})")
    cxx_reject("forbidden_import")
    fc.model_new(task_classes)               # no_model_new / subclasses_reference
    fc.backend_and_kernel(backend)           # wrong_backend / no_kernel
    cxx_reject("aten_compute_in_kernel")
    if float32:
        _qualname_rule(fc, nodes, "precision_downgrade", lines)
        fc.precision_methods()
        cxx_reject("precision_downgrade")
    _qualname_rule(fc, nodes, "torch_compute_in_forward", lines)
    fc.forward_compute()                     # torch_compute_in_forward / kernel_not_called


def _imports(nodes) -> list[tuple[ast.AST, str]]:
    out = []
    for n in nodes:
        if isinstance(n, ast.Import):
            out += [(n, a.name) for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            mod = "." * n.level + (n.module or "")
            out.append((n, mod))
            out += [(n, f"{mod}.{a.name}") for a in n.names]
    return out


def _import_rule(imports, reason: str, lines) -> None:
    for node, mod in imports:
        for bad, why in _IMPORT_REASONS.items():
            if why == reason and (mod == bad or mod.startswith(bad + ".")):
                raise Reject(reason, f"{snippet(lines, node)} -- import of {mod!r} is not allowed ({reason})")


def _qualname_rule(fc: ForwardChecker, nodes, reason: str, lines) -> None:
    for n in nodes:
        if isinstance(n, (ast.Name, ast.Attribute)):
            q = fc.qualname(n)
            if q and any(q == b or q.startswith(b + ".") or (b.endswith("float8") and q.startswith(b))
                         for b in _BAD_QUALNAMES[reason]):
                raise Reject(reason, f"{snippet(lines, n)} -- {q.lstrip('@')} is not allowed ({reason})")


def _tensor_subclass_rule(fc: ForwardChecker, nodes, lines) -> None:
    for n in nodes:
        if isinstance(n, ast.ClassDef):
            for b in n.bases:
                q = fc.qualname(b) or ""
                if q.startswith("torch.") and q.split(".")[-1] in ("Tensor", "TensorBase", "_TensorBase"):
                    raise Reject("tensor_subclass", f"{snippet(lines, n)} -- subclassing torch.Tensor is not allowed")
        name = (n.attr if isinstance(n, ast.Attribute) else n.name if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                else n.id if isinstance(n, ast.Name) else None)
        if name in _SUBCLASS_ATTRS:
            raise Reject("tensor_subclass", f"{snippet(lines, n)} -- {name} (tensor subclass machinery) is not "
                                            f"allowed")
        if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                if isinstance(t, ast.Attribute) and t.attr == "__class__":
                    raise Reject("tensor_subclass", f"{snippet(lines, n)} -- changing an object's __class__ is not "
                                                    f"allowed")


def _monkey_patch_rule(fc: ForwardChecker, nodes, lines) -> None:
    for n in nodes:
        targets = list(n.targets if isinstance(n, (ast.Assign, ast.Delete)) else [n.target]
                       if isinstance(n, (ast.AugAssign, ast.AnnAssign)) else [])
        flat = []
        while targets:
            t = targets.pop()
            if isinstance(t, (ast.Tuple, ast.List)):
                targets += t.elts
            elif isinstance(t, ast.Starred):
                targets.append(t.value)
            else:
                flat.append(t)
        for t in flat:
            if not isinstance(t, (ast.Attribute, ast.Subscript)):
                continue
            root = t
            while isinstance(root, (ast.Attribute, ast.Subscript)):
                root = root.value
            rq = fc.qualname(root) if isinstance(root, ast.Name) else None
            is_import = bool(rq) and not rq.startswith("@")
            patched = isinstance(t, ast.Attribute) and t.attr in _PATCH_ATTRS
            is_class = isinstance(root, ast.Name) and root.id in fc.classes     # ModelNew.forward = ... later on
            if is_import or patched or is_class or (isinstance(root, ast.Name)
                                                    and root.id in ("__builtins__", "builtins")):
                raise Reject("monkey_patching", f"{snippet(lines, n)} -- changing attributes of modules or of the "
                                                f"checker's tools is not allowed")
        if isinstance(n, ast.ClassDef):
            for stmt in n.body:
                names = [t.id for t in (stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target",
                         None)]) if isinstance(t, ast.Name)] if isinstance(stmt, (ast.Assign, ast.AnnAssign)) else []
                if set(names) & {"forward", "__call__", "_call_impl", "__getattr__", "__getattribute__"}:
                    raise Reject("monkey_patching", f"{snippet(lines, stmt)} -- {names[0]} must be a method (def), "
                                                    f"not an assigned value")
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("setattr", "delattr")
                and not (n.args and isinstance(n.args[0], ast.Name) and n.args[0].id == "self")):
            raise Reject("monkey_patching", f"{snippet(lines, n)} -- {n.func.id} on anything but self is not allowed")


def _introspection_attrs(fc: ForwardChecker, nodes, lines) -> None:
    for n in nodes:
        if isinstance(n, ast.Attribute):
            q = fc.qualname(n) or ""
            if n.attr in _INTROSPECTION_ATTRS:
                raise Reject("introspection", f"{snippet(lines, n)} -- {n.attr} (frame/object internals) is not "
                                              f"allowed")
            if q.startswith("torch._") or ".torch._" in q:
                raise Reject("introspection", f"{snippet(lines, n)} -- private torch internals ({q}) are not allowed")
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("getattr", "hasattr"):
            raise Reject("introspection", f"{snippet(lines, n)} -- {n.func.id} with a computed name is not allowed")
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "type" and len(n.args) == 3:
            raise Reject("introspection", f"{snippet(lines, n)} -- building classes with type() is not allowed")


def _reference_use(tree, nodes, imports, task_names: set[str], lines) -> None:
    defined = {n.name for n in nodes if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))}
    defined |= {t.id for n in nodes if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    for node, mod in imports:
        if mod.split(".")[-1] in task_names:
            raise Reject("imports_reference", f"{snippet(lines, node)} -- importing the task's {mod.split('.')[-1]} "
                                              f"is not allowed: write your own kernel")
    bases = {id(b) for n in nodes if isinstance(n, ast.ClassDef) for b in n.bases}   # left to model_new()
    for n in nodes:
        if (isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in task_names and n.id not in defined
                and id(n) not in bases):
            raise Reject("imports_reference", f"{snippet(lines, n)} -- using the task's {n.id} is not allowed: "
                                              f"ModelNew must compute the result with its own kernel")
