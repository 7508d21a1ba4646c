"""Chat conversations -> prompt text, the same way for ``LLM.chat`` and the batch job.

What people write (vLLM's and OpenAI's names):

- ``content`` as a string, null (an empty string: an assistant turn that only called tools), or a list of
  parts ``[{"type": "text", "text": ...}, ...]``. Text parts are joined with "\\n", as vLLM does for
  text-only content; a part of any other type (image_url, input_audio, file, ...) is refused, naming the
  message and the part: the models we run are text-only.
- ``add_generation_prompt`` (default True): end the prompt with the header of a new assistant turn.
- ``continue_final_message`` (default False): end the prompt inside the last message, which must be the
  assistant's, with no end-of-turn token, so that the model continues its text (a "prefill" of the answer).
  It needs ``add_generation_prompt=False`` (the two ask for different endings), as in vLLM.
- ``chat_template_kwargs``: extra variables for the template, e.g. Qwen3's ``enable_thinking``; a variable
  the template does not use is ignored (Jinja), one that names an argument of ``apply_chat_template``
  itself is refused (it would change what the call returns, not what the template sees).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

TEXT_PART = "text"
# Arguments of transformers' apply_chat_template that are not template variables, and the ones set by the
# options above: passed in chat_template_kwargs they would clash with ours or change the call's result.
RESERVED_TEMPLATE_KWARGS = frozenset({
    "conversation", "messages", "tokenize", "return_dict", "return_tensors", "padding", "truncation",
    "max_length", "return_assistant_tokens_mask", "tokenizer_kwargs", "chat_template", "add_generation_prompt",
    "continue_final_message",
})


class ChatInputError(ValueError):
    """A conversation or chat option that cannot be rendered. ``param`` is the field, ``code`` the kind of
    problem (the batch job's error codes: ``invalid_request`` for a malformed message, ``invalid_parameter``
    for an option's value)."""

    def __init__(self, message: str, param: str, code: str = "invalid_parameter") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True)
class ChatOptions:
    """How a conversation becomes a prompt (see the module docstring)."""

    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: Optional[Mapping[str, Any]] = None

    def check(self, messages: Sequence[dict]) -> None:
        """ChatInputError naming the field when these options cannot apply to ``messages``."""
        for name in ("add_generation_prompt", "continue_final_message"):
            if not isinstance(getattr(self, name), bool):
                raise ChatInputError(f"{name}: {getattr(self, name)!r} must be true or false", name)
        kwargs = self.chat_template_kwargs
        if kwargs is not None:
            if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
                raise ChatInputError("chat_template_kwargs: must be an object of template variables (string keys), "
                                     f"got {type(kwargs).__name__}", "chat_template_kwargs")
            reserved = sorted(RESERVED_TEMPLATE_KWARGS.intersection(kwargs))
            if reserved:
                raise ChatInputError(
                    f"chat_template_kwargs: {reserved} are not template variables but arguments of the template "
                    "call; give add_generation_prompt / continue_final_message as fields of their own and leave the "
                    "others out", "chat_template_kwargs")
        if self.continue_final_message:
            if self.add_generation_prompt:
                raise ChatInputError(
                    "continue_final_message: cannot be combined with add_generation_prompt (which is true by "
                    "default); set add_generation_prompt to false", "continue_final_message")
            role = messages[-1].get("role") if messages else None
            if role != "assistant":
                raise ChatInputError(
                    f"continue_final_message: the last message must be the assistant's text to continue, but its "
                    f"role is {role!r}; end the conversation with an assistant message or drop "
                    "continue_final_message", "continue_final_message")

    def template_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``tokenizer.apply_chat_template`` beside the conversation."""
        return {**(self.chat_template_kwargs or {}), "add_generation_prompt": self.add_generation_prompt,
                "continue_final_message": self.continue_final_message}


def message_text(content: Any, index: int) -> str:
    """A message's content as one string: text parts joined with "\\n" (vLLM's rule), null as ""."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise ChatInputError(f"messages[{index}].content must be a string or a list of parts, got "
                             f"{type(content).__name__}", "messages")
    texts = []
    for j, part in enumerate(content):
        where = f"messages[{index}].content[{j}]"
        if not isinstance(part, dict):
            raise ChatInputError(f"{where}: a part must be an object like {{\"type\": \"text\", \"text\": ...}}, got "
                                 f"{type(part).__name__}", "messages", "invalid_request")
        kind = part.get("type")
        if kind != TEXT_PART:
            raise ChatInputError(f"{where}: parts of type {kind!r} are not supported (text-only models); send "
                                 "text parts only", "messages", "invalid_request")
        if not isinstance(part.get("text"), str):
            raise ChatInputError(f"{where}.text must be a string", "messages", "invalid_request")
        texts.append(part["text"])
    return "\n".join(texts)


def normalize_messages(messages: Sequence[dict]) -> list[dict]:
    """Copy the conversation with every content as a string (``message_text``); other keys are kept."""
    return [{**message, "content": message_text(message.get("content"), i)} for i, message in enumerate(messages)]


def render_chat(tokenizer, messages: Sequence[dict], options: ChatOptions, chat_template: Optional[str] = None) -> str:
    """The prompt text of a normalised, checked conversation. Template errors propagate as they are (their
    types vary); callers report them as the conversation's."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, chat_template=chat_template,
                                         **options.template_kwargs())
