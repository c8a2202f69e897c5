"""Regex checks over the C++/CUDA source strings of a candidate (the half of the static checks that is not Python).

    findings = scan_sources([(source_text, python_line_of_string), ...], float32_task=True)
    # -> {reason: "line 31: `return torch::matmul(a, b);` -- ATen compute inside the kernel; ..."}

Comments are stripped first (line numbers kept), so commented-out code is not a finding. Each reason maps to the
FIRST finding in source order; kernel_eval.static_checks decides which reason wins.

Limits (be honest): these are token patterns, not a C++ parser. Macros (`#define`, token pasting) or code built at
run time can hide calls from them; the runtime defenses (fresh process, poisoned memory, fingerprints after return,
correctness on several input distributions) are the backstop. ATen calls through unqualified names are caught only
after `using namespace torch|at` / `using torch::name` / a namespace alias, and only for names that are not also C
math functions (`tanh`, `exp`, `max`, ... are allowed bare).
"""
from __future__ import annotations

import re
from typing import Optional

# Allocation, metadata, guards and helpers: everything else called as torch::/at::/c10:: is ATen compute.
ALLOWED_ATEN_CALLS = frozenset("""
empty empty_like empty_strided zeros zeros_like ones ones_like full full_like from_blob TensorOptions Device device
dtype ScalarType Scalar IntArrayRef ArrayRef getCurrentCUDAStream getDefaultCUDAStream CUDAGuard OptionalCUDAGuard
DeviceGuard OptionalDeviceGuard parallel_for get_num_threads get_thread_num in_parallel_region elementSize toString
typeMetaToScalarType MemoryFormat getCurrentDeviceProperties getDeviceProperties current_device device_count Tensor
TensorArg checkDim checkSize checkContiguous checkAllSameGPU checkSameType checkScalarType irange optional nullopt
maybe_wrap_dim DimVector SmallVector get_default_dtype isFloatingType isComplexType acc_type ceil_div divup
""".split())

# Tensor methods that compute (shared with the Python side; a trailing "_" (in-place) is stripped before lookup).
COMPUTE_METHODS = frozenset("""
abs absolute acos acosh add addbmm addcdiv addcmul addmm addmv addr allclose amax amin aminmax any all argmax argmin
argsort asin asinh atan atan2 atanh baddbmm bernoulli bincount bmm cdist ceil cholesky clamp clamp_max clamp_min clip
clone conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d copy cos cosh count_nonzero cov cross
cummax cummin cumprod cumsum det diag diag_embed diff digamma dist div divide dot einsum elu eq equal erf erfc erfinv
exp exp2 expm1 fix flip fliplr flipud floor floor_divide fmax fmin fmod frac gather gcd ge gelu geometric glu greater
greater_equal gt hardshrink hardsigmoid hardswish hardtanh heaviside histc hypot index_add index_copy index_fill
index_put index_reduce index_select inner inverse isclose isfinite isinf isnan kron kthvalue lcm le leaky_relu lerp
less less_equal lgamma linear log log10 log1p log2 log_normal log_softmax logaddexp logaddexp2 logcumsumexp logdet
logical_and logical_not logical_or logical_xor logit logsumexp lt lu masked_fill masked_scatter masked_select matmul
matrix_exp matrix_power max maximum mean median min minimum mish mm mode msort mul multinomial multiply mv mvlgamma
nan_to_num nanmean nanmedian nanquantile nansum ne neg negative nextafter norm normal not_equal outer pinverse polygamma
pow prelu prod put qr quantile rad2deg random reciprocal relu relu6 remainder renorm repeat repeat_interleave roll rot90
round rsqrt scatter scatter_add scatter_reduce selu sgn sigmoid sign signbit silu sin sinc sinh slogdet softmax
softplus softshrink sort sqrt square std sub subtract sum svd take take_along_dim tan tanh tensordot threshold topk
trace tril triu true_divide trunc uniform unique unique_consecutive var vdot where xlogy exponential cauchy
bitwise_and bitwise_or bitwise_xor bitwise_not bitwise_left_shift bitwise_right_shift
""".split())

# Bare names flagged after `using namespace torch|at` (names that are not also C/CUDA math functions).
_BARE_ATEN = ("matmul mm bmm addmm baddbmm conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d "
              "convolution relu softmax log_softmax linear sigmoid gelu silu layer_norm batch_norm group_norm "
              "instance_norm einsum max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d cumsum "
              "logsumexp dropout embedding scaled_dot_product_attention mish softplus elu selu hardtanh leaky_relu "
              "clamp argmax argmin topk sort").split()

_RULES: list[tuple[str, re.Pattern, str]] = [
    ("threads_or_processes", re.compile(
        r"std\s*::\s*(?:thread|jthread|async)\b|\bpthread_create\b|(?<![\w.:>])(?:v?fork|system|popen|posix_spawnp?|"
        r"execvp?e?|execlp?e?|signal|sigaction|raise|kill)\s*\("), "threads, processes and signals are not allowed"),
    ("exec_eval", re.compile(
        r"\bPyRun_\w*|\bPyImport_\w*|\bPy_CompileString\w*|\bPyEval_EvalCode\w*|\b(?:py|pybind11)\s*::\s*"
        r"(?:module_?\s*::\s*import|exec|eval|eval_file)\b"), "running or importing Python from the kernel is not "
                                                             "allowed"),
    ("monkey_patching", re.compile(r"\bPyObject_SetAttr\w*|\bPyDict_SetItem\w*|\.\s*attr\s*\([^()]*\)\s*=(?!=)"),
     "changing Python objects from the kernel is not allowed"),
    ("introspection", re.compile(
        r"\b(?:py|pybind11)\s*::\s*(?:globals|locals)\b|\bPyEval_Get\w*|\bPyThreadState_\w*|\bPyFrame_\w*|"
        r"\bPyGC_\w*|\bdlsym\b|\bdlopen\b|/proc/"), "looking into the interpreter or process is not allowed"),
    ("imports_reference", re.compile(
        r"\bfopen\b|\bstd\s*::\s*[io]?fstream\b|(?<![\w.:>])(?:open|openat|opendir|readlink)\s*\("),
     "reading files is not allowed"),
    ("extra_stream", re.compile(
        r"\bcudaStreamCreate\w*|\bgetStreamFromPool\b|\bcudaStreamPerThread\b|\bcudaStreamLegacy\b|"
        r"\bcudaStreamBeginCapture\b|\bcudaGraphLaunch\b|\bcuStreamCreate\w*|\bsetCurrentCUDAStream\b"),
     "launch only on the current stream (at::cuda::getCurrentCUDAStream()); extra streams hide work from the timer"),
    ("identity_cache", re.compile(
        r"\bstatic\s+(?:thread_local\s+)?(?:const\s+)?(?:std\s*::\s*)?(?:unordered_map|map|optional|vector|"
        r"(?:torch|at)\s*::\s*Tensor|Tensor|uintptr_t|intptr_t|void\s*\*|float\s*\*|const\s+float\s*\*)\b[^;(]*[;=]"
        r"|data_ptr\s*(?:<[^<>]*>)?\s*\(\s*\)\s*[!=]="),
     "state kept across calls (outputs cached by tensor address) is not allowed"),
]
_PRECISION = re.compile(
    r"\b(?:__half2?|half2|__nv_bfloat162?|nv_bfloat162?|__float2half\w*|__half2float|__float2bfloat16\w*|"
    r"__bfloat162float|__h(?:add|sub|mul|div|fma)2?|__float_to_tf32|kHalf|kFloat16|kBFloat16)\b|"
    r"\b(?:at|c10|torch)\s*::\s*(?:Half|BFloat16)\b|wmma\s*::\s*precision\s*::\s*tf32|\.tf32\b")
_ATEN_QUAL = r"(?<![\w:])(?:{ns})\s*::\s*((?:\w+\s*::\s*)*)(\w+)\s*(?:<[^<>;(){{}}]*>)?\s*\("
_METHOD = re.compile(r"(?:\.|->)\s*(\w+)\s*(?:<[^<>;(){}]*>)?\s*\(")
_CPP_ONLY_METHODS = {"forward"}                        # torch::nn modules called from C++
_NOT_CPP_METHODS = {"any", "all"}                      # cooperative-groups tiles have .any()/.all()
_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def strip_comments(src: str) -> str:
    """Blank out // and /* */ comments, keeping newlines so line numbers survive."""
    return _COMMENTS.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), src)


def _where(src: str, pos: int, py_line: int) -> str:
    line_no = src.count("\n", 0, pos)
    text = src.split("\n")[line_no].strip()
    return f"line {py_line + line_no}: `{text[:100]}`"


def _aten_namespaces(src: str) -> tuple[str, Optional[re.Pattern]]:
    """Namespace prefixes that mean ATen (torch, at, c10, aten + aliases) and a pattern for bare ATen calls."""
    names = ["torch", "at", "c10", "aten"]
    names += re.findall(r"\bnamespace\s+(\w+)\s*=\s*(?:::)?(?:torch|at|c10)\b", src)
    bare = set()
    if re.search(r"\busing\s+namespace\s+(?:::)?(?:torch|at)\b", src):
        bare.update(_BARE_ATEN)
    for name in re.findall(r"\busing\s+(?:::)?(?:torch|at)\s*::\s*(?:\w+\s*::\s*)*(\w+)\s*;", src):
        if name not in ALLOWED_ATEN_CALLS:
            bare.add(name)
    bare_re = re.compile(r"(?<![\w.:>])(%s)\s*\(" % "|".join(sorted(bare))) if bare else None
    return "|".join(names), bare_re


def _aten_finding(src: str, py_line: int) -> Optional[str]:
    ns, bare_re = _aten_namespaces(src)
    hits = []
    for m in re.finditer(_ATEN_QUAL.format(ns=ns), src):
        path = re.sub(r"\s", "", m.group(1))
        if "nn::" in path or "native::" in path or m.group(2) not in ALLOWED_ATEN_CALLS:
            hits.append((m.start(), f"{path}{m.group(2)}"))
    for m in _METHOD.finditer(src):
        name = m.group(1)
        base = name[:-1] if name.endswith("_") and not name.endswith("__") else name
        if (base in COMPUTE_METHODS and base not in _NOT_CPP_METHODS) or name in _CPP_ONLY_METHODS:
            hits.append((m.start(), f".{name}()"))
    if bare_re:
        hits += [(m.start(), m.group(1)) for m in bare_re.finditer(src)]
    if not hits:
        return None
    pos, what = min(hits)
    return (f"{_where(src, pos, py_line)} -- ATen compute ({what}) inside the kernel; only allocation "
            f"(torch::empty/zeros, empty_like), contiguous(), sizes and data_ptr are allowed: write the loop yourself")


def scan_sources(sources: list[tuple[str, int]], float32_task: bool = True) -> dict[str, str]:
    """-> {reason: detail} with the first finding per reason over all sources (comments stripped)."""
    found: dict[str, str] = {}
    for raw, py_line in sources:
        src = strip_comments(raw)
        for reason, pattern, why in _RULES:
            m = pattern.search(src)
            if m and reason not in found:
                found[reason] = f"{_where(src, m.start(), py_line)} -- {why}"
        for launch in re.finditer(r"<<<(.*?)>>>", src, re.S):
            args = [a.strip() for a in _split_top(launch.group(1))]
            if len(args) >= 4 and re.fullmatch(r"\(?\s*(?:\(\s*cudaStream_t\s*\))?\s*[1-9]\d*\s*\)?|"
                                               r".*cudaStreamPerThread.*", args[3]):
                found.setdefault("extra_stream", f"{_where(src, launch.start(), py_line)} -- launch on the "
                                                 f"current stream only")
        if "aten_compute_in_kernel" not in found:
            hit = _aten_finding(src, py_line)
            if hit:
                found["aten_compute_in_kernel"] = hit
        if float32_task and "precision_downgrade" not in found:
            m = _PRECISION.search(src)
            if m:
                found["precision_downgrade"] = (f"{_where(src, m.start(), py_line)} -- the task is float32; "
                                                f"half/bfloat16/tf32 arithmetic changes the result")
    return found


def _split_top(s: str) -> list[str]:
    """Split a launch configuration on commas outside parentheses/brackets/braces."""
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def has_loop(src: str) -> bool:
    """A CPU kernel does its work in a loop (for/while/parallel_for)."""
    return bool(re.search(r"\bfor\s*\(|\bwhile\s*\(|\bparallel_for\b", strip_comments(src)))


def has_cuda_kernel(src: str) -> bool:
    return "__global__" in strip_comments(src)
