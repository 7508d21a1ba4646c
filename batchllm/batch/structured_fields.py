"""Request-body fields that constrain the output -> ``StructuredOutputsParams``.

OpenAI: ``response_format`` ``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {"name",
"schema", "strict"}}`` (``{"type": "text"}`` is no constraint). vLLM's offline forms: ``guided_json``,
``guided_regex``, ``guided_choice``, ``guided_grammar`` and the newer ``structured_outputs`` object
(``{"json" | "regex" | "choice" | "grammar" | "json_object": ...}``). At most one of them per request.
Whether the constraint compiles is checked later (``batch/collect.py``), once per distinct constraint.
"""

from __future__ import annotations

from typing import Any, Optional

from batchllm.batch.request_errors import RequestError
from batchllm.batch.request_errors import short_repr as _short
from batchllm.sampling_params import StructuredOutputsParams

GUIDED_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}
STRUCTURED_FIELDS = frozenset({"response_format", "structured_outputs", *GUIDED_FIELDS})
STRUCTURED_KEYS = ("json", "regex", "choice", "grammar", "json_object")


def _response_format(value: Any) -> Optional[StructuredOutputsParams]:
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise RequestError("invalid_parameter", f"response_format={_short(value)} must be an object with a 'type'",
                           "response_format")
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, (dict, bool)):
            raise RequestError("invalid_parameter", "response_format.json_schema.schema must be a JSON schema object "
                               f"(got {_short(schema)})", "response_format")
        return StructuredOutputsParams(json={} if schema is True else schema)
    raise RequestError("unsupported_parameter", f"response_format type {kind!r} is not supported; use text, "
                       "json_object or json_schema", "response_format")


def structured_outputs_from_body(body: dict) -> Optional[StructuredOutputsParams]:
    """The body's output constraint (None when it has none); RequestError for malformed or conflicting ones."""
    given = [key for key in STRUCTURED_FIELDS if body.get(key) is not None]
    if not given:
        return None
    spec: Optional[StructuredOutputsParams]
    if len(given) > 1 and not (len(given) == 2 and "response_format" in given and _is_text(body["response_format"])):
        raise RequestError("invalid_parameter", f"give one output constraint, got {sorted(given)}", sorted(given)[0])
    key = next(k for k in given if not (k == "response_format" and _is_text(body[k]) and len(given) == 2))
    value = body[key]
    if key == "response_format":
        spec = _response_format(value)
    elif key == "structured_outputs":
        if not isinstance(value, dict) or set(value) - set(STRUCTURED_KEYS):
            raise RequestError("invalid_parameter", f"structured_outputs={_short(value)} must be an object with one "
                               f"of {STRUCTURED_KEYS}", key)
        spec = StructuredOutputsParams(**{k: v for k, v in value.items() if k in STRUCTURED_KEYS})
    else:
        spec = StructuredOutputsParams(**{GUIDED_FIELDS[key]: value})
    if spec is None:
        return None
    errors = spec.validation_errors()
    if errors:
        raise RequestError("invalid_parameter", errors[0], key)
    return spec


def _is_text(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") == "text"
