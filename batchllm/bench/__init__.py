"""Benchmark workloads, the end-to-end runner and the physical floor (`batchllm bench`)."""
