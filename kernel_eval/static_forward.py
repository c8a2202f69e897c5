"""The module-structure half of the static checks: name resolution, the load_inline extensions and their sources,
ModelNew and the code reachable from its forward (see kernel_eval/static_checks.py for the rules and their order).

Everything here is a local, conservative inference over one module's AST: names bound by imports resolve to
qualified names ("F.relu" -> "torch.nn.functional.relu"), names bound to load_inline results (directly, through a
function that returns one, or through self attributes) are extensions, and calls of their attributes are kernel
calls. Unknown receivers are not extensions, so `obj.sum()` on an unknown object counts as tensor compute.
"""
from __future__ import annotations

import ast
from typing import Optional

from kernel_eval.cxx_checks import COMPUTE_METHODS, has_cuda_kernel, has_loop

LOAD_INLINE = "torch.utils.cpp_extension.load_inline"
# torch.* callables allowed in forward: allocation, shapes/views, metadata, no-grad contexts, the current stream.
ALLOWED_TORCH_IN_FORWARD = frozenset("""
empty empty_like empty_strided zeros zeros_like ones ones_like full full_like tensor as_tensor Size device dtype
is_tensor is_floating_point is_complex numel get_default_dtype no_grad inference_mode enable_grad broadcast_shapes
finfo iinfo reshape flatten squeeze unsqueeze permute transpose t narrow select chunk split unbind movedim
cuda.current_stream cuda.current_device cuda.is_available cuda.synchronize cuda.get_device_properties
cuda.device_count cuda.device cuda.get_device_capability utils.cpp_extension.load_inline Tensor.size Tensor.dim
Tensor.contiguous Tensor.view Tensor.reshape Tensor.data_ptr Tensor.numel nn.Parameter
""".split())
# Tensor methods that return a view/metadata of their receiver (for "is this a tensor" inference only).
VIEW_METHODS = frozenset("view reshape contiguous flatten unsqueeze squeeze permute transpose t expand expand_as "
                         "view_as narrow select to float double cpu cuda detach unflatten movedim as_strided "
                         "requires_grad_ fill_ zero_ new_empty new_zeros".split())
_TORCH_CONTAINERS = {"torch.nn.ModuleList", "torch.nn.ModuleDict", "torch.nn.Sequential"}
_NOT_MODULES = {"torch.nn.Parameter", "torch.nn.ParameterList", "torch.nn.ParameterDict", "torch.nn.Module",
                "torch.nn.init", "torch.nn.functional", "torch.nn.utils"}
_TENSOR_FACTORIES = {"torch.empty", "torch.zeros", "torch.ones", "torch.randn", "torch.rand", "torch.full",
                     "torch.tensor", "torch.empty_like", "torch.zeros_like", "torch.ones_like", "torch.randn_like",
                     "torch.arange", "torch.linspace", "torch.nn.Parameter", "torch.as_tensor"}
_MODULE_CALL_ATTRS = {"forward", "__call__", "_conv_forward", "_call_impl", "extra_repr"}
UNRESOLVED = object()


class Reject(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def snippet(lines: list[str], node: ast.AST) -> str:
    n = getattr(node, "lineno", 0)
    text = lines[n - 1].strip() if 0 < n <= len(lines) else ""
    return f"line {n}: `{text[:100]}`"


def _is_self(e) -> bool:
    return isinstance(e, ast.Name) and e.id == "self"


def _self_attr(e) -> Optional[str]:
    return e.attr if isinstance(e, ast.Attribute) and _is_self(e.value) else None


class ForwardChecker:
    def __init__(self, tree: ast.Module, lines: list[str]):
        self.tree, self.lines = tree, lines
        self.nodes = list(ast.walk(tree))
        self.aliases: dict[str, str] = {}
        for n in self.nodes:
            if isinstance(n, ast.Import):
                for a in n.names:
                    if a.asname:
                        self.aliases[a.asname] = a.name
                    else:
                        self.aliases[a.name.split(".")[0]] = a.name.split(".")[0]
            elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
                for a in n.names:
                    self.aliases[a.asname or a.name] = f"{n.module}.{a.name}"
        self.local_names = {a.arg for n in self.nodes if isinstance(n, ast.arguments)
                            for a in n.posonlyargs + n.args + n.kwonlyargs + [n.vararg, n.kwarg] if a}
        self.local_names |= {n.name for n in self.nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                          ast.ClassDef))}
        for _ in range(3):      # `t = torch` makes t an alias too
            for n in self.nodes:
                if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
                    q = self.qualname(n.value) if isinstance(n.value, (ast.Name, ast.Attribute)) else None
                    if q and not q.startswith("@"):
                        self.aliases[n.targets[0].id] = q
        self.local_names |= {t.id for n in self.nodes if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign,
                             ast.For, ast.comprehension, ast.With, ast.NamedExpr))
                             for t in ast.walk(n.target if hasattr(n, "target") else n)
                             if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)}
        self.classes = {n.name: n for n in self.tree.body if isinstance(n, ast.ClassDef)}
        self.functions = {n.name: n for n in self.nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self._find_extensions()
        self._find_self_attrs()

    # ---- names -------------------------------------------------------------------------------------------------
    def qualname(self, e) -> Optional[str]:
        """Dotted name of an import-rooted expression; "@name" for a builtin; None for local/unknown values."""
        if isinstance(e, ast.Name):
            if e.id in self.aliases:
                return self.aliases[e.id]
            return None if e.id in self.local_names else "@" + e.id
        if isinstance(e, ast.Attribute):
            base = self.qualname(e.value)
            return f"{base}.{e.attr}" if base else None
        return None

    # ---- extensions ---------------------------------------------------------------------------------------------
    def _is_load_inline(self, call) -> bool:
        return isinstance(call, ast.Call) and self.qualname(call.func) == LOAD_INLINE

    def is_ext(self, e) -> bool:
        if self._is_load_inline(e):
            return True
        if isinstance(e, ast.Name):
            return e.id in self.ext_names
        if _self_attr(e):
            return _self_attr(e) in self.ext_attrs
        if isinstance(e, ast.Call):
            f = e.func
            return (isinstance(f, ast.Name) and f.id in self.ext_funcs) or (_self_attr(f) in self.ext_funcs)
        return False

    def is_kernel_call(self, call: ast.Call) -> bool:
        f = call.func
        if isinstance(f, ast.Attribute) and self.is_ext(f.value):
            return True
        return (isinstance(f, ast.Name) and f.id in self.kernel_fns) or (_self_attr(f) in self.kernel_fn_attrs)

    def _find_extensions(self) -> None:
        self.ext_names, self.ext_attrs, self.ext_funcs = set(), set(), set()
        self.kernel_fns, self.kernel_fn_attrs = set(), set()
        for _ in range(4):      # fixpoint over a few levels of indirection
            for n in self.nodes:
                if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None:
                    targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                    ext = self.is_ext(n.value)
                    fn = isinstance(n.value, ast.Attribute) and self.is_ext(n.value.value)
                    for t in targets:
                        if isinstance(t, ast.Name):
                            (self.ext_names if ext else self.kernel_fns if fn else set()).add(t.id)
                        elif _self_attr(t):
                            (self.ext_attrs if ext else self.kernel_fn_attrs if fn else set()).add(_self_attr(t))
            for f in self.functions.values():
                if any(isinstance(r, ast.Return) and r.value is not None and self.is_ext(r.value)
                       for r in ast.walk(f)):
                    self.ext_funcs.add(f.name)
        self.load_calls = [n for n in self.nodes if self._is_load_inline(n)]

    def _module_value(self, name: str):
        """The module-level string a name is bound to: first assignment plus `+=` extensions, in order."""
        parts = []
        for stmt in self.tree.body:
            if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
                parts = [stmt.value]
            elif (isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name
                  and isinstance(stmt.op, ast.Add)):
                parts.append(stmt.value)
        return parts

    def resolve_str(self, e, depth: int = 0):
        """-> [(text, line)] pieces of a statically known string, or UNRESOLVED."""
        if depth > 20:
            return UNRESOLVED
        if isinstance(e, ast.Constant) and isinstance(e.value, str):
            return [(e.value, e.lineno)]
        if isinstance(e, ast.Constant) and isinstance(e.value, (int, float)):
            return [(str(e.value), e.lineno)]
        if isinstance(e, ast.JoinedStr):
            out = []
            for v in e.values:
                r = self.resolve_str(v.value if isinstance(v, ast.FormattedValue) else v, depth + 1)
                if r is UNRESOLVED:
                    return UNRESOLVED
                out += r
            return out
        if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Add):
            a, b = self.resolve_str(e.left, depth + 1), self.resolve_str(e.right, depth + 1)
            return UNRESOLVED if a is UNRESOLVED or b is UNRESOLVED else a + b
        if isinstance(e, (ast.List, ast.Tuple)):
            out = []
            for el in e.elts:
                r = self.resolve_str(el, depth + 1)
                if r is UNRESOLVED:
                    return UNRESOLVED
                out += r + [("\n", el.lineno)]
            return out
        if isinstance(e, ast.Name):
            parts = self._module_value(e.id)
            out = []
            for p in parts:
                r = self.resolve_str(p, depth + 1)
                if r is UNRESOLVED:
                    return UNRESOLVED
                out += r
            return out if parts else UNRESOLVED
        if (isinstance(e, ast.Call) and isinstance(e.func, ast.Attribute) and e.func.attr == "join"
                and len(e.args) == 1 and not e.keywords):
            sep, items = self.resolve_str(e.func.value, depth + 1), self.resolve_str(e.args[0], depth + 1)
            return UNRESOLVED if sep is UNRESOLVED or items is UNRESOLVED else items
        return UNRESOLVED

    def _source_arg(self, call: ast.Call, kw: str, pos: int):
        for k in call.keywords:
            if k.arg == kw:
                return k.value
        return call.args[pos] if len(call.args) > pos else None

    def kernel_sources(self) -> list[tuple[str, int]]:
        """Pieces of every load_inline source (scanned piece by piece, then joined so split tokens are seen)."""
        self.sources = []      # [(call, kind, pieces | UNRESOLVED | None)]
        out = []
        for call in self.load_calls:
            for kind, pos in (("cpp_sources", 1), ("cuda_sources", 2)):
                arg = self._source_arg(call, kind, pos)
                if arg is None or (isinstance(arg, ast.Constant) and arg.value is None):
                    self.sources.append((call, kind, None))
                    continue
                pieces = self.resolve_str(arg)
                self.sources.append((call, kind, pieces))
                if pieces is not UNRESOLVED:
                    out += pieces + [("".join(t for t, _ in pieces), pieces[0][1] if pieces else call.lineno)]
        return out

    def other_code_strings(self) -> list[tuple[str, int]]:
        docstrings = {id(b.body[0].value) for b in self.nodes
                      if isinstance(b, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and b.body and isinstance(b.body[0], ast.Expr) and isinstance(b.body[0].value, ast.Constant)}
        return [(n.value, n.lineno) for n in self.nodes
                if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
                and any(tok in n.value for tok in (";", "{", "::", "#include", "<<<"))]

    def backend_and_kernel(self, backend: str) -> None:
        if not self.load_calls:
            raise Reject("no_kernel", "no torch.utils.cpp_extension.load_inline call: ModelNew must call a "
                                      f"{'C++' if backend == 'cpu' else 'CUDA'} kernel compiled with load_inline")
        for call, kind, pieces in self.sources:
            if pieces is UNRESOLVED:
                raise Reject("no_kernel", f"{snippet(self.lines, call)} -- {kind} must be string literals (or "
                                          f"module-level names, lists or + of them) so the kernel can be checked")
        text = {k: ["".join(t for t, _ in p) for _, kk, p in self.sources if kk == k and p] for k in
                ("cpp_sources", "cuda_sources")}
        cpp = [t for t in text["cpp_sources"] if t.strip()]
        cuda = [t for t in text["cuda_sources"] if t.strip()]
        first = snippet(self.lines, self.load_calls[0])
        if backend == "cpu":
            if cuda or any(has_cuda_kernel(t) or "<<<" in t for t in cpp) or any(
                    k.arg == "with_cuda" and isinstance(k.value, ast.Constant) and k.value.value
                    for c in self.load_calls for k in c.keywords):
                raise Reject("wrong_backend", f"{first} -- CUDA code on the cpu backend: use cpp_sources only, "
                                              f"with plain C++ loops (OpenMP allowed)")
            if not cpp:
                raise Reject("no_kernel", f"{first} -- cpp_sources is empty")
            if not any(has_loop(t) for t in cpp):
                raise Reject("no_kernel", f"{first} -- the C++ source has no loop: a CPU kernel must compute the "
                                          f"output itself")
        else:
            if not cuda:
                raise Reject("wrong_backend" if cpp else "no_kernel",
                             f"{first} -- the cuda backend needs a CUDA kernel in cuda_sources "
                             f"(plus a declaration in cpp_sources)")
            if not any(has_cuda_kernel(t) for t in cuda):
                raise Reject("no_kernel", f"{first} -- cuda_sources defines no __global__ kernel")

    # ---- self attributes and classes ---------------------------------------------------------------------------
    def _torch_module_ctor(self, e) -> bool:
        q = self.qualname(e.func) if isinstance(e, ast.Call) else None
        return bool(q) and q.startswith("torch.nn.") and q not in _NOT_MODULES and q.split(".")[-1][:1].isupper()

    def _find_self_attrs(self) -> None:
        self.torch_module_attrs, self.tensor_attrs, self.candidate_module_attrs = set(), set(), {}
        self.torch_module_names = set()      # plain names bound to torch.nn modules (module-level `lin = nn.Linear()`)
        for n in self.nodes:
            if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call):
                q = self.qualname(n.value.func)
                inner = [c for c in ast.walk(n.value) if isinstance(c, ast.Call)][1:]
                if self._torch_module_ctor(n.value) or (q in _TORCH_CONTAINERS and any(self._torch_module_ctor(c)
                                                                                       for c in inner)):
                    self.torch_module_names |= {t.id for t in n.targets if isinstance(t, ast.Name)}
        for n in self.nodes:
            if isinstance(n, ast.Call) and _self_attr(n.func) in ("register_buffer", "register_parameter") \
                    and n.args and isinstance(n.args[0], ast.Constant):
                self.tensor_attrs.add(str(n.args[0].value))
            if not (isinstance(n, ast.Assign) and any(_self_attr(t) for t in n.targets)):
                continue
            v = n.value
            calls = [c for c in ast.walk(v) if isinstance(c, ast.Call)]
            for t in n.targets:
                name = _self_attr(t)
                if not name:
                    continue
                q = self.qualname(v.func) if isinstance(v, ast.Call) else None
                if q in _TORCH_CONTAINERS:
                    if any(self._torch_module_ctor(c) for c in calls[1:]):
                        self.torch_module_attrs.add(name)
                elif self._torch_module_ctor(v):
                    self.torch_module_attrs.add(name)
                if q in _TENSOR_FACTORIES or (isinstance(v, ast.Attribute) and v.attr in ("weight", "bias")):
                    self.tensor_attrs.add(name)
                cls = {c.func.id for c in calls if isinstance(c.func, ast.Name) and c.func.id in self.classes}
                if cls:
                    self.candidate_module_attrs.setdefault(name, set()).update(cls)

    def _methods(self, cls: ast.ClassDef, seen=None) -> dict[str, ast.FunctionDef]:
        """Methods of a candidate class including candidate-defined bases (base first, overridden by subclass)."""
        seen = seen or set()
        out = {}
        for b in cls.bases:
            if isinstance(b, ast.Name) and b.id in self.classes and b.id not in seen:
                seen.add(b.id)
                out.update(self._methods(self.classes[b.id], seen))
        out.update({f.name: f for f in cls.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))})
        return out

    def model_new(self, task_classes: set[str]) -> None:
        for n in self.nodes:
            if isinstance(n, ast.ClassDef):
                for b in n.bases:
                    name = b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else None
                    if name in task_classes:
                        raise Reject("subclasses_reference", f"{snippet(self.lines, n)} -- deriving from the task's "
                                                             f"{name} is not allowed: write your own kernel")
        if "ModelNew" not in self.classes:
            for n in self.tree.body:
                if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ModelNew"
                                                     for t in n.targets):
                    if isinstance(n.value, ast.Name) and n.value.id in task_classes:
                        raise Reject("subclasses_reference", f"{snippet(self.lines, n)} -- ModelNew is the task's "
                                                             f"{n.value.id}")
            raise Reject("no_model_new", "no module-level `class ModelNew(torch.nn.Module)` found")
        cls = self.classes["ModelNew"]
        self.model_methods = self._methods(cls)
        if "forward" not in self.model_methods:
            raise Reject("no_model_new", f"{snippet(self.lines, cls)} -- ModelNew defines no forward method")
        for c in [cls] + [self.classes[b.id] for b in cls.bases if isinstance(b, ast.Name) and b.id in self.classes]:
            for b in c.bases:
                q = self.qualname(b) or ""
                if q.startswith("torch.nn.") and q != "torch.nn.Module":
                    raise Reject("torch_compute_in_forward", f"{snippet(self.lines, c)} -- deriving from {q} runs "
                                                             f"PyTorch compute; derive from torch.nn.Module")

    # ---- forward closure ----------------------------------------------------------------------------------------
    def forward_closure(self) -> list[ast.FunctionDef]:
        """Functions reachable from ModelNew.forward: helpers, properties, candidate sub-modules, autograd Functions."""
        roots = [f for k, f in self.model_methods.items() if k in ("forward", "__call__", "_call_impl", "__getattr__")]
        done, todo = [], list(roots)
        all_methods = {}
        for c in self.classes.values():
            for k, f in self._methods(c).items():
                all_methods.setdefault(k, []).append(f)
        while todo:
            f = todo.pop()
            if any(f is d for d in done):
                continue
            done.append(f)
            for n in ast.walk(f):
                new = []
                if isinstance(n, ast.Attribute) and _is_self(n.value):
                    new += all_methods.get(n.attr, [])
                    for c in self.candidate_module_attrs.get(n.attr, ()):
                        new += [m for k, m in self._methods(self.classes[c]).items() if k in ("forward", "__call__")]
                elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
                    if n.id in self.functions and n.id not in self.classes:
                        new.append(self.functions[n.id])
                    if n.id in self.classes:
                        new += [m for k, m in self._methods(self.classes[n.id]).items()
                                if k in ("forward", "__call__", "apply")]
                todo += [m for m in new if not any(m is d for d in done)]
        return done

    # ---- tensor-typed values ------------------------------------------------------------------------------------
    def _tensor_names(self, f: ast.FunctionDef) -> set[str]:
        """Names in f known to hold tensors: forward parameters, kernel results, allocations, views of tensors."""
        names = set()
        args = f.args.posonlyargs + f.args.args + f.args.kwonlyargs
        defaults = [None] * (len(f.args.posonlyargs + f.args.args) - len(f.args.defaults)) + list(f.args.defaults)
        defaults += list(f.args.kw_defaults)
        for a, d in zip(args, defaults):
            ann = ast.unparse(a.annotation) if a.annotation is not None else ""
            numeric_default = isinstance(d, ast.Constant) and d.value is not None
            if a.arg in ("self", "ctx", "cls"):
                continue
            if "Tensor" in ann or (f.name == "forward" and not ann and not numeric_default):
                names.add(a.arg)
        assigns = sorted((n for n in ast.walk(f) if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value),
                         key=lambda n: (n.lineno, n.col_offset))
        for _ in range(2):
            for n in assigns:
                if self.is_tensor(n.value, names):
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                        names |= {x.id for x in ast.walk(t) if isinstance(x, ast.Name)}
        return names

    def is_tensor(self, e, names: set[str]) -> bool:
        if isinstance(e, ast.Name):
            return e.id in names
        if isinstance(e, ast.Attribute):
            if _is_self(e.value):
                return e.attr in self.tensor_attrs
            if e.attr in ("weight", "bias") and _self_attr(e.value) in self.torch_module_attrs:
                return True
            return e.attr in ("T", "mT", "H", "mH", "data", "real", "imag") and self.is_tensor(e.value, names)
        if isinstance(e, ast.Subscript):
            return self.is_tensor(e.value, names)
        if isinstance(e, ast.BinOp):
            return self.is_tensor(e.left, names) or self.is_tensor(e.right, names)
        if isinstance(e, ast.Call):
            if self.is_kernel_call(e):
                return True
            q = self.qualname(e.func) or ""
            if q in _TENSOR_FACTORIES or q.startswith("torch.") and q[6:] in ALLOWED_TORCH_IN_FORWARD \
                    and q[6:] not in ("Size", "device", "dtype", "finfo", "iinfo", "numel", "is_tensor"):
                return "cuda." not in q
            return (isinstance(e.func, ast.Attribute) and e.func.attr in VIEW_METHODS
                    and self.is_tensor(e.func.value, names))
        return False

    def _ids_flow(self) -> tuple[set, set]:
        """(data_ptr call nodes, names assigned from expressions containing one) over the whole module."""
        calls = {id(n) for n in self.nodes if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                 and n.func.attr in ("data_ptr", "untyped_storage", "storage", "_cdata", "storage_offset")}
        names = set()
        for n in self.nodes:
            if isinstance(n, ast.Assign) and any(id(c) in calls for c in ast.walk(n.value)):
                names |= {x.id for t in n.targets for x in ast.walk(t) if isinstance(x, ast.Name)}
        return calls, names

    def identity_keys(self) -> None:
        calls, id_names = self._ids_flow()

        def ident(e) -> bool:
            return any(id(c) in calls or (isinstance(c, ast.Name) and c.id in id_names) for c in ast.walk(e))

        def fail(n, what):
            raise Reject("identity_cache", f"{snippet(self.lines, n)} -- {what}: results must not be cached by "
                                           f"tensor identity or address")
        for n in self.nodes:
            if isinstance(n, ast.Subscript) and ident(n.slice):
                fail(n, "a tensor address used as a key")
            if isinstance(n, ast.Dict) and any(k is not None and ident(k) for k in n.keys):
                fail(n, "a tensor address used as a key")
            if isinstance(n, ast.Compare):
                ops = [type(o) for o in n.ops]
                sides = [n.left] + n.comparators
                if any(o in (ast.In, ast.NotIn, ast.Is, ast.IsNot) for o in ops) and any(ident(s) for s in sides):
                    fail(n, "a tensor address looked up")
                if any(o in (ast.Eq, ast.NotEq) for o in ops) and sum(ident(s) for s in sides) >= 2:
                    fail(n, "tensor addresses compared")
            lookups = ("get", "setdefault", "pop", "add", "__contains__", "__getitem__")
            if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in lookups
                    and any(ident(a) for a in n.args)):
                fail(n, "a tensor address used as a key")
        if "ModelNew" in self.classes and not hasattr(self, "model_methods"):
            self.model_methods = self._methods(self.classes["ModelNew"])
        for f in self.forward_closure() if hasattr(self, "model_methods") else []:
            names = self._tensor_names(f)
            for n in ast.walk(f):
                if isinstance(n, ast.Subscript) and self.is_tensor(n.slice, names) and not self.is_tensor(n.value,
                                                                                                          names):
                    fail(n, "a tensor used as a dictionary key")
                if isinstance(n, ast.Compare):
                    sides = [n.left] + n.comparators
                    tensor_sides = [s for s in sides if self.is_tensor(s, names)]
                    none = any(isinstance(s, ast.Constant) and s.value is None for s in sides)
                    if tensor_sides and not none and any(isinstance(o, (ast.Is, ast.IsNot, ast.In, ast.NotIn))
                                                         for o in n.ops):
                        fail(n, "a tensor compared by identity / looked up in a container")

    def precision_methods(self) -> None:
        for n in self.nodes:
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
                low = n.func.attr in ("half", "bfloat16") and not n.args
                if n.func.attr == "to":
                    low = any(isinstance(a, ast.Constant) and str(a.value) in ("half", "float16", "bfloat16",
                                                                                "torch.float16", "torch.bfloat16")
                              for a in list(n.args) + [k.value for k in n.keywords])
                if low:
                    raise Reject("precision_downgrade", f"{snippet(self.lines, n)} -- the task is float32; casting to "
                                                        f"half/bfloat16 changes the result")

    # ---- compute in forward -------------------------------------------------------------------------------------
    def _compute_call(self, n: ast.Call, loop_modules: set[str]) -> Optional[str]:
        """What PyTorch compute a call in forward performs, or None."""
        f = n.func
        q = self.qualname(f)
        if q and q.startswith("torch."):
            return None if q[6:] in ALLOWED_TORCH_IN_FORWARD else q
        if _self_attr(f) in self.torch_module_attrs:
            return f"the torch.nn module self.{_self_attr(f)}"
        if isinstance(f, ast.Subscript):
            root = f
            while isinstance(root, ast.Subscript):
                root = root.value
            if _self_attr(root) in self.torch_module_attrs:
                return f"a torch.nn module in self.{_self_attr(root)}"
            if isinstance(root, ast.Name) and root.id in self.torch_module_names:
                return f"a torch.nn module in {root.id}"
        if isinstance(f, ast.Name) and (f.id in loop_modules or f.id in self.torch_module_names):
            return f"the torch.nn module {f.id}"
        if isinstance(f, ast.Attribute):
            recv, name = f.value, f.attr
            if _self_attr(recv) in self.torch_module_attrs and (name in _MODULE_CALL_ATTRS or name.startswith("_")):
                return f"self.{_self_attr(recv)}.{name}"
            if isinstance(recv, ast.Call) and isinstance(recv.func, ast.Name) and recv.func.id == "super" \
                    and name in _MODULE_CALL_ATTRS:
                return f"super().{name}"
            base = name[:-1] if name.endswith("_") and not name.endswith("__") else name
            base = base.strip("_") if name.startswith("__") else base
            rq = self.qualname(recv)
            if base in COMPUTE_METHODS and not (rq and not rq.startswith("torch")):
                return f".{name}()"
        return None

    @staticmethod
    def _compute_name(name: str) -> bool:
        base = name[:-1] if name.endswith("_") and not name.endswith("__") else name
        return (base.strip("_") if name.startswith("__") else base) in COMPUTE_METHODS

    def torch_compute_references(self) -> None:
        """torch compute functions used as values anywhere (`ops = [torch.relu]`, `self.act = F.gelu`, a default
        argument): where they go cannot be followed, so they are rejected outright."""
        callees = {id(c.func) for c in self.nodes if isinstance(c, ast.Call)}
        for n in self.nodes:
            if isinstance(n, (ast.Name, ast.Attribute)) and id(n) not in callees:
                q = self.qualname(n) or ""
                if q.startswith("torch.") and q[6:] not in ALLOWED_TORCH_IN_FORWARD and (
                        q.startswith("torch.nn.functional.") or self._compute_name(q.split(".")[-1])):
                    raise Reject("torch_compute_in_forward", f"{snippet(self.lines, n)} -- {q} used as a value: "
                                                             f"PyTorch compute must not reach forward")

    def forward_compute(self) -> None:
        self.torch_compute_references()
        closure = self.forward_closure()
        called = False
        for f in closure:
            names = self._tensor_names(f)
            loop_modules = {n.target.id for n in ast.walk(f) if isinstance(n, ast.For)
                            and isinstance(n.target, ast.Name) and (_self_attr(n.iter) in self.torch_module_attrs or (
                                isinstance(n.iter, ast.Name) and n.iter.id in self.torch_module_names))}
            callees = {id(c.func) for c in ast.walk(f) if isinstance(c, ast.Call)}
            for n in ast.walk(f):
                what = None
                if isinstance(n, ast.Attribute) and id(n) not in callees and not _is_self(n.value) \
                        and not self.is_ext(n.value) and self._compute_name(n.attr):
                    rq = self.qualname(n.value)
                    if not (rq and not rq.startswith("torch")):
                        what = f"a reference to {rq + '.' if rq else ''}{n.attr}"
                elif isinstance(n, ast.Call):
                    if self.is_kernel_call(n):
                        called = True
                        continue
                    what = self._compute_call(n, loop_modules)
                elif isinstance(n, ast.BinOp):
                    if isinstance(n.op, ast.MatMult):
                        what = "the @ operator"
                    elif self.is_tensor(n.left, names) or self.is_tensor(n.right, names):
                        what = f"tensor arithmetic ({type(n.op).__name__})"
                elif isinstance(n, ast.AugAssign) and (self.is_tensor(n.target, names)
                                                       or self.is_tensor(n.value, names)):
                    what = f"in-place tensor arithmetic ({type(n.op).__name__})"
                elif isinstance(n, ast.UnaryOp) and not isinstance(n.op, ast.Not) and self.is_tensor(n.operand, names):
                    what = f"tensor arithmetic ({type(n.op).__name__})"
                elif isinstance(n, ast.Compare) and all(isinstance(o, (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq,
                                                                       ast.NotEq)) for o in n.ops) \
                        and any(self.is_tensor(s, names) for s in [n.left] + n.comparators):
                    what = "a tensor comparison"
                if what:
                    raise Reject("torch_compute_in_forward",
                                 f"{snippet(self.lines, n)} -- PyTorch compute in forward ({what}); only allocation, "
                                 f"shapes/views and calls of your kernel are allowed there")
        if not called:
            raise Reject("kernel_not_called", "ModelNew.forward never calls a function of the load_inline extension: "
                                              "the kernel must compute the output")
