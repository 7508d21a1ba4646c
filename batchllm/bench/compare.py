"""Run one workload end to end under several engine configurations in one process, same model, same GPU."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from batchllm.bench.workloads import Workload
from batchllm.llm import LLM
from batchllm.sampling_params import SamplingParams

@dataclass(frozen=True)
class BenchConfig:
    scheduling: str  # SchedulerConfig preset
    backend: str  # attention backend on the GPU (CPU runs use the reference attention)
    options: dict = field(default_factory=dict)  # SchedulerConfig fields over the preset
    overlap_scheduling: bool = True


CONFIGS: dict[str, BenchConfig] = {
    "batchllm": BenchConfig("batchllm", "triton"),
    "vllm-like": BenchConfig("vllm-like", "triton-unfused"),
    "+prefix-clustering": BenchConfig("vllm-like", "triton-unfused", {"prefix_clustering": True}),
    "+fused-kernel": BenchConfig("vllm-like", "triton", {"prefix_clustering": True}),
    "+decode-first": BenchConfig("vllm-like", "triton-unfused", {"decode_first": True}),
    "+memory-batching": BenchConfig("vllm-like", "triton-unfused", {"token_batching": "memory"}),
    "batchllm-unfused": BenchConfig("batchllm", "triton-unfused"),
    "batchllm-single-level": BenchConfig("batchllm", "triton", {"multi_level": False}),
    "batchllm-threshold-1.1": BenchConfig("batchllm", "triton", {"memory_threshold": 1.1}),
    "batchllm-threshold-2": BenchConfig("batchllm", "triton", {"memory_threshold": 2.0}),
    "batchllm-no-overlap": BenchConfig("batchllm", "triton", overlap_scheduling=False),
    "vllm-like-no-overlap": BenchConfig("vllm-like", "triton-unfused", overlap_scheduling=False),
}


@dataclass
class RunResult:
    config: str
    workload: str
    requests: int
    seconds: float
    prompt_tokens: int
    output_tokens: int
    prefill_tokens_computed: int
    iterations: int
    mean_tokens_per_iteration: float
    peak_kv_blocks: int
    preemptions: int
    prefix_groups: int
    jit_compiles: int  # attention kernel variants Triton compiled during the timed run (should be 0)

    @property
    def total_tokens_per_s(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.seconds

    @property
    def reuse_ratio(self) -> float:
        return 1.0 - self.prefill_tokens_computed / max(1, self.prompt_tokens)

    def to_dict(self) -> dict:
        return {**asdict(self), "total_tokens_per_s": self.total_tokens_per_s, "reuse_ratio": self.reuse_ratio,
                "requests_per_s": self.requests / self.seconds, "output_tokens_per_s": self.output_tokens / self.seconds,
                "prompt_tokens_per_s": self.prompt_tokens / self.seconds}


def _compiled_variants(on_gpu: bool) -> int:
    if not on_gpu:  # CPU runs use the reference attention: nothing is compiled
        return 0
    from batchllm.attention.triton.backend import compiled_kernel_variants

    return compiled_kernel_variants()


def run_config(llm: LLM, name: str, workload: Workload, trace_path: Optional[str] = None) -> RunResult:
    """Time one workload (prefix analysis and scheduling included) under configuration `name`."""
    if name not in CONFIGS:
        raise ValueError(f"bench config {name!r} is unknown; use one of {sorted(CONFIGS)}")
    config = CONFIGS[name]
    on_gpu = llm.config.device.type == "cuda"
    llm.set_scheduling(config.scheduling, attention_backend=config.backend if on_gpu else None,
                       overlap_scheduling=config.overlap_scheduling, **config.options)
    prompts = [{"prompt_token_ids": p} for p in workload.prompts]
    params = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True) for m in workload.max_tokens]
    compiled_before = _compiled_variants(on_gpu)
    if on_gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    if on_gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    produced = sum(len(o.outputs[0].token_ids) for o in outputs)
    if produced != workload.output_tokens:
        raise RuntimeError(f"{name}: produced {produced} output tokens, expected {workload.output_tokens}")
    trace = llm.engine.trace
    if trace_path:
        llm.save_trace(trace_path, label=f"{name} {workload.name}")
    counters = llm.engine.scheduler.counters
    return RunResult(
        config=name,
        workload=workload.name,
        requests=len(workload.prompts),
        seconds=seconds,
        prompt_tokens=workload.prompt_tokens,
        output_tokens=produced,
        prefill_tokens_computed=int(trace.column("prefill_tokens").sum()),
        iterations=len(trace),
        mean_tokens_per_iteration=float(trace.column("batch_tokens").mean()) if len(trace) else 0.0,
        peak_kv_blocks=int(trace.column("kv_blocks_used").max()) if len(trace) else 0,
        preemptions=counters.preemptions,
        prefix_groups=counters.prefix_groups,
        jit_compiles=_compiled_variants(on_gpu) - compiled_before,
    )


def run_transformers_baseline(
    model_dir: str, workload: Workload, dtype: torch.dtype, limit: int, device: str = "cuda"
) -> dict:
    """Hugging Face continuous batching (`generate_batch`) on the first `limit` requests, dummy weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    subset = Workload(workload.name, workload.prompts[:limit], workload.max_tokens[:limit])
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    generation = GenerationConfig(max_new_tokens=max(subset.max_tokens), do_sample=False, eos_token_id=None,
                                  pad_token_id=0)
    on_gpu = device.startswith("cuda")
    if on_gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    results = model.generate_batch(inputs=subset.prompts, generation_config=generation)
    if on_gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    produced = sum(len(r.generated_tokens) for r in results.values())
    del model
    if on_gpu:
        torch.cuda.empty_cache()
    return {"config": "transformers generate_batch", "requests": len(subset.prompts), "seconds": seconds,
            "prompt_tokens": subset.prompt_tokens, "output_tokens": produced,
            "total_tokens_per_s": (subset.prompt_tokens + produced) / seconds}
