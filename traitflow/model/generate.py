"""Batched generation from token ids, returning the generated token ids.

Prompts are grouped by length, left-padded and generated in batches; results come back in input
order and are the same as generating each prompt alone (greedy). A response is cut at its first
end-of-sequence token (which is excluded).

Example:
    >>> gens = generate(loaded, [prompt_ids(loaded, "Hi")], max_new_tokens=16)
    >>> gens[0].response_ids, gens[0].text
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from traitflow.errors import TraitflowError
from traitflow.model.hooks import left_pad_batch, model_lock

__all__ = ["Generation", "check_context", "context_length", "generate"]


@dataclass
class Generation:
    """One generated response: the ids given, the ids produced (eos cut off) and their text."""

    prompt_ids: list[int]
    response_ids: list[int]
    text: str


def _cut(ids: list[int], eos: set[int]) -> list[int]:
    for k, token in enumerate(ids):
        if token in eos:
            return ids[:k]
    return ids


def context_length(loaded: Any) -> int | None:
    """The model's context in tokens: ``config.max_position_embeddings`` (of the text config for
    multimodal models), else the tokenizer's ``model_max_length``; None when neither is set."""
    config = getattr(loaded.model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for cfg in (text, config):
        value = getattr(cfg, "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(loaded.tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and value > 0 else None


def check_context(loaded: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                  names: Sequence[str] | None = None) -> None:
    """A one-line TraitflowError naming the first prompt whose tokens plus ``max_new_tokens`` do not fit
    the model's context (:func:`context_length`): called before generating, instead of a crash in torch.

    ``names`` says what each prompt is (e.g. ``trait t, positive scenario 3``); default ``prompt <i>``.
    """
    limit = context_length(loaded)
    if limit is None:
        return
    for i, ids in enumerate(prompts):
        if len(ids) + max_new_tokens > limit:
            name = names[i] if names is not None else f"prompt {i}"
            raise TraitflowError(f"{name}: {len(ids)} prompt tokens + max_new_tokens {max_new_tokens} exceed the context of "
                                 f"model {loaded.spec.name} ({limit} tokens); shorten the prompt or lower max_new_tokens")


def generate(
    loaded: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int = 16,
    do_sample: bool = False,
    seed: int = 0,
    temperature: float | None = None,
    top_p: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    names: Sequence[str] | None = None,
) -> list[Generation]:
    """Generate a response for each prompt (token ids).

    Args:
        loaded: a LoadedModel.
        prompts: prompt token ids, e.g. from :func:`traitflow.model.chat.prompt_ids`.
        max_new_tokens: upper bound on response length.
        batch_size: prompts per ``model.generate`` call.
        do_sample: sample instead of greedy decoding (then ``temperature``/``top_p`` apply,
            defaulting to the model's generation config). Sampling is reproducible for a given
            ``seed`` and batch layout; the global RNG state is left untouched.
        seed: random seed for sampling.
        progress: called as ``progress(done, total)`` after each batch.
        names: what each prompt is, for the error when one does not fit the model's context
            (:func:`check_context`, run before anything is generated).

    Returns:
        One :class:`Generation` per prompt, in input order.
    """
    import torch
    from transformers import GenerationConfig

    n = len(prompts)
    if n == 0:
        return []
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} has no tokens")
    check_context(loaded, prompts, max_new_tokens, names)

    tokenizer = loaded.tokenizer
    eos_ids = loaded.eos_token_ids
    eos = set(eos_ids)
    pad_id = loaded.pad_token_id
    base_config = getattr(loaded.model, "generation_config", None)
    config_kwargs: dict[str, Any] = {
        "max_new_tokens": int(max_new_tokens),
        "do_sample": bool(do_sample),
        "pad_token_id": pad_id,
        "eos_token_id": eos_ids or None,
        "use_cache": True,
        "num_beams": 1,
    }
    if do_sample:
        config_kwargs["temperature"] = temperature if temperature is not None else getattr(base_config, "temperature", 1.0) or 1.0
        config_kwargs["top_p"] = top_p if top_p is not None else getattr(base_config, "top_p", 1.0) or 1.0
        config_kwargs["top_k"] = getattr(base_config, "top_k", None)
    else:
        config_kwargs.update(temperature=None, top_p=None, top_k=None)
    gen_config = GenerationConfig(**config_kwargs)

    order = sorted(range(n), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * n
    devices = [loaded.device.index or 0] if loaded.device.type == "cuda" else []
    done = 0
    with model_lock(loaded.model), torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(seed)
        for start in range(0, n, batch_size):
            chunk = order[start : start + batch_size]
            batch = left_pad_batch([list(prompts[i]) for i in chunk], pad_id, loaded.device)
            out = loaded.model.generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                generation_config=gen_config,
            )
            new = out[:, batch.input_ids.shape[1] :].tolist()
            for b, i in enumerate(chunk):
                response = _cut([int(t) for t in new[b]], eos)
                results[i] = Generation(
                    prompt_ids=[int(t) for t in prompts[i]],
                    response_ids=response,
                    text=tokenizer.decode(response, skip_special_tokens=True),
                )
            done += len(chunk)
            if progress is not None:
                progress(done, n)
    return results  # type: ignore[return-value]
