"""`LLM(..., quantization="fp8")` end to end on CPU (the reference FP8 path), its option on the command
line, and the errors that name it."""

from __future__ import annotations

import json

import pytest
import torch

from batchllm import LLM, SamplingParams
from batchllm.bench.perplexity import sequence_logits
from batchllm.config import EngineConfig
from batchllm.entrypoints.cli import build_parser, main
from batchllm.entrypoints.run_batch import llm_kwargs
from batchllm.model.fp8 import Fp8Linear, quantize_linears_

GREEDY = SamplingParams(temperature=0, max_tokens=12)
SMOLLM2_TEXT = (
    "Paris is the capital and most populous city of France. With an estimated population of 2,102,650 residents, it "
    "is the centre of the Ile-de-France region. The city is a major railway, highway, and air-transport hub served by "
    "two international airports. Paris is known for its museums and architectural landmarks: the Louvre received 8.9 "
    "million visitors in 2023, making it the most-visited art museum in the world. The river Seine flows through the "
    "city. Photosynthesis is the process by which green plants and some other organisms use sunlight to synthesize "
    "foods from carbon dioxide and water. William Shakespeare was an English playwright, poet and actor."
)
QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "What is 2 + 2?",
             "Write a haiku about the sea.", "Explain photosynthesis in one sentence.",
             "List four animals that live in Africa.", "What is the boiling point of water?", "Who wrote Hamlet?"]  # fmt: skip


def _prompts(n: int = 6) -> list[dict]:
    return [{"prompt_token_ids": list(range(10 + 7 * i, 40 + 7 * i))} for i in range(n)]


def _tokens(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_fp8_engine_generates_on_cpu(tiny_models, family):
    llm = LLM(tiny_models[family], device="cpu", skip_tokenizer_init=True, quantization="fp8")
    assert llm.config.quantization == "fp8"
    model = llm.engine.runner.model
    assert sum(isinstance(m, Fp8Linear) for m in model.modules()) == 4 * len(model.layers)
    outs = llm.generate(_prompts(), GREEDY, use_tqdm=False)
    assert [len(t) for t in _tokens(outs)] == [12] * 6
    assert LLM(tiny_models[family], device="cpu", skip_tokenizer_init=True).config.quantization is None


def test_smollm2_fp8_mostly_agrees_with_fp32(gguf_path):
    """The packaged SmolLM2-135M (real weights): the same engine before and after quantizing its decoder
    linears in place (what quantization="fp8" loads, see tests/model/test_fp8.py; one GGUF load instead of
    two). Measured on CPU: the next-token argmax under teacher forcing agrees at 94.5 % of the text's 145
    positions and its perplexity rises 2.6 %; greedy answers to 8 questions agree for 60 of 113 tokens before
    their first difference (0.53; two answers differ from their first token). Asserted: >= 0.85, >= 0.4 and
    a perplexity rise < 15 %."""
    llm = LLM(gguf_path, device="cpu", dtype="float32", max_model_len=512, num_kv_blocks=128)
    runner = llm.engine.runner
    text = llm.tokenizer.encode(SMOLLM2_TEXT)
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    params = SamplingParams(temperature=0, max_tokens=16)

    def run():
        return sequence_logits(runner.model, runner.arch, text, torch.float32), _tokens(
            llm.chat(conversations, params, use_tqdm=False))

    logits32, greedy32 = run()
    quantize_linears_(runner.model)
    logits8, greedy8 = run()
    argmax_agree = float((logits32.argmax(-1) == logits8.argmax(-1)).float().mean())
    target = torch.tensor(text[1:])
    nll32, nll8 = (float(torch.nn.functional.cross_entropy(lg[:-1], target)) for lg in (logits32, logits8))
    before_diff = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                   for a, b in zip(greedy32, greedy8)]  # fmt: skip
    fraction = sum(before_diff) / sum(map(len, greedy32))
    print(f"argmax agreement {argmax_agree:.3f}, greedy until first difference {fraction:.3f} {before_diff}, "
          f"perplexity x{torch.tensor(nll8 - nll32).exp():.3f}")  # fmt: skip
    assert argmax_agree >= 0.85 and fraction >= 0.4 and nll8 - nll32 < 0.14  # e^0.14 = 1.15


def test_quantization_is_validated_by_name(tiny_models, monkeypatch):
    with pytest.raises(ValueError, match=r"quantization='int8' is not supported; use one of \[None, 'fp8'\]"):
        LLM(tiny_models["llama"], device="cpu", quantization="int8")
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ValueError, match=r"quantization='fp8' needs a GPU of compute capability 8.9 or newer .*"
                                         r"NVIDIA A100-SXM4-80GB is 8.0; leave quantization unset"):  # fmt: skip
        EngineConfig("m", torch.bfloat16, cuda, 64, quantization="fp8")
    assert EngineConfig("m", torch.bfloat16, cuda, 64).quantization is None  # bf16 still runs there
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert EngineConfig("m", torch.bfloat16, cuda, 64, quantization="fp8").quantization == "fp8"


def test_run_batch_option_and_dry_run_plan(tiny_models, tmp_path, capsys):
    args = build_parser().parse_args(["run-batch", "-i", "in.jsonl", "-o", "out.jsonl", "--quantization", "fp8"])
    assert llm_kwargs(args, "m", None)["quantization"] == "fp8"
    assert build_parser().parse_args(["run-batch", "-i", "a", "-o", "b"]).quantization is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run-batch", "-i", "a", "-o", "b", "--quantization", "awq"])
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"prompt_token_ids": [1, 2, 3], "max_tokens": 4}) + "\n")
    common = ["run-batch", "-i", str(inp), "-o", str(tmp_path / "out.jsonl"), "--model", tiny_models["llama"],
              "--skip-tokenizer-init", "--device", "cpu", "--dry-run"]  # fmt: skip
    assert main(common + ["--quantization", "fp8"]) == 0
    assert "(decoder linears in FP8)" in capsys.readouterr().out
    assert main(common) == 0
    assert "FP8" not in capsys.readouterr().out
