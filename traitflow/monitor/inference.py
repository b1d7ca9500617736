"""Responses to a prompt set, kept as exact token ids for per-token monitoring."""

from typing import Any

from traitflow.data.prompts import PromptSet
from traitflow.extract.responses import model_identity


def generate_inference_responses(loaded: Any, prompt_set: PromptSet, max_new_tokens: int, batch_size: int) -> dict:
    from traitflow.model.chat import prompt_ids
    from traitflow.model.generate import generate

    prompts = [prompt_ids(loaded, p.text, p.system_prompt) for p in prompt_set.prompts]
    generations = generate(loaded, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    items = [
        {"id": p.id, "prompt": p.text, "system_prompt": p.system_prompt, "prompt_ids": g.prompt_ids,
         "response_ids": g.response_ids, "response": g.text}
        for p, g in zip(prompt_set.prompts, generations, strict=True)
    ]
    return {"prompt_set": prompt_set.name, "variant": loaded.spec.name, "model": model_identity(loaded),
            "max_new_tokens": max_new_tokens, "items": items}
