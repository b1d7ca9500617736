"""Stage 1 of extraction: generate the model's replies to a trait's positive and negative scenarios."""

from typing import Any

from traitflow.data.traits import TraitDataset


def generate_trait_responses(loaded: Any, trait: TraitDataset, max_new_tokens: int, batch_size: int) -> dict:
    """Greedy, batched replies to every scenario, keeping the exact generated token ids.

    Returns the JSON record stored as the `responses` artifact.
    """
    from traitflow.model.chat import prompt_ids
    from traitflow.model.generate import generate

    items = []
    for side in ("positive", "negative"):
        for index, scenario in enumerate(getattr(trait, side)):
            items.append({"side": side, "index": index, "prompt": scenario.prompt, "system_prompt": scenario.system_prompt})
    prompts = [prompt_ids(loaded, it["prompt"], it["system_prompt"]) for it in items]
    names = [f"trait {trait.name}, {it['side']} scenario {it['index']}" for it in items]
    generations = generate(loaded, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, names=names)
    for item, gen in zip(items, generations, strict=True):
        item.update(prompt_ids=gen.prompt_ids, response_ids=gen.response_ids, response=gen.text)
    return {
        "trait": trait.name,
        "variant": loaded.spec.name,
        "model": model_identity(loaded),
        "paired": trait.paired,
        "max_new_tokens": max_new_tokens,
        "chat_template": loaded.uses_chat_template,
        "items": items,
    }


def model_identity(loaded: Any) -> dict:
    spec = loaded.spec
    return {"source": loaded.source, "revision": loaded.revision, "lora": spec.lora, "dtype": str(loaded.dtype).replace("torch.", "")}
