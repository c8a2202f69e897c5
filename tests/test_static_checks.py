"""Static checks: honest candidates in many shapes pass (no false rejects); each rule rejects with its reason and a
detail naming the line; the checker never raises. Pure AST/regex: milliseconds per candidate.

    python -m pytest tests/test_static_checks.py -q
"""
import random

import pytest

from kernel_eval.static_checks import REASONS, check_candidate
from kernel_eval.tasks import builtin_solution, builtin_task_names, get_task

CPP = r'''
torch::Tensor relu_fwd(torch::Tensor x) {
    auto xc = x.contiguous();
    auto out = torch::empty_like(xc);
    const float* p = xc.data_ptr<float>();
    float* q = out.data_ptr<float>();
    #pragma omp parallel for
    for (int64_t i = 0; i < xc.numel(); ++i) q[i] = p[i] > 0.f ? p[i] : 0.f;
    return out;
}
'''
HEAD = f'''import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

SRC = r"""{CPP}"""
ext = load_inline(name="t_relu", cpp_sources=SRC, functions=["relu_fwd"],
                  extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"])
'''


def model(forward: str, init: str = "", extra: str = "") -> str:
    init_body = "        super().__init__()\n" + init
    return HEAD + extra + f"\n\nclass ModelNew(nn.Module):\n    def __init__(self):\n{init_body}\n" \
                          f"    def forward(self, x):\n{forward}\n"


HONEST = {
    "direct": model("        return ext.relu_fwd(x)"),
    "helper_method": model("        y = x.view(-1)\n        return self._run(y).view(x.shape)",
                           extra="") + "\n    def _run(self, t):\n        return ext.relu_fwd(t.contiguous())\n",
    "module_function": HEAD + '''

def run_kernel(t: torch.Tensor) -> torch.Tensor:
    n = t.shape[0] * t.shape[1]
    return ext.relu_fwd(t.reshape(n)).reshape(t.shape)


class ModelNew(nn.Module):
    def forward(self, x):
        return run_kernel(x)
''',
    "parameters_and_linear_init": HEAD + '''

class ModelNew(nn.Module):
    def __init__(self, in_features=8, out_features=8):
        super().__init__()
        lin = nn.Linear(in_features, out_features)
        self.weight = nn.Parameter(lin.weight.detach().clone())
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.register_buffer("scale", torch.ones(1))
        self.blocks = nn.ModuleList()

    def forward(self, x):
        out = torch.empty(x.size(0), self.weight.size(0), device=x.device, dtype=x.dtype)
        ext.relu_fwd(out)
        return out
''',
    "stored_extension_and_lazy_getter": '''import torch
import torch.nn as nn
from torch.utils import cpp_extension

_EXT = None
BLOCK = 256
SRC = f"""
constexpr int BLOCK = {BLOCK};
torch::Tensor relu_fwd(torch::Tensor x) {{
    auto out = torch::empty_like(x);
    for (int64_t i = 0; i < x.numel(); ++i) out.data_ptr<float>()[i] = x.data_ptr<float>()[i] > 0 ? 1.f : 0.f;
    return out;
}}
"""


def get_ext():
    global _EXT
    if _EXT is None:
        _EXT = cpp_extension.load_inline("lazy_relu", [SRC], functions=["relu_fwd"])
    return _EXT


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.ext = get_ext()
        self.fn = self.ext.relu_fwd

    def forward(self, x, mask=None):
        if mask is None:
            return self.fn(x)
        return get_ext().relu_fwd(x)
''',
    "autograd_function_and_submodule": HEAD + '''

class ReluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return ext.relu_fwd(x)


class Block(nn.Module):
    def forward(self, x):
        return ReluFn.apply(x)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block() for _ in range(2)])

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return x
''',
}

CUDA_HONEST = '''import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

cuda_src = r"""
#include <c10/cuda/CUDAStream.h>
__global__ void relu_k(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) y[i] = fmaxf(x[i], 0.f);   // torch::relu would be ATen: not used
}
torch::Tensor relu_fwd(torch::Tensor x) {
    TORCH_CHECK(x.is_cuda(), "x must be CUDA");
    auto xc = x.contiguous();
    auto y = torch::empty_like(xc);
    const int64_t n = xc.numel();
    auto stream = at::cuda::getCurrentCUDAStream();
    relu_k<<<(n + 255) / 256, 256, 0, stream>>>(xc.data_ptr<float>(), y.data_ptr<float>(), n);
    return y;
}
"""
cpp_src = "torch::Tensor relu_fwd(torch::Tensor x);"
module = load_inline(name="relu_cuda", cpp_sources=[cpp_src], cuda_sources=[cuda_src], functions=["relu_fwd"],
                     extra_cuda_cflags=["-O3", "--use_fast_math"])


class ModelNew(nn.Module):
    """Docstrings may mention torch::matmul( without being scanned."""

    def __init__(self) -> None:
        super().__init__()
        self.k = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.k.relu_fwd(x)
'''


@pytest.mark.parametrize("name", sorted(HONEST))
def test_honest_variants_pass(name):
    v = check_candidate(HONEST[name], "cpu")
    assert v.ok, (name, v)


def test_honest_cuda_passes_and_is_wrong_backend_on_cpu():
    assert check_candidate(CUDA_HONEST, "cuda").ok
    assert check_candidate(CUDA_HONEST, "cpu").reason == "wrong_backend"
    assert check_candidate(HONEST["direct"], "cuda").reason == "wrong_backend"


@pytest.mark.parametrize("task", builtin_task_names())
def test_builtin_solutions_pass(task):
    source = get_task(task).source
    v = check_candidate(builtin_solution(task, "cpu"), "cpu", source)
    assert v.ok, (task, v)
    try:
        cuda = builtin_solution(task, "cuda")
    except Exception:                       # not every built-in task ships a CUDA solution
        return
    assert check_candidate(cuda, "cuda", source).ok


BAD = [
    ("format", "def broken(:\n"),
    ("format", "   \n"),
    ("no_model_new", HEAD + "\nclass Other(nn.Module):\n    def forward(self, x):\n        return ext.relu_fwd(x)\n"),
    ("forbidden_import", model("        return ext.relu_fwd(x)", extra="import numpy as np\n")),
    ("torch_compute_in_forward", model("        return ext.relu_fwd(x) @ x.t()")),
    ("torch_compute_in_forward", model("        out = ext.relu_fwd(x)\n        out += self.b\n        return out",
                                       init="        self.b = nn.Parameter(torch.zeros(4))\n")),
    ("torch_compute_in_forward", model("        y = ext.relu_fwd(x)\n        for layer in self.layers:\n"
                                       "            y = layer(y)\n        return y",
                                       init="        self.layers = nn.ModuleList([nn.ReLU()])\n")),
    ("torch_compute_in_forward", model("        return torch.Tensor.relu(ext.relu_fwd(x))")),
    ("torch_compute_in_forward", model("        return ext.relu_fwd(x) * 2.0")),
    ("monkey_patching", model("        return ext.relu_fwd(x)") + "\nModelNew.forward = lambda self, x: x\n"),
    ("monkey_patching", HEAD + "\nclass ModelNew(nn.Module):\n    def forward(self, x):\n"
                              "        return ext.relu_fwd(x)\n    forward = torch.relu\n"),
    ("torch_compute_in_forward", HEAD + "\nclass ModelNew(nn.Module):\n    def forward(self, x, f=torch.relu):\n"
                                       "        return f(ext.relu_fwd(x))\n"),
    ("torch_compute_in_forward", model("        return OPS[0](ext.relu_fwd(x))", extra="OPS = [torch.sigmoid]\n")),
    ("torch_compute_in_forward", model("        return LIN(ext.relu_fwd(x))", extra="LIN = nn.Linear(4, 4)\n")),
    ("torch_compute_in_forward", model("        g = x.sigmoid\n        return ext.relu_fwd(g())")),
    ("torch_compute_in_forward", model("        return self.act(ext.relu_fwd(x))",
                                       init="        self.act = torch.nn.functional.gelu\n")),
    ("monkey_patching", model("        return ext.relu_fwd(x)", extra="t = torch\nt.allclose = print\n")),
    ("monkey_patching", model("        return ext.relu_fwd(x)", extra="setattr(torch, 'equal', print)\n")),
    ("tensor_subclass", model("        y = ext.relu_fwd(x)\n        y.__class__ = nn.Parameter\n        return y")),
    ("introspection", model("        return ext.relu_fwd(x)", extra="s = torch._C\n")),
    ("introspection", model("        return ext.relu_fwd(x)", extra="f = globals()\n")),
    ("identity_cache", model("        if x in self.seen:\n            return self.seen[x]\n"
                             "        return ext.relu_fwd(x)", init="        self.seen = {}\n")),
    ("identity_cache", model("        return ext.relu_fwd(x)", extra="import functools\n\n\n@functools.lru_cache\n"
                                                                    "def f(t):\n    return ext.relu_fwd(t)\n")),
    ("exec_eval", model("        return eval('ext.relu_fwd')(x)")),
    ("threads_or_processes", model("        return ext.relu_fwd(x)", extra="import subprocess\n")),
    ("no_kernel", HEAD.replace("for (int64_t i", "if (true) {} //for (int64_t i") +
     "\nclass ModelNew(nn.Module):\n    def forward(self, x):\n        return ext.relu_fwd(x)\n"),
    ("no_kernel", CUDA_HONEST.replace("__global__", "static")),
    ("aten_compute_in_kernel", HEAD.replace("return out;", "return torch::nn::functional::relu(out);") +
     "\nclass ModelNew(nn.Module):\n    def forward(self, x):\n        return ext.relu_fwd(x)\n"),
    ("aten_compute_in_kernel", HEAD.replace("return out;", "using namespace at;\n    return matmul(out, out);") +
     "\nclass ModelNew(nn.Module):\n    def forward(self, x):\n        return ext.relu_fwd(x)\n"),
    ("precision_downgrade", model("        return ext.relu_fwd(x.to(torch.bfloat16))")),
    ("kernel_not_called", model("        unused = ext\n        return torch.empty_like(x)")),
]


@pytest.mark.parametrize("reason, code", BAD, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAD)])
def test_rule_rejects_with_reason(reason, code):
    v = check_candidate(code, "cuda" if "cuda_sources=" in code else "cpu")
    assert not v.ok and v.reason == reason, v
    assert v.reason in REASONS and v.detail


def test_detail_names_the_offending_line():
    code = model("        y = ext.relu_fwd(x)\n        return torch.sigmoid(y)")
    v = check_candidate(code, "cpu")
    line = code.split("\n").index("        return torch.sigmoid(y)") + 1
    assert v.reason == "torch_compute_in_forward" and v.detail.startswith(f"line {line}: `return torch.sigmoid(y)`")
    cpp = HEAD.replace("return out;", "return at::softmax(out, 0);") + \
        "\nclass ModelNew(nn.Module):\n    def forward(self, x):\n        return ext.relu_fwd(x)\n"
    v = check_candidate(cpp, "cpu")
    line = cpp.split("\n").index("    return at::softmax(out, 0);") + 1
    assert v.reason == "aten_compute_in_kernel" and v.detail.startswith(f"line {line}:"), v.detail


def test_comments_and_half_precision_tasks():
    commented = HEAD.replace("return out;", "// return torch::relu(out);  /* at::matmul( */\n    return out;")
    assert check_candidate(commented + "\nclass ModelNew(nn.Module):\n    def forward(self, x):\n"
                                       "        return ext.relu_fwd(x)\n", "cpu").ok
    half_task = "import torch\nclass Model(torch.nn.Module):\n    def forward(self, x):\n        return x\n" \
                "def get_inputs():\n    return [torch.randn(4, dtype=torch.float16)]\n"
    code = model("        return ext.relu_fwd(x.half())")
    assert check_candidate(code, "cpu", half_task).ok
    assert check_candidate(code, "cpu").reason == "precision_downgrade"


def test_task_classes_from_source():
    task = "import torch\nclass Model(torch.nn.Module):\n    pass\nclass Helper(torch.nn.Module):\n    pass\n"
    code = HEAD + "\nclass ModelNew(Helper):\n    def forward(self, x):\n        return ext.relu_fwd(x)\n"
    assert check_candidate(code, "cpu", task).reason == "subclasses_reference"
    assert check_candidate(code.replace("(Helper)", "(nn.Module)"), "cpu", task).ok


def test_never_raises_on_garbage():
    rng = random.Random(0)
    alphabet = "()[]{}:;.,='\"\\\n\t #abcdefxyz0123456789_+-*/@<>ModelNewtorchload_inline"
    pieces = [HONEST["direct"], CUDA_HONEST, "class ModelNew(", "def forward(self, x):", "```", "\x00", "(" * 300]
    for _ in range(300):
        code = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
        if rng.random() < 0.5:
            p = rng.choice(pieces)
            cut = rng.randint(0, len(p))
            code = p[:cut] + code + p[cut:]
        v = check_candidate(code, rng.choice(["cpu", "cuda"]))
        assert v.ok or v.reason in REASONS
    deep = "x = " + "(" * 5000 + ")" * 5000 + "\n"
    assert check_candidate(deep, "cpu").reason in REASONS
