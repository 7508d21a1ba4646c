"""Seeded token-id workloads, written as the JSONL every runner reads ({"prompt_token_ids", "max_tokens"}).

Names: micro-S-D-k-O (shared prefix S, distinct D, sharing degree k, output O), multilevel,
noshare, skewed, realistic. Token ids are random within the vocabulary; the order of requests is shuffled
(a real batch file does not arrive sorted by prefix).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Workload:
    name: str
    prompts: list[list[int]]
    max_tokens: list[int]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def output_tokens(self) -> int:
        return sum(self.max_tokens)

    def write_jsonl(self, path: str) -> None:
        with open(path, "w") as f:
            for prompt, max_tokens in zip(self.prompts, self.max_tokens):
                f.write(json.dumps({"prompt_token_ids": prompt, "max_tokens": max_tokens}) + "\n")


def read_workload_jsonl(path: str) -> Workload:
    prompts, max_tokens = [], []
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "prompt_token_ids" not in record:
                raise ValueError(f"{path}:{line_number}: a workload line needs prompt_token_ids")
            prompts.append(record["prompt_token_ids"])
            max_tokens.append(int(record.get("max_tokens", 16)))
    return Workload(os.path.splitext(os.path.basename(path))[0], prompts, max_tokens)


def _tokens(rng: np.random.Generator, n: int, vocab: int) -> list[int]:
    return rng.integers(10, vocab, size=n).tolist()  # ids below 10 left out: special tokens live there


def _shuffled(name: str, rng: np.random.Generator, prompts: list[list[int]], outputs: list[int]) -> Workload:
    order = rng.permutation(len(prompts))
    return Workload(name, [prompts[i] for i in order], [int(outputs[i]) for i in order])


def micro(shared: int, distinct: int, degree: int, output: int, requests: int, vocab: int, seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    prompts = []
    for _ in range(max(1, requests // degree)):
        prefix = _tokens(rng, shared, vocab)
        prompts += [prefix + _tokens(rng, distinct, vocab) for _ in range(degree)]
    prompts = prompts[:requests]
    return _shuffled(f"micro-{shared}-{distinct}-{degree}-{output}", rng, prompts, [output] * len(prompts))


def multilevel(requests: int, vocab: int, seed: int) -> Workload:
    """System prompt (~500, all) -> document (~1500, shared by 4-32) -> question (~100); output 50-300."""
    rng = np.random.default_rng(seed)
    system = _tokens(rng, 500, vocab)
    prompts, outputs = [], []
    while len(prompts) < requests:
        document = _tokens(rng, int(rng.integers(1200, 1800)), vocab)
        for _ in range(int(rng.integers(4, 33))):
            prompts.append(system + document + _tokens(rng, int(rng.integers(50, 150)), vocab))
            outputs.append(int(rng.integers(50, 301)))
    return _shuffled("multilevel", rng, prompts[:requests], outputs[:requests])


def noshare(requests: int, vocab: int, seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    prompts = [_tokens(rng, int(rng.integers(100, 2001)), vocab) for _ in range(requests)]
    outputs = rng.integers(50, 501, size=requests).tolist()
    return _shuffled("noshare", rng, prompts, outputs)


def skewed(requests: int, vocab: int, seed: int) -> Workload:
    """A few huge groups (a quarter of the requests each... down to 1/16) plus many singletons."""
    rng = np.random.default_rng(seed)
    prompts, outputs = [], []
    for share in (4, 8, 16):
        prefix = _tokens(rng, int(rng.integers(1000, 3000)), vocab)
        for _ in range(requests // share):
            prompts.append(prefix + _tokens(rng, int(rng.integers(20, 200)), vocab))
            outputs.append(int(rng.integers(20, 200)))
    while len(prompts) < requests:
        prompts.append(_tokens(rng, int(rng.integers(200, 2000)), vocab))
        outputs.append(int(rng.integers(20, 200)))
    return _shuffled("skewed", rng, prompts[:requests], outputs[:requests])


def realistic(requests: int, vocab: int, seed: int) -> Workload:
    """What a batch job of one task sends: one system prompt (~400 tokens, every request) -> a document of
    300-3000 tokens whose number of requests follows a Zipf law (exponent 2, capped at the larger of 8 and a
    25th of the batch: a few popular documents, half the requests in groups of 8+, a long tail asked once)
    -> a question of 20-150; outputs 20-400 tokens, log-uniform (most answers short, some long); shuffled."""
    rng = np.random.default_rng(seed)
    system = _tokens(rng, 400, vocab)
    cap = max(8, requests // 25)
    prompts, outputs = [], []
    while len(prompts) < requests:
        document = _tokens(rng, int(rng.integers(300, 3001)), vocab)
        for _ in range(min(int(rng.zipf(2.0)), cap)):
            prompts.append(system + document + _tokens(rng, int(rng.integers(20, 151)), vocab))
            outputs.append(int(np.exp(rng.uniform(np.log(20), np.log(400)))))
    return _shuffled("realistic", rng, prompts[:requests], outputs[:requests])


_MICRO = re.compile(r"^micro-(\d+)-(\d+)-(\d+)-(\d+)$")
NAMES = ("micro-S-D-k-O", "multilevel", "noshare", "skewed", "realistic")


def make_workload(name: str, requests: int, vocab: int, seed: int = 0) -> Workload:
    """The named workload with `requests` requests over token ids < vocab."""
    if requests < 1:
        raise ValueError(f"requests={requests} must be at least 1")
    match = _MICRO.match(name)
    if match:
        shared, distinct, degree, output = map(int, match.groups())
        if degree < 1 or output < 1 or shared + distinct < 1:
            raise ValueError(f"workload {name!r}: sharing degree and output must be >= 1")
        return micro(shared, distinct, degree, output, requests, vocab, seed)
    makers = {"multilevel": multilevel, "noshare": noshare, "skewed": skewed, "realistic": realistic}
    if name not in makers:
        raise ValueError(f"workload {name!r} is unknown; use one of {', '.join(NAMES)} (e.g. micro-2000-200-16-100)")
    return makers[name](requests, vocab, seed)
