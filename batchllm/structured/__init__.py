"""Structured outputs: constraints compiled once by xgrammar, one matcher per request, token bitmasks per step.

``grammars`` compiles a ``StructuredOutputsParams`` (JSON schema, any JSON object, regex, choice, EBNF) into
an xgrammar ``CompiledGrammar`` (cached by constraint, so a batch with one schema compiles it once) and
makes a matcher per request; ``bitmasks`` fills the rows of a step's token bitmask for the constrained
requests (xgrammar's batch matcher, several threads) and applies it to the logits on their device. The engine
advances each matcher with the tokens it receives; the sampler applies the mask before anything else.
"""

from batchllm.structured.grammars import GrammarCompiler, StructuredOutputError

__all__ = ["GrammarCompiler", "StructuredOutputError"]
