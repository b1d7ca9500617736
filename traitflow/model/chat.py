"""Turn a prompt (and optional system prompt) into the token ids a model is given.

With a chat template: ``[system, user]`` messages and ``add_generation_prompt=True``; when the
template rejects a system role (Gemma raises) or silently drops it, the system prompt is
folded into the user message (``system + "\\n\\n" + prompt``). Without a chat template (base
models): plain text ``system_prompt + "\\n\\n" + prompt`` tokenised with the tokenizer's usual
special tokens (e.g. BOS).

Every render passes :func:`template_kwargs` of the variant's spec to
``tokenizer.apply_chat_template``: the spec's ``chat_template_kwargs``, with ``enable_thinking``
defaulting to False. A template with a thinking switch (Qwen3 style) thus renders with thinking
off (its empty ``<think></think>`` block after the generation prompt) unless the spec sets
``chat_template_kwargs: {enable_thinking: true}``; a template that never reads the keyword is
unaffected (Jinja ignores unused variables).

The ids returned here are the ids used everywhere downstream: nothing re-tokenises decoded text.

Example:
    >>> ids = prompt_ids(loaded, "How are you?", system_prompt="Be cheerful.")
"""

from typing import Any

from traitflow.errors import TraitflowError

__all__ = ["conversation_ids", "format_prompt", "prompt_ids", "template_kwargs"]

# apply_chat_template arguments this module sets itself; a spec may not override them.
_RESERVED = frozenset({"conversation", "tokenize", "add_generation_prompt"})


def template_kwargs(spec: Any) -> dict[str, Any]:
    """Keywords for ``apply_chat_template``: ``enable_thinking=False`` unless the spec's
    ``chat_template_kwargs`` says otherwise, plus every other keyword it gives.

    Raises:
        TraitflowError when the spec names an argument this module sets itself.
    """
    given = dict(getattr(spec, "chat_template_kwargs", None) or {})
    clash = sorted(_RESERVED & set(given))
    if clash:
        name = getattr(spec, "name", "") or getattr(spec, "model", "?")
        raise TraitflowError(f"model {name!r}: chat_template_kwargs may not set {', '.join(clash)}")
    return {"enable_thinking": False, **given}


def _fold(prompt: str, system_prompt: str | None) -> str:
    return f"{system_prompt}\n\n{prompt}" if system_prompt else prompt


def format_prompt(loaded: Any, prompt: str, system_prompt: str | None = None) -> tuple[str, bool]:
    """The prompt as text, and whether it is a rendered chat template (no extra special tokens)."""
    tokenizer = loaded.tokenizer
    if not loaded.uses_chat_template:
        return _fold(prompt, system_prompt), False
    extra = template_kwargs(loaded.spec)
    if system_prompt:
        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
        except Exception:  # noqa: BLE001 - jinja TemplateError from raise_exception, or a template bug
            text = None
        if isinstance(text, str) and system_prompt.strip() in text:
            return text, True
    user = [{"role": "user", "content": _fold(prompt, system_prompt)}]
    return tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True, **extra), True


def prompt_ids(loaded: Any, prompt: str, system_prompt: str | None = None) -> list[int]:
    """Token ids of the prompt as the model sees it before its response."""
    text, templated = format_prompt(loaded, prompt, system_prompt)
    # A rendered template already contains its special tokens (BOS etc.).
    encoded = loaded.tokenizer(text, add_special_tokens=not templated)
    return [int(i) for i in encoded["input_ids"]]


def conversation_ids(loaded: Any, messages: list[dict[str, str]], system_prompt: str | None = None) -> list[int]:
    """Token ids of a multi-turn conversation (``[{"role": "user"|"assistant", "content"}, …]``,
    ending with the user's turn) as the model sees it before its next reply. One user message is
    exactly :func:`prompt_ids`; earlier turns go through the chat template, or, for a model without
    one, are joined as plain text (each turn on its own paragraph, after the system prompt)."""
    turns = [m for m in messages if m.get("role") in ("user", "assistant")]
    if not turns or turns[-1]["role"] != "user" or len(turns) != len(messages):
        raise TraitflowError("a conversation is user and assistant turns that end with the user's")
    if len(turns) == 1:
        return prompt_ids(loaded, turns[0]["content"], system_prompt)
    if not loaded.uses_chat_template:
        text = _fold("\n\n".join(t["content"] for t in turns), system_prompt)
        return [int(i) for i in loaded.tokenizer(text)["input_ids"]]
    extra = template_kwargs(loaded.spec)
    first = _fold(turns[0]["content"], system_prompt)  # systems are folded, as a template may reject the role
    chat = [{"role": "user", "content": first}, *({"role": t["role"], "content": t["content"]} for t in turns[1:])]
    text = loaded.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, **extra)
    return [int(i) for i in loaded.tokenizer(text, add_special_tokens=False)["input_ids"]]
