"""Offline entry point: `LLM(model).generate(prompts, sampling_params)`, as in vLLM."""

from __future__ import annotations

import bisect
from typing import Any, Callable, Iterator, Optional, Sequence, Union

from tqdm.auto import tqdm

from batchllm.chat import ChatInputError, ChatOptions, normalize_messages, render_chat
from batchllm.config import (
    CacheConfig,
    EngineConfig,
    SchedulerConfig,
    resolve_device,
    resolve_dtype,
    resolve_max_model_len,
    resolve_quantization,
)
from batchllm.engine.llm_engine import LLMEngine
from batchllm.engine.samples import SampleFanOut, sample_params, sample_request_id
from batchllm.engine.validation import prompt_errors, raise_if_errors, sampling_errors
from batchllm.model.arch_config import load_arch_config
from batchllm.model.tokenizer import load_tokenizer
from batchllm.outputs import RequestOutput
from batchllm.sampling_params import SamplingParams

PromptType = Union[str, dict]
Conversation = list[dict]
# Already validated prompts, (text, token ids) each, and one SamplingParams per prompt.
EncodedBatch = tuple[Sequence[tuple[Optional[str], list[int]]], Sequence[SamplingParams]]


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
        gpu_memory_is_share: bool = False,
        max_num_batched_tokens: Optional[int] = None,
        max_num_seqs: Optional[int] = 256,
        enable_chunked_prefill: bool = True,
        attention_backend: str = "auto",
        skip_tokenizer_init: bool = False,
        enforce_eager: bool = False,
        overlap_scheduling: bool = True,
        scheduling: str = "batchllm",
        kv_cache_dtype: str = "auto",
        quantization: Optional[str] = None,
        **scheduler_options: Any,
    ) -> None:
        """Load the model and size the KV cache.

        scheduling: "batchllm" (prefix groups, decode-first order, memory-centric batching) or
        "vllm-like" (FCFS, LRU prefix caching, max_num_seqs cap); scheduler_options override single
        SchedulerConfig fields (prefix_clustering, decode_first, token_batching, prefix_caching,
        multi_level, min_shared_len, memory_threshold, preemption_mode, swap_space_bytes).
        gpu_memory_is_share: gpu_memory_utilization is this engine's share of a GPU that other engines
        share (see CacheConfig).
        kv_cache_dtype: "auto" (the model dtype) or "fp8" / "fp8_e4m3" (float8_e4m3fn KV with per-layer
        scales, twice the blocks; GPUs of compute capability 8.9+, or the CPU's reference attention).
        quantization: "fp8" runs the decoder's linear layers in FP8 (weights quantized per output channel at
        load, activations per token, FP8 tensor cores; GPUs of compute capability 8.9+, or the CPU's slow
        reference path); None: the model dtype, unless the checkpoint is stored in FP8 (then "fp8").
        """
        arch = load_arch_config(model)
        torch_device = resolve_device(device)
        max_model_len = resolve_max_model_len(arch.max_position_embeddings, arch.sliding_window, max_model_len)
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
            quantization=resolve_quantization(quantization, arch.fp8_checkpoint is not None),
            cache=CacheConfig(block_size, gpu_memory_utilization, cpu_kv_cache_bytes, num_kv_blocks, gpu_memory_is_share,
                              kv_cache_dtype=kv_cache_dtype),
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

    @property
    def num_kv_blocks(self) -> int:
        """KV blocks of the device cache (sized at load from free memory, or num_kv_blocks)."""
        return self.engine.runner.num_blocks

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
            hint = " (token ids go in {'prompt_token_ids': [...]})" if isinstance(prompt, int) else ""
            errors.append(f"request {index}: prompt: expected str or dict, got {type(prompt).__name__}{hint}")
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
        if isinstance(params, SamplingParams) and params.structured_outputs is not None and not errors:
            problem = self.engine.structured.problem(params)
            if problem is not None:
                errors.append(f"request {index}: structured_outputs: {problem}")
        if self.tokenizer is None and isinstance(params, SamplingParams) and params.stop_strings:
            # Without a tokenizer there is no text to find them in: they would be ignored silently.
            errors.append(f"request {index}: stop: stop strings need the tokenizer (skipped by skip_tokenizer_init); "
                          "use stop_token_ids")
        if isinstance(params, SamplingParams) and params.bad_words and not errors:
            errors += [f"request {index}: {e}" for e in params.update_from_tokenizer(self.tokenizer)]
        return text, ids, errors

    def _normalize(self, prompts: Any, sampling_params: Any) -> tuple[list, list]:
        """One prompt and one params object per request; TypeError/ValueError for misuse of the arguments."""
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        elif isinstance(prompts, bytes) or not _is_iterable(prompts):
            raise TypeError(
                f"prompts: expected a string, a dict ({{'prompt': ...}} or {{'prompt_token_ids': [...]}}) or a list "
                f"of them, got {type(prompts).__name__}"
            )
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, (SamplingParams, dict)):
            # A dict is reported per request (sampling_errors) rather than iterated over its keys.
            return prompts, [sampling_params] * len(prompts)
        if isinstance(sampling_params, (str, bytes)) or not _is_iterable(sampling_params):
            raise TypeError(
                f"sampling_params: expected SamplingParams or a list of them (one per prompt), "
                f"got {type(sampling_params).__name__}"
            )
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
        """Run every prompt to completion; outputs come back in input order, one per prompt, with
        `params.n` completions each (`outputs[i].index == i`; samples share the prompt's KV, see
        `engine/samples.py`).

        Raises ValueError listing every bad request (index and field) before any compute, TypeError when
        the arguments themselves have the wrong type.

        A failure that concerns one request alone (its stop check, detokenization or seeded sampler raising)
        does not stop the batch: that request (or sample) finishes with `finish_reason == "error"` and
        `RequestOutput.error` holding the message (exception type and text; with n > 1, which samples
        failed); its output keeps the tokens received before the failure. Any other exception, a
        KeyboardInterrupt included, propagates after every request of this call was aborted and its KV
        memory freed: the LLM is ready for the next call.
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
        stream = self.run_encoded(encoded, params_list)
        try:
            with tqdm(total=len(encoded), disable=not use_tqdm, desc="Processed prompts", unit="req") as bar:
                for index, output in stream:
                    outputs[index] = output
                    bar.update(1)
        finally:
            # If the loop body raised (e.g. KeyboardInterrupt in the progress bar), abort the call's requests
            # now rather than whenever the suspended generator is garbage collected.
            stream.close()
        return outputs  # type: ignore[return-value]

    def run_encoded(
        self, encoded: Sequence[tuple[Optional[str], list[int]]], params_list: Sequence[SamplingParams]
    ) -> Iterator[tuple[int, RequestOutput]]:
        """Run already validated (text, token ids) prompts; yield (input index, output) as each finishes.

        Transactional: if the engine raises, the run is interrupted, or the consumer stops early (break,
        close(), or dropping the generator raises GeneratorExit at its `yield`), every request of this call
        is aborted and its KV blocks freed before the exception goes on. Requests that fail alone come out
        with finish_reason "error" (see `generate`). One call at a time: finish or close() a generator
        before starting another.
        """
        batches = iter([(encoded, params_list)])
        for _, index, output in self.run_stream(lambda wait: next(batches, None)):
            yield index, output

    def run_stream(self, next_batch: Callable[[bool], Optional[EncodedBatch]]) -> Iterator[tuple[int, int, RequestOutput]]:
        """Run batches as they arrive, keeping the engine full from one to the next; yield (batch number,
        index in that batch, output) as each prompt finishes (all of its `params.n` samples).

        ``next_batch(wait)`` is called whenever every request given so far has been admitted: with
        wait=False while others still run (return the next batch, or None for "nothing yet"), with
        wait=True when the engine is idle (block until a batch comes; None ends the stream). Each batch is
        analysed into prefix groups and ordered on its own, so give whole prefix groups per batch. A data-
        parallel replica feeds its work units this way: without the feed, each unit would end in a tail of
        a few long decodes on a nearly empty GPU. Transactional, one call at a time, as ``run_encoded``.
        """
        if self.engine.has_unfinished():
            # Checked before the try: aborting here would kill the requests of the call still in progress.
            raise RuntimeError(
                "the engine is still running the requests of an earlier run_encoded generator; exhaust it or "
                "call its close() before starting another call"
            )
        batch_starts: list[int] = []  # prompt index (over the call) of each batch's first prompt
        fan_out = SampleFanOut()  # a prompt with n samples runs as n engine requests
        try:
            while True:
                if self.engine.num_waiting() == 0:
                    batch = next_batch(not self.engine.has_unfinished())
                    if batch is not None:
                        batch_starts.append(fan_out.num_prompts)
                        self.engine.add_requests(self._make_requests(batch, fan_out))
                    elif not self.engine.has_unfinished():
                        return
                for request in self.engine.step():
                    done = fan_out.finished(request.arrival_index, request.request_id, self.engine.make_output(request))
                    if done is None:
                        continue  # other samples of its prompt still run: the prompt's output comes with the last
                    prompt, output = done
                    number = bisect.bisect_right(batch_starts, prompt) - 1
                    yield number, prompt - batch_starts[number], output
        except BaseException:  # GeneratorExit and KeyboardInterrupt too: the engine must not keep this call's state
            self.engine.abort_all()
            raise

    def _make_requests(self, batch: EncodedBatch, fan_out: SampleFanOut) -> list:
        """Engine requests of a batch: ``params.n`` per prompt, the samples of a prompt one after another (the
        scheduler then groups them as a shared prefix: the prompt's KV is computed once)."""
        encoded, params_list = batch
        requests = []
        for (text, ids), params in zip(encoded, params_list):
            parent_id = str(self._next_request)
            self._next_request += 1
            samples = sample_params(params)
            arrival = fan_out.add_prompt(len(samples))
            for i, sample in enumerate(samples):
                request_id = sample_request_id(parent_id, i, len(samples))
                requests.append(self.engine.make_request(request_id, text, ids, sample, arrival + i))
        return requests

    def chat(
        self,
        messages: Union[Conversation, Sequence[Conversation]],
        sampling_params: Union[None, SamplingParams, Sequence[SamplingParams]] = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
        chat_template: Optional[str] = None,
        continue_final_message: bool = False,
        chat_template_kwargs: Optional[dict[str, Any]] = None,
    ) -> list[RequestOutput]:
        """Apply the tokenizer's chat template to each conversation, then generate.

        messages: one conversation (a list of {"role": ..., "content": ...} dicts) or a list of them; a
        content may be a list of text parts (joined with "\\n", as vLLM). continue_final_message: continue
        the last (assistant) message instead of starting a new turn; needs add_generation_prompt=False.
        chat_template_kwargs: extra template variables (e.g. {"enable_thinking": False}). The rules, shared
        with the batch job, are in ``batchllm/chat.py``; every bad conversation is listed in one ValueError.
        """
        conversations = _conversations(messages)
        if self.tokenizer is None:
            raise ValueError("chat needs the tokenizer; do not pass skip_tokenizer_init=True")
        options = ChatOptions(add_generation_prompt, continue_final_message, chat_template_kwargs)
        prompts, errors = [], []
        for index, conversation in enumerate(conversations):
            try:
                conversation = normalize_messages(conversation)
                options.check(conversation)
            except ChatInputError as err:
                errors.append(f"request {index}: {err}")
                continue
            try:
                text = render_chat(self.tokenizer, conversation, options, chat_template)
            except Exception as err:  # template errors come in many types; name the conversation
                errors.append(f"request {index}: messages: the chat template failed ({err})")
                continue
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            prompts.append({"prompt": text, "prompt_token_ids": list(ids)})
        raise_if_errors(errors)
        return self.generate(prompts, sampling_params, use_tqdm)


def _is_iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


def _conversations(messages: Any) -> list[Conversation]:
    """`messages` as a list of conversations; TypeError/ValueError naming the conversation when malformed."""
    expected = "a conversation (a list of {'role': ..., 'content': ...} dicts) or a list of conversations"
    if not isinstance(messages, (list, tuple)):
        raise TypeError(f"messages: expected {expected}, got {type(messages).__name__}")
    if messages and isinstance(messages[0], dict):
        messages = [messages]
    errors = []
    for index, conversation in enumerate(messages):
        if not isinstance(conversation, (list, tuple)) or not all(isinstance(m, dict) for m in conversation):
            is_list = isinstance(conversation, (list, tuple))
            got = "a list with non-dicts" if is_list else type(conversation).__name__
            errors.append(f"request {index}: messages: expected a list of message dicts, got {got}")
    raise_if_errors(errors)
    return [list(c) for c in messages]
