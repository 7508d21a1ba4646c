"""Offline entry point: `LLM(model).generate(prompts, sampling_params)`, as in vLLM."""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence, Union

from tqdm.auto import tqdm

from batchllm.config import CacheConfig, EngineConfig, SchedulerConfig, resolve_device, resolve_dtype
from batchllm.engine.llm_engine import LLMEngine
from batchllm.engine.validation import prompt_errors, raise_if_errors, sampling_errors
from batchllm.model.arch_config import load_arch_config
from batchllm.model.tokenizer import load_tokenizer
from batchllm.outputs import RequestOutput
from batchllm.sampling_params import SamplingParams

PromptType = Union[str, dict]
Conversation = list[dict]


class LLM:
    """Load a model once, then run whole batches of prompts through the engine."""

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        device: str = "auto",
        load_format: str = "auto",
        max_model_len: Optional[int] = None,
        seed: int = 0,
        tokenizer: Optional[str] = None,
        block_size: int = 16,
        gpu_memory_utilization: float = 0.90,
        cpu_kv_cache_bytes: int = 1 << 30,
        num_kv_blocks: Optional[int] = None,
        max_num_batched_tokens: Optional[int] = None,
        max_num_seqs: Optional[int] = 256,
        enable_chunked_prefill: bool = True,
        attention_backend: str = "auto",
        skip_tokenizer_init: bool = False,
        enforce_eager: bool = False,
        overlap_scheduling: bool = True,
        scheduling: str = "batchllm",
        **scheduler_options: Any,
    ) -> None:
        """Load the model and size the KV cache.

        scheduling: "batchllm" (prefix groups, decode-first order, memory-centric batching) or
        "vllm-like" (FCFS, LRU prefix caching, max_num_seqs cap); scheduler_options override single
        SchedulerConfig fields (prefix_clustering, decode_first, token_batching, prefix_caching,
        multi_level, min_shared_len, memory_threshold, preemption_mode, swap_space_bytes).
        """
        arch = load_arch_config(model)
        torch_device = resolve_device(device)
        limit = arch.max_position_embeddings
        if arch.sliding_window is not None:
            limit = min(limit, arch.sliding_window)  # within the window, sliding attention equals full attention
        if max_model_len is None:
            max_model_len = limit
        elif max_model_len > limit:
            raise ValueError(
                f"max_model_len={max_model_len} exceeds what the model supports ({limit}: max_position_embeddings"
                f"{' / sliding_window' if arch.sliding_window else ''}); lower it"
            )
        if max_num_batched_tokens is None:
            max_num_batched_tokens = 8192 if enable_chunked_prefill else max(8192, max_model_len)
        self.config = EngineConfig(
            model=model,
            dtype=resolve_dtype(dtype, arch.torch_dtype, torch_device),
            device=torch_device,
            max_model_len=max_model_len,
            load_format=load_format,
            seed=seed,
            enforce_eager=enforce_eager,
            overlap_scheduling=overlap_scheduling,
            cache=CacheConfig(block_size, gpu_memory_utilization, cpu_kv_cache_bytes, num_kv_blocks),
            scheduler=SchedulerConfig.preset(
                scheduling,
                max_num_batched_tokens=max_num_batched_tokens,
                max_num_seqs=max_num_seqs,
                enable_chunked_prefill=enable_chunked_prefill,
                **scheduler_options,
            ),
        )
        self.tokenizer = None if skip_tokenizer_init else load_tokenizer(tokenizer or model)
        if attention_backend == "auto":
            attention_backend = "triton" if torch_device.type == "cuda" else "reference"
        self.engine = LLMEngine(self.config, arch, self.tokenizer, attention_backend)
        self.vocab_size = arch.vocab_size
        self._next_request = 0

    def get_tokenizer(self):
        return self.tokenizer

    def set_scheduling(
        self,
        scheduling: str = "batchllm",
        attention_backend: Optional[str] = None,
        overlap_scheduling: Optional[bool] = None,
        **options: Any,
    ) -> None:
        """Switch the scheduling policy (optionally the attention backend and the overlap of host work with
        the GPU) between batches, same model."""
        current = self.config.scheduler
        config = SchedulerConfig.preset(
            scheduling,
            max_num_batched_tokens=current.max_num_batched_tokens,
            max_num_seqs=current.max_num_seqs,
            enable_chunked_prefill=current.enable_chunked_prefill,
            **options,
        )
        self.engine.reconfigure(config, attention_backend, overlap_scheduling)
        self.config = self.engine.config

    def save_trace(self, path: str, label: str = "") -> None:
        """Write the per-iteration trace of every batch run so far (JSON; plot it with `batchllm report`)."""
        self.engine.trace.label = label or self.engine.trace.label
        self.engine.trace.save(path)

    def _to_token_ids(self, index: int, prompt: Any, errors: list[str]) -> tuple[Optional[str], list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                ids = prompt["prompt_token_ids"]
                if not isinstance(ids, (list, tuple)):
                    errors.append(f"request {index}: prompt_token_ids: expected a list of ints, got {type(ids).__name__}")
                    return None, []
                return prompt.get("prompt"), list(ids)
            if "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                errors.append(f"request {index}: prompt: a dict prompt needs 'prompt' or 'prompt_token_ids'")
                return None, []
        if not isinstance(prompt, str):
            errors.append(f"request {index}: prompt: expected str or dict, got {type(prompt).__name__}")
            return None, []
        if self.tokenizer is None:
            errors.append(f"request {index}: prompt: text given but the tokenizer was skipped; pass prompt_token_ids")
            return prompt, []
        return prompt, list(self.tokenizer(prompt).input_ids)

    def encode(self, index: int, prompt: Any, params: Any) -> tuple[Optional[str], list[int], list[str]]:
        """Tokenize one prompt and check it with its params: (text, token ids, error messages naming `index`)."""
        errors: list[str] = []
        text, ids = self._to_token_ids(index, prompt, errors)
        if not errors:
            errors += prompt_errors(index, ids, self.vocab_size, self.config.max_model_len)
        errors += sampling_errors(index, params, self.vocab_size)
        return text, ids, errors

    def _normalize(self, prompts, sampling_params) -> tuple[list, list]:
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            return prompts, [sampling_params] * len(prompts)
        params_list = list(sampling_params)
        if len(params_list) != len(prompts):
            raise ValueError(
                f"sampling_params: {len(params_list)} given for {len(prompts)} prompts; give one or one per prompt"
            )
        return prompts, params_list

    def generate(
        self,
        prompts: Union[PromptType, Sequence[PromptType]],
        sampling_params: Union[None, SamplingParams, Sequence[SamplingParams]] = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in input order.

        Raises ValueError listing every bad request (index and field) before any compute.
        """
        prompts, params_list = self._normalize(prompts, sampling_params)
        errors: list[str] = []
        encoded = []
        for index, (prompt, params) in enumerate(zip(prompts, params_list)):
            text, ids, request_errors = self.encode(index, prompt, params)
            errors += request_errors
            encoded.append((text, ids))
        raise_if_errors(errors)
        outputs: list[Optional[RequestOutput]] = [None] * len(encoded)
        with tqdm(total=len(encoded), disable=not use_tqdm, desc="Processed prompts", unit="req") as bar:
            for index, output in self.run_encoded(encoded, params_list):
                outputs[index] = output
                bar.update(1)
        return outputs  # type: ignore[return-value]

    def run_encoded(
        self, encoded: Sequence[tuple[Optional[str], list[int]]], params_list: Sequence[SamplingParams]
    ) -> Iterator[tuple[int, RequestOutput]]:
        """Run already validated (text, token ids) prompts; yield (input index, output) as each finishes."""
        requests = []
        for index, ((text, ids), params) in enumerate(zip(encoded, params_list)):
            request_id = str(self._next_request)
            self._next_request += 1
            requests.append(self.engine.make_request(request_id, text, ids, params, index))
        self.engine.add_requests(requests)
        while self.engine.has_unfinished():
            for request in self.engine.step():
                yield request.arrival_index, self.engine.make_output(request)

    def chat(
        self,
        messages: Union[Conversation, Sequence[Conversation]],
        sampling_params: Union[None, SamplingParams, Sequence[SamplingParams]] = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
        chat_template: Optional[str] = None,
    ) -> list[RequestOutput]:
        """Apply the tokenizer's chat template to each conversation, then generate."""
        if self.tokenizer is None:
            raise ValueError("chat needs the tokenizer; do not pass skip_tokenizer_init=True")
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = []
        for index, conversation in enumerate(conversations):
            try:
                text = self.tokenizer.apply_chat_template(
                    conversation, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=chat_template
                )
            except Exception as err:  # template errors come in many types; name the conversation
                raise ValueError(f"request {index}: messages: the chat template failed ({err})") from err
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            prompts.append({"prompt": text, "prompt_token_ids": list(ids)})
        return self.generate(prompts, sampling_params, use_tqdm)
