"""Does the adversarial candidate tests/adversarial/cuda_infinite_loop.py really spin on this GPU? Builds its
extension in this process, launches the kernel, and reports whether a synchronize returns within 15 s, the launch
error if any, and the SASS of the kernel (is the loop still there after nvcc -O2?). Writes $OUT/probe_cuda_spin.txt.
Its first version spun on a volatile local: on an H200 (sm_90) the kernel returned at once with y[0] = x[0] (the
evaluator's `mismatch` was right, the test vector was not); it now spins on a flag in device memory.

    python benchmarks/probe_cuda_spin.py
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    import torch
    from torch.utils.cpp_extension import load_inline
    out_dir = os.environ.get("OUT", "bench_out")
    os.makedirs(out_dir, exist_ok=True)
    lines: list[str] = []

    def say(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)
        with open(os.path.join(out_dir, "probe_cuda_spin.txt"), "w") as fh:
            fh.write("\n".join(lines) + "\n")

    src = open(os.path.join(ROOT, "tests", "adversarial", "cuda_infinite_loop.py")).read()
    cpp = re.search(r'CPP = "(.*?)"', src).group(1)
    cuda = re.search(r'CUDA = r"""(.*?)"""', src, re.S).group(1)
    build = os.path.join("/tmp", "probe_cuda_spin")
    os.makedirs(build, exist_ok=True)
    t0 = time.time()
    ext = load_inline(name="probe_cuda_spin", cpp_sources=cpp, cuda_sources=cuda, functions=["relu_fwd"],
                      extra_cuda_cflags=["-O2"], build_directory=build)
    say(f"built in {time.time() - t0:.0f} s; TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')}; "
        f"device {torch.cuda.get_device_name()} cc {torch.cuda.get_device_capability()}")
    for so in glob.glob(os.path.join(build, "*.so")):
        r = subprocess.run(["cuobjdump", "-sass", so], capture_output=True, text=True, timeout=60)
        body = r.stdout[r.stdout.find("relu_k"):][:3000] if "relu_k" in r.stdout else r.stdout[:2000] + r.stderr
        say(f"--- SASS of {os.path.basename(so)} (relu_k):\n{body}")
    x = torch.randn(1024, device="cuda")
    say(f"current stream {torch.cuda.current_stream()} (default: {torch.cuda.default_stream()})")
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(15):
            say("synchronize did not return within 15 s: the kernel spins (as intended)")
            os._exit(0)
    threading.Thread(target=watchdog, daemon=True).start()
    t0 = time.time()
    try:
        y = ext.relu_fwd(x)
        say(f"launch returned in {time.time() - t0:.4f} s")
        torch.cuda.synchronize()
        done.set()
        say(f"synchronize returned after {time.time() - t0:.3f} s: the kernel ENDED; y[0]={float(y[0])} x[0]="
            f"{float(x[0])}")
    except Exception as e:          # noqa: BLE001 - the probe reports whatever happens
        done.set()
        say(f"error after {time.time() - t0:.3f} s: {type(e).__name__}: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
