"""The built-in task suite: small KernelBench-format tasks that run in milliseconds on a CPU, each with two known-good
solutions in the candidate format (`solution_cpu.py`: C++ loops for the CPU backend; `solution_cuda.py`: CUDA kernels).

Layout: `<name>/task.py`, `<name>/solution_cpu.py`, `<name>/solution_cuda.py`; MANIFEST below gives level and description.
Tasks marked `timed` are sized so one reference call takes milliseconds (timing then measures the kernel, not launch
overhead). Load through kernel_eval.tasks: `get_task("builtin/relu")`, `builtin_solution("builtin/relu", "cpu")`.
"""

# name -> (level, description, timed)
MANIFEST: dict[str, tuple[int, str, bool]] = {
    "scaled_add": (1, "x + alpha * y, elementwise", False),
    "relu": (1, "ReLU on mixed-sign inputs", False),
    "gelu": (1, "exact (erf) GELU", False),
    "leaky_relu": (1, "LeakyReLU with a constructor slope", False),
    "softmax": (1, "softmax over the last dimension", True),
    "layernorm": (1, "LayerNorm with affine weight and bias", False),
    "rmsnorm": (1, "RMSNorm with a weight", False),
    "mean_reduce": (1, "mean over the middle dimension of a 3-D tensor", False),
    "matmul": (1, "matrix multiplication A @ B", True),
    "conv2d": (1, "2-D convolution with padding and bias", False),
    "linear_relu": (2, "fused linear (matmul + bias) + ReLU", True),
    "conv_relu_scale": (2, "fused valid conv2d + ReLU + scale", False),
    "linear_layernorm": (2, "fused linear + LayerNorm", False),
}
