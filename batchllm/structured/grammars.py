"""Compile structured-output constraints with xgrammar (once per distinct constraint) and make matchers."""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Optional

from batchllm.sampling_params import StructuredOutputsParams

XGRAMMAR_MISSING = "structured outputs need xgrammar, which is not installed: pip install 'xgrammar>=0.2.8,<0.3'"


class StructuredOutputError(ValueError):
    """A constraint that cannot be compiled (an invalid schema, regex or grammar); the message says why."""


def _choice_grammar(choices) -> str:
    # JSON string literals are valid EBNF string literals in xgrammar's dialect (same escapes).
    return "root ::= " + " | ".join(json.dumps(c) for c in choices)


class GrammarCompiler:
    """xgrammar's compiler for one tokenizer and model vocabulary, with a cache of compiled constraints.

    vocab_size: the model's (logits') vocabulary, which may exceed the tokenizer's (padding rows)."""

    def __init__(self, tokenizer: Any, vocab_size: int, max_threads: int = min(8, os.cpu_count() or 1)) -> None:
        try:
            import xgrammar
        except ImportError as err:
            raise ImportError(XGRAMMAR_MISSING) from err
        self.xgr = xgrammar
        self.vocab_size = vocab_size
        self.tokenizer_info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.compiler = xgrammar.GrammarCompiler(self.tokenizer_info, max_threads=max_threads)
        self._compiled: dict[tuple, Any] = {}
        self._errors: dict[tuple, str] = {}
        self._lock = threading.Lock()
        self.compilations = 0  # distinct constraints compiled (a batch with one schema: 1)

    def compile(self, spec: StructuredOutputsParams):
        """The compiled grammar of ``spec``; raises StructuredOutputError (cached too) when it is invalid."""
        key = spec.key()
        with self._lock:
            if key in self._compiled:
                return self._compiled[key]
            if key in self._errors:
                raise StructuredOutputError(self._errors[key])
            try:
                compiled = self._compile(spec)
            except Exception as err:  # xgrammar raises RuntimeError / InvalidJSONError / ValueError
                message = f"{spec.kinds()[0]}: cannot be compiled: {type(err).__name__}: {str(err).strip()[:500]}"
                self._errors[key] = message
                raise StructuredOutputError(message) from err
            self._compiled[key] = compiled
            self.compilations += 1
            return compiled

    def _compile(self, spec: StructuredOutputsParams):
        c = self.compiler
        if spec.json is not None:
            schema = spec.json if isinstance(spec.json, str) else json.dumps(spec.json)
            json.loads(schema)  # a clear error for text that is not JSON at all
            return c.compile_json_schema(schema)
        if spec.json_object:
            # OpenAI's json_object is an object; xgrammar's built-in JSON grammar would allow any JSON value.
            return c.compile_json_schema('{"type": "object"}')
        if spec.regex is not None:
            return c.compile_regex(spec.regex)
        if spec.choice is not None:
            return c.compile_grammar(_choice_grammar(spec.choice))
        return c.compile_grammar(spec.grammar)

    def problem(self, spec: StructuredOutputsParams) -> Optional[str]:
        """Why ``spec`` cannot be enforced (None when it can): for validation before anything runs."""
        errors = spec.validation_errors()
        if errors:
            return errors[0]
        try:
            self.compile(spec)
        except StructuredOutputError as err:
            return str(err)
        return None

    def matcher(self, spec: StructuredOutputsParams):
        """A fresh xgrammar ``GrammarMatcher`` for one request."""
        return self.xgr.GrammarMatcher(self.compile(spec))
