"""BatchLLM: offline batch LLM inference with global prefix sharing."""

from batchllm.llm import LLM
from batchllm.outputs import CompletionOutput, RequestOutput
from batchllm.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]
__version__ = "0.1.0"
