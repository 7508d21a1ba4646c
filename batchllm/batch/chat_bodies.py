"""The chat fields of a batch body: how its conversation becomes a prompt (``batchllm.chat`` has the rules).

``add_generation_prompt`` (default true), ``continue_final_message`` (default false) and
``chat_template_kwargs`` (an object of template variables) are vLLM's extensions of the OpenAI chat body;
null means the default, as for OpenAI's nullable fields. They apply to chat requests only: a completion
prompt is not templated, so there they are an error rather than silently ignored.
"""

from __future__ import annotations

from typing import Optional, Sequence

from batchllm.chat import ChatInputError, ChatOptions

CHAT_FIELDS = frozenset({"add_generation_prompt", "continue_final_message", "chat_template_kwargs"})


def chat_options_from_body(body: dict, kind: str, messages: Optional[Sequence[dict]]) -> Optional[ChatOptions]:
    """The ChatOptions of a chat body (checked against its normalised ``messages``); None for a completion.

    Raises ChatInputError naming the field (``code`` "unsupported_parameter" for a chat field on a
    completion, else the check's code).
    """
    given = sorted(key for key in CHAT_FIELDS if body.get(key) is not None)
    if kind != "chat":
        if given:
            raise ChatInputError(f"{given[0]} applies to chat requests (/v1/chat/completions with 'messages') only; "
                                 "a completion prompt is used as it is: drop the field", given[0],
                                 "unsupported_parameter")
        return None
    defaults = ChatOptions()
    options = ChatOptions(
        add_generation_prompt=_or_default(body.get("add_generation_prompt"), defaults.add_generation_prompt),
        continue_final_message=_or_default(body.get("continue_final_message"), defaults.continue_final_message),
        chat_template_kwargs=body.get("chat_template_kwargs"),
    )
    options.check(messages or [])
    return options


def _or_default(value, default):
    return default if value is None else value
