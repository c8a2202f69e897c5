"""Light CUDA headers (kernel_eval.build): the rewrite of a candidate's .cu (umbrella includes blanked, line numbers
kept, the ATen/ops header of every called operator in the prelude), the pre-filter that sends sources the prelude
would change to their own headers, main.cpp identical to the normal build's (so the precompiled header and the
host-object cache still apply), the host half of a light source parsing with the host compiler without ATen's
all-operator header and (with the light include directory) without ATen's global context, and the control flow of
a build: light first, the candidate's own headers after a failed light build, whose log is the one reported. Light
host headers (main.cpp without torch/extension.h): the rewrite and its pre-filter, the light main.cpp parsing with
pybind11 and torch's type casters but without torch/all.h, a failed light part rebuilt as written while the other
part stays light, and two real C++ builds (light, and one that falls back) that behave the same from Python. On a
GPU (-m gpu): a built-in solution compiled light is accepted, and a source needing a header the prelude lacks falls
back and is accepted.

    python -m pytest tests/test_light_headers.py -q            # CPU part, ~2 min (three real C++ builds)
    python -m pytest tests/test_light_headers.py -q -m gpu     # GPU part (two CUDA builds)
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from kernel_eval import build

SRC = r"""#include <torch/extension.h>
#include "ATen/ATen.h"
  #  include <torch/types.h>   // spaced
#include <ATen/cuda/CUDAContext.h>
__global__ void my_kernel(const float* x, float* y, int n) { int i = threadIdx.x; if (i < n) y[i] = x[i]; }
torch::Tensor f(torch::Tensor x) {
    auto y = torch::empty_like(x);
    auto z = at::zeros({4}, x.options());
    auto s = softmax(x, 0);
    my_kernel<<<1, 32>>>(x.data_ptr<float>(), y.data_ptr<float>(), 32);
    return y + z + s;
}
"""


def _ops(prelude: str) -> set:
    return {ln.split("ATen/ops/")[1][:-3] for ln in prelude.splitlines() if "ATen/ops/" in ln}


def test_rewrite_blanks_umbrella_includes_keeps_lines_and_adds_called_ops():
    prelude, body = build.light_cuda_sources([SRC])
    assert body.count("\n") == SRC.count("\n")                     # compiler line numbers unchanged
    assert "torch/extension.h" not in body and "ATen/ATen.h" not in body and "torch/types.h" not in body
    assert "#include <ATen/cuda/CUDAContext.h>" in body            # other includes stay as written
    assert body.splitlines()[4:] == SRC.splitlines()[4:]
    ops = _ops(prelude)
    assert {"empty_like", "zeros", "softmax"} <= ops
    assert "my_kernel" not in ops and "f" not in ops               # names without an ATen/ops header
    assert "#include <ATen/core/Tensor.h>" in prelude and "using namespace at;" in prelude
    assert "constexpr auto kFloat32 = at::kFloat;" in prelude


@pytest.mark.parametrize("snippet", [
    "py::array_t<float> a;", "#include <pybind11/numpy.h>", "PYBIND11_MODULE(x, m) {}", "#include <Python.h>",
    "torch::nn::functional::relu(x);", "torch::autograd::grad({y}, {x});", "torch::jit::load(p);",
    "torch::optim::SGD o;", "torch::data::Example<> e;", "torch::serialize::OutputArchive a;",
    "x.requires_grad_(true);", "auto t = torch::tensor({1, 2});"])
def test_sources_whose_meaning_the_prelude_would_change_use_their_own_headers(snippet):
    assert build.light_cuda_sources([SRC + snippet + "\n"]) is None
    assert build.light_call({"cuda_sources": SRC + snippet, "cpp_sources": "int f();"}) is None


HOST_SRC = r"""#include <torch/extension.h>
torch::Tensor f(torch::Tensor x, torch::Tensor y) {
    TORCH_CHECK(x.sizes() == y.sizes(), "shapes differ");
    auto w = x * 2.0 - y / 3 + (-x);
    auto out = torch::zeros_like(x);
    auto e = torch::empty({x.size(0), 4}, x.options().dtype(torch::kFloat32));
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "f", [&] { out.fill_(scalar_t(1)); });
    auto c = torch::cat({x, y}, 0).sum() + torch::stack({x, y}).sum();
    return torch::relu(w) + at::sigmoid(out) + torch::matmul(x, y.t()).sum() + e.sum() + c;
}
"""


def test_light_prelude_declares_what_host_code_uses_without_every_operator():
    """The host half of a light .cu parses with the host compiler (tensor operators, factories, the dispatch macro,
    the called operators), and AT_PER_OPERATOR_HEADERS keeps ATen/Functions.h (all operators) out of it."""
    light = build.light_cuda_sources([HOST_SRC])
    assert light[0].index("#define AT_PER_OPERATOR_HEADERS") < light[0].index("#include")
    rc, err, headers = _host_headers("\n".join(light))
    assert rc == 0, err[-3000:]
    assert any(h.endswith("ATen/ops/matmul.h") for h in headers)
    assert not any(h.endswith("ATen/Functions.h") for h in headers)


def _host_headers(text: str, include_dir=None, extra=()) -> tuple:
    """(returncode, stderr, headers) of parsing the host half of a light source with the host compiler."""
    import subprocess
    import torch.utils.cpp_extension as cpp_ext
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    text = text.replace("#include <cuda.h>", "").replace("#include <cuda_runtime.h>", "")
    inc = ([f"-I{include_dir}"] if include_dir else []) + \
        [f"-I{d}" for d in list(cpp_ext.include_paths()) + list(extra) if os.path.isdir(d)]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "host.cpp")
        with open(path, "w") as fh:
            fh.write(text)
        r = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", "-w", "-H", *inc, path], capture_output=True,
                           text=True, timeout=240)
    return r.returncode, r.stderr, [ln.lstrip(". ") for ln in r.stderr.splitlines() if ln.startswith(".")]


def test_light_include_dir_copies_operator_headers_without_the_global_context(tmp_path):
    """Every at::X wrapper header and CUDAContext.h / Exceptions.h, each the original less its ATen/Context.h and
    ATen/DeviceGuard.h includes; written once (a second call reuses it); a source naming what those headers declare
    gets them back in its prelude."""
    import torch.utils.cpp_extension as cpp_ext
    inc = build.light_include_dir(str(tmp_path))
    assert inc and build.light_include_dir(str(tmp_path)) == inc
    root = next(d for d in cpp_ext.include_paths() if os.path.isdir(os.path.join(d, "ATen", "ops")))
    copied = set(os.listdir(os.path.join(inc, "ATen", "ops")))
    assert {"empty_like.h", "softmax.h", "matmul.h"} <= copied and not any(f.endswith("_ops.h") for f in copied)
    for rel in ("ATen/ops/empty_like.h", "ATen/ops/matmul.h", "ATen/cuda/CUDAContext.h", "ATen/cuda/Exceptions.h"):
        original, copy = (open(os.path.join(d, rel)).read() for d in (root, inc))
        assert "#include <ATen/Context.h>" in original and "#include <ATen/Context.h>" not in copy, rel
        assert "ATen/DeviceGuard.h" not in copy
        kept = [ln for ln in original.splitlines() if ln not in ("#include <ATen/Context.h>",
                                                                 "#include <ATen/DeviceGuard.h>")]
        assert copy.splitlines() == kept, rel
    plain = build.light_cuda_sources([SRC])[0]
    assert "ATen/Context.h" not in plain and "ATen/DeviceGuard.h" not in plain
    ctx = build.light_cuda_sources([SRC + "bool tf32() { return at::globalContext().allowTF32CuBLAS(); }\n"])[0]
    guard = build.light_cuda_sources([SRC + "void g(torch::Tensor x) { at::OptionalDeviceGuard d(device_of(x)); }"])[0]
    assert "#include <ATen/Context.h>" in ctx and "#include <ATen/DeviceGuard.h>" in guard
    light = build.light_call({"cuda_sources": [SRC], "cpp_sources": "", "extra_cuda_cflags": ["-O3"]}, inc)
    assert light["extra_cuda_cflags"] == [f"-I{inc}", "-O3"]
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")                      # an unusable cache: no directory, and the build goes on without it
    assert build.light_include_dir(str(blocked)) is None


def test_light_include_dir_keeps_the_global_context_out_of_host_code(tmp_path):
    """With the light include directory first, the host half of a light source parses without ATen/Context.h; a
    source that uses the global context parses too (the prelude brings the header back)."""
    inc = build.light_include_dir(str(tmp_path))
    rc, err, headers = _host_headers("\n".join(build.light_cuda_sources([HOST_SRC])), inc)
    assert rc == 0, err[-3000:]
    assert any(h.startswith(inc) and h.endswith("ATen/ops/matmul.h") for h in headers)
    assert not any(h.endswith("ATen/Context.h") or h.endswith("ATen/DeviceGuard.h") for h in headers)
    uses = HOST_SRC + "bool tf32() { return at::globalContext().allowTF32CuBLAS(); }\n" + \
        "void g(torch::Tensor x) { at::OptionalDeviceGuard d(at::device_of(x)); }\n"
    rc, err, headers = _host_headers("\n".join(build.light_cuda_sources([uses])), inc)
    assert rc == 0, err[-3000:]
    assert any(h.endswith("ATen/Context.h") for h in headers)


def test_only_cuda_builds_that_keep_implicit_headers_are_built_light():
    assert build.light_call({"cuda_sources": None, "cpp_sources": "int f();"}) is None
    assert build.light_call({"cuda_sources": SRC, "cpp_sources": "", "no_implicit_headers": True}) is None
    light = build.light_call({"cuda_sources": [SRC], "cpp_sources": "torch::Tensor f(torch::Tensor x);"})
    assert light["no_implicit_headers"] is True and len(light["cuda_sources"]) == 2


def test_main_cpp_of_the_light_build_is_byte_identical(monkeypatch):
    """load_inline writes main.cpp, then compiles; the compile step is replaced (this checks our arguments, not
    torch), and the files it would compile are compared."""
    import torch.utils.cpp_extension as cpp_ext
    monkeypatch.setattr(cpp_ext, "_jit_compile", lambda *a, **k: None)
    dirs = [tempfile.mkdtemp(prefix="light-main-") for _ in range(2)]
    try:
        call = dict(name="lightprobe", cpp_sources="torch::Tensor f(torch::Tensor x);", cuda_sources=SRC,
                    functions=["f"], extra_cuda_cflags=["-O3"])
        cpp_ext.load_inline(**call, build_directory=dirs[0])
        cpp_ext.load_inline(**build.light_call(dict(call, build_directory=dirs[1])))
        main = [open(os.path.join(d, "main.cpp")).read() for d in dirs]
        assert main[0] == main[1] and main[0].startswith("#include <torch/extension.h>")
        cu = [open(os.path.join(d, "cuda.cu")).read() for d in dirs]
        assert cu[0].startswith("#include <torch/types.h>") and "light prelude" in cu[1]
        included = [ln for ln in cu[1].splitlines() if ln.lstrip().startswith("#")]
        assert not [ln for ln in included if "torch/extension.h" in ln or "torch/types.h" in ln], included
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


class _Recorder:
    """Stands in for torch's load_inline inside patch_for_compile (our control flow is under test): records each
    call, fails the light one when told to, fails the full one when told to, else leaves a .so behind."""

    def __init__(self, light_fails: bool, full_fails: bool = False):
        self.calls, self.cuda_flags, self.light_fails, self.full_fails = [], [], light_fails, full_fails

    def __call__(self, name, cpp_sources, cuda_sources=None, functions=None, extra_cflags=None,
                 extra_cuda_cflags=None, extra_ldflags=None, extra_include_paths=None, build_directory=None,
                 verbose=False, with_cuda=None, is_python_module=True, with_pytorch_error_handling=True,
                 keep_intermediates=True, use_pch=False, no_implicit_headers=False):
        light = bool(no_implicit_headers)
        self.calls.append("light" if light else "full")
        self.cuda_flags.append(list(extra_cuda_cflags or []))
        if light and self.light_fails:
            raise RuntimeError("Error building extension 'x': cuda.cu(9): error: namespace \"at\" has no member")
        if not light and self.full_fails:
            raise RuntimeError("Error building extension 'x': cuda.cu(9): error: the full build's own error")
        open(os.path.join(build_directory, name + ".so"), "wb").write(b"\0")


@pytest.mark.parametrize("light_fails,full_fails,enabled,calls", [
    (False, False, True, ["light"]),
    (True, False, True, ["light", "full"]),
    (True, True, True, ["light", "full"]),
    (False, False, False, ["full"]),
])
def test_light_first_then_own_headers(monkeypatch, light_fails, full_fails, enabled, calls):
    import torch.utils.cpp_extension as cpp_ext
    rec = _Recorder(light_fails, full_fails)
    monkeypatch.setattr(cpp_ext, "load_inline", rec)         # restored after the test, also after our patch
    cache, out = tempfile.mkdtemp(prefix="light-cache-"), tempfile.mkdtemp(prefix="light-out-")
    reports = []
    try:
        build.patch_for_compile(cache, out, False, reports.append, light_headers=enabled)
        args = dict(name="x", cpp_sources="torch::Tensor f(torch::Tensor x);", cuda_sources=SRC, functions=["f"])
        if full_fails:
            with pytest.raises(RuntimeError, match="full build's own error"):
                cpp_ext.load_inline(**args)
        else:
            cpp_ext.load_inline(**args)
        if enabled:             # the light build's .cu gets the light include directory (written into the cache)
            inc = build.light_include_dir(cache)
            assert rec.cuda_flags[0] == [f"-I{inc}"] and os.path.isfile(os.path.join(inc, "ATen", "ops", "cat.h"))
        assert all(not f for f in rec.cuda_flags[1 if enabled else 0:])      # the build as written: its own flags
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    assert rec.calls == calls
    (r,) = reports
    if full_fails:
        assert r["type"] == "compile_error" and r["light_fallback"] is True
        assert "full build's own error" in r["log"] and "light headers failed" in r["log"]
    else:
        assert r["type"] == "built" and r["light"] is (calls == ["light"])
        assert r["light_fallback"] is (calls == ["light", "full"])
        assert ("light headers failed" in r["log"]) is r["light_fallback"]


# ------------------------------------------------------------------------------------------------ light host (main.cpp)
def test_light_host_prelude_replaces_torch_extension_h():
    prelude, body = build.light_host_sources([HOST_SRC])
    assert body.count("\n") == HOST_SRC.count("\n") and "torch/extension.h" not in body
    assert body.splitlines()[1:] == HOST_SRC.splitlines()[1:]
    assert {"zeros_like", "empty", "cat", "stack", "relu", "sigmoid", "matmul"} <= _ops(prelude)
    for h in ("torch/csrc/utils/pybind.h", "torch/csrc/Exceptions.h", "ATen/core/Tensor.h", "ATen/Parallel.h"):
        assert f"#include <{h}>" in prelude
    included = [ln for ln in prelude.splitlines() if ln.startswith("#include")]
    assert not [ln for ln in included if "torch/extension.h" in ln or "torch/all.h" in ln], included


@pytest.mark.parametrize("snippet", [
    "torch::nn::functional::relu(x);", "torch::autograd::grad({y}, {x});", "torch::jit::load(p);",
    "torch::optim::SGD o;", "torch::data::Example<> e;", "torch::serialize::OutputArchive a;",
    "x.requires_grad_(true);", "auto t = torch::tensor({1, 2});"])
def test_host_sources_whose_meaning_the_prelude_would_change_keep_torch_extension_h(snippet):
    assert build.light_host_sources([HOST_SRC + snippet + "\n"]) is None
    assert build.light_call({"cpp_sources": HOST_SRC + snippet}, host=True) is None


def test_host_prelude_keeps_pybind11():
    """main.cpp is the Python binding: pybind11 code is what it is for (the .cu prelude has no pybind11)."""
    src = HOST_SRC + "PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def(\"f\", &f); py::object o; }\n"
    assert build.light_host_sources([src]) is not None


def test_light_call_parts():
    cpp = "torch::Tensor f(torch::Tensor x);"
    both = build.light_call({"cuda_sources": [SRC], "cpp_sources": cpp, "extra_cflags": ["-O3"]}, "/inc", host=True)
    assert both["cpp_sources"][0].startswith("// light host prelude") and both["extra_cflags"] == ["-I/inc", "-O3"]
    assert both["cuda_sources"][0].startswith("// light prelude")
    host_only = build.light_call({"cuda_sources": [SRC + "py::object o;"], "cpp_sources": cpp}, "/inc", host=True)
    assert host_only["cpp_sources"][0].startswith("// light host prelude")
    implicit = ["#include <torch/types.h>", "#include <cuda.h>", "#include <cuda_runtime.h>"]
    assert host_only["cuda_sources"][:3] == implicit
    assert host_only.get("extra_cuda_cflags") == []           # the .cu as written: its own flags, no light include dir
    cu_only = build.light_call({"cuda_sources": [SRC], "cpp_sources": cpp}, "/inc", host=False)
    assert cu_only["cpp_sources"] == ["#include <torch/extension.h>", cpp]      # main.cpp as load_inline writes it
    assert not cu_only.get("extra_cflags")
    cpp_build = build.light_call({"cpp_sources": [HOST_SRC]}, None, host=True)
    assert cpp_build["no_implicit_headers"] is True and not cpp_build.get("cuda_sources")
    assert cpp_build["cpp_sources"][0].startswith("// light host prelude")


def test_light_main_cpp_parses_without_torch_all_h(tmp_path):
    """The light main.cpp of a C++ build (its whole source, then load_inline's binding) parses with the host
    compiler, with pybind11 and torch's type casters, without torch/all.h, ATen/Functions.h or ATen/Context.h."""
    import sysconfig
    inc = build.light_include_dir(str(tmp_path))
    text = "\n".join(build.light_host_sources([HOST_SRC])) + \
        '\nPYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {\nm.def("f", torch::wrap_pybind_function(f), "f");\n}\n'
    rc, err, headers = _host_headers("#define TORCH_EXTENSION_NAME light_probe\n" + text, inc,
                                     [sysconfig.get_paths()["include"]])
    assert rc == 0, err[-3000:]
    assert any(h.endswith("torch/csrc/utils/pybind.h") for h in headers)
    assert not any(h.endswith(("torch/all.h", "ATen/Functions.h", "ATen/Context.h", "torch/nn/module.h"))
                   for h in headers)


class _PartsRecorder:
    """Stands in for torch's load_inline: records which parts of each call are light and fails a light part when
    told to, with the message ninja would give (a g++ error in main.cpp, an nvcc error in cuda.cu)."""

    def __init__(self, host_fails: bool, cuda_fails: bool):
        self.calls, self.host_fails, self.cuda_fails = [], host_fails, cuda_fails

    def __call__(self, name, cpp_sources, cuda_sources=None, functions=None, extra_cflags=None,
                 extra_cuda_cflags=None, extra_ldflags=None, extra_include_paths=None, build_directory=None,
                 verbose=False, with_cuda=None, is_python_module=True, with_pytorch_error_handling=True,
                 keep_intermediates=True, use_pch=False, no_implicit_headers=False):
        host = bool(no_implicit_headers) and cpp_sources[0].startswith("// light host prelude")
        cuda = bool(no_implicit_headers) and bool(cuda_sources) and cuda_sources[0].startswith("// light prelude")
        self.calls.append(("cuda " if cuda else "") + ("host" if host else "") or "full")
        if host and self.host_fails:
            raise RuntimeError("Error building extension 'x': [1/3] c++ -c main.cpp -o main.o\nFAILED: main.o\n"
                               "main.cpp:3:5: error: 'indexing' is not a member of 'torch'")
        if cuda and self.cuda_fails:
            raise RuntimeError("Error building extension 'x': [2/3] nvcc cuda.cu\nFAILED: cuda.cuda.o\n"
                               "cuda.cu(9): error: namespace \"at\" has no member")
        open(os.path.join(build_directory, name + ".so"), "wb").write(b"\0")


@pytest.mark.parametrize("cuda_build,host_fails,cuda_fails,calls", [
    (True, False, False, ["cuda host"]),
    (True, True, False, ["cuda host", "cuda "]),            # main.cpp as written, the .cu stays light
    (True, False, True, ["cuda host", "host"]),             # the .cu as written, main.cpp stays light
    (True, True, True, ["cuda host", "cuda ", "full"]),
    (False, False, False, ["host"]),
    (False, True, False, ["host", "full"]),
])
def test_a_failed_light_part_is_built_as_written_and_the_other_stays_light(monkeypatch, cuda_build, host_fails,
                                                                            cuda_fails, calls):
    import torch.utils.cpp_extension as cpp_ext
    rec = _PartsRecorder(host_fails, cuda_fails)
    monkeypatch.setattr(cpp_ext, "load_inline", rec)
    pch_asked = []              # the precompiled header (of torch/extension.h) is for a main.cpp built as written
    monkeypatch.setattr(build, "_pch_include", lambda *a: pch_asked.append(rec.calls[-1] if rec.calls else None))
    cache, out = tempfile.mkdtemp(prefix="light-cache-"), tempfile.mkdtemp(prefix="light-out-")
    reports = []
    try:
        build.patch_for_compile(cache, out, True, reports.append, light_headers=True, light_host=True)
        args = dict(name="x", cpp_sources="torch::Tensor f(torch::Tensor x);", functions=["f"])
        cpp_ext.load_inline(**args, **({"cuda_sources": SRC} if cuda_build else {}))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    assert rec.calls == calls
    assert len(pch_asked) == sum(1 for c in calls if "host" not in c)
    (r,) = reports
    assert r["type"] == "built" and r["light_fallback"] is (len(calls) > 1)
    assert r["light_parts"] == [p for p in ("cuda", "host") if p in calls[-1]]
    assert r["light"] is ("cuda" in calls[-1])
    assert ("light headers failed" in r["log"]) is r["light_fallback"]


LIGHT_HOST_CPP = r"""
#include <torch/extension.h>
#include <vector>
torch::Tensor axpb(torch::Tensor x, double a, int64_t b) {
    TORCH_CHECK_VALUE(x.scalar_type() == torch::kFloat32, "axpb: float32 only, got ", x.scalar_type());
    auto xc = x.contiguous();
    auto out = torch::empty_like(xc);
    const float* in = xc.data_ptr<float>();
    float* o = out.data_ptr<float>();
    at::parallel_for(0, xc.numel(), 1024, [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) o[i] = static_cast<float>(a * in[i] + b);
    });
    return out;
}
std::vector<torch::Tensor> pair(torch::Tensor x, c10::optional<torch::Tensor> y) {
    return {x.sum(), y.has_value() ? torch::relu(*y) : x * 2};
}
"""
NEEDS_FULL_HOST = "\ntorch::Tensor tail(torch::Tensor x) { return x.index({torch::indexing::Slice(1)}); }\n"


def test_light_host_build_runs_like_the_full_build(monkeypatch):
    """Real C++ builds. One compiles light and one (it uses torch::indexing, which the light prelude lacks) falls
    back to torch/extension.h; both modules convert arguments and results the same way (double, int64_t,
    optional, vector of tensors, None) and translate a failed check into the same Python exception."""
    import torch
    import torch.utils.cpp_extension as cpp_ext
    real = cpp_ext.load_inline
    monkeypatch.setattr(cpp_ext, "load_inline", real)                    # restored after our patches
    cache, out = tempfile.mkdtemp(prefix="light-host-cache-"), tempfile.mkdtemp(prefix="light-host-out-")
    reports = []
    try:
        build.patch_for_compile(cache, out, False, reports.append, light_host=True)
        for name, src, fns in (("light_host_ok", LIGHT_HOST_CPP, ["axpb", "pair"]),
                               ("light_host_fallback", LIGHT_HOST_CPP + NEEDS_FULL_HOST, ["axpb", "pair", "tail"])):
            cpp_ext.load_inline(name=name, cpp_sources=src, functions=fns)
        light, full = reports
        assert light["type"] == "built" and light["light_parts"] == ["host"] and not light["light_fallback"]
        assert full["type"] == "built" and full["light_parts"] == [] and full["light_fallback"], full["log"]
        assert "light headers failed (host)" in full["log"]
        cpp_ext.load_inline = real
        build.patch_for_run(out)
        mods = [cpp_ext.load_inline(name=name, cpp_sources=src, functions=fns)
                for name, src, fns in (("light_host_ok", LIGHT_HOST_CPP, ["axpb", "pair"]),
                                       ("light_host_fallback", LIGHT_HOST_CPP + NEEDS_FULL_HOST,
                                        ["axpb", "pair", "tail"]))]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    x = torch.randn(3000)
    for m in mods:
        assert torch.equal(m.axpb(x, 0.5, 3), (0.5 * x.double() + 3).float())
        s, r = m.pair(x, None)
        assert torch.allclose(s, x.sum()) and torch.equal(r, x * 2)
        assert torch.equal(m.pair(x, -x)[1], torch.relu(-x))
        with pytest.raises(ValueError, match="float32 only"):
            m.axpb(x.double(), 1.0, 0)
        with pytest.raises(TypeError):
            m.axpb(x, "a", 0)
    assert torch.equal(mods[1].tail(x), x[1:])
    shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------- GPU
FALLBACK = r'''
import torch
from torch.utils.cpp_extension import load_inline
CUDA_SRC = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
__global__ void relu_k(const float* x, float* y, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = fmaxf(x[i], 0.f);
}
torch::Tensor relu_idx(torch::Tensor x) {
    using namespace torch::indexing;                    // TensorIndexing.h: only the full headers declare it
    auto xc = x.index({Slice()}).contiguous();
    auto y = torch::empty_like(xc);
    int64_t n = xc.numel();
    relu_k<<<(unsigned)((n + 255) / 256), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
        xc.data_ptr<float>(), y.data_ptr<float>(), n);
    return y;
}
"""
ext = load_inline(name="relu_idx_ext", cpp_sources="torch::Tensor relu_idx(torch::Tensor x);",
                  cuda_sources=CUDA_SRC, functions=["relu_idx"], extra_cuda_cflags=["-O3"])
class ModelNew(torch.nn.Module):
    def __init__(self):
        super().__init__()
    def forward(self, x):
        return ext.relu_idx(x)
'''


@pytest.mark.gpu
def test_light_build_accepted_and_fallback_accepted_on_gpu():
    import concurrent.futures as cf
    import torch
    from kernel_eval.evaluate import evaluate_candidate
    from kernel_eval.tasks import builtin_solution, get_task
    from runtime.config import EvaluatorConfig
    cache = tempfile.mkdtemp(prefix="sandbox-rl-light-gpu-")
    try:
        cfg = EvaluatorConfig(backend="cuda", cache_dir=cache, run_timeout_s=120.0, compile_timeout_s=600.0,
                              correctness_trials=3, timing_warmup=3, timing_trials=10, compile_jobs=2)
        task = get_task("builtin/relu")
        sources = [builtin_solution("builtin/relu", "cuda"), FALLBACK]
        with cf.ThreadPoolExecutor(2) as ex:
            light, fallback = ex.map(lambda c: build.compile_candidate(c, "cuda", cfg, torch.__version__), sources)
        assert light.ok and light.light_builds == 1 and light.light_fallbacks == 0, light.log[-2000:]
        assert fallback.ok and fallback.light_builds == 0 and fallback.light_fallbacks == 1, fallback.log[-2000:]
        assert "light headers failed" in fallback.log
        for code in sources:                                       # cache hits now: run, check, time
            r = evaluate_candidate(task, code, cfg)
            assert r.correct and r.stage == "done", r.to_dict()
    finally:
        shutil.rmtree(cache, ignore_errors=True)
