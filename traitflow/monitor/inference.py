"""Responses to a prompt set, kept as exact token ids for per-token monitoring: generated, imported
from a file, or replayed from another variant."""

from pathlib import Path
from typing import Any

from traitflow.data.prompts import PromptSet
from traitflow.errors import SpecError
from traitflow.extract.responses import model_identity


def generate_inference_responses(loaded: Any, prompt_set: PromptSet, max_new_tokens: int, batch_size: int,
                                 sample: Any = None) -> dict:
    from traitflow.model.chat import prompt_ids
    from traitflow.model.generate import generate

    prompts = [prompt_ids(loaded, p.text, p.system_prompt) for p in prompt_set.prompts]
    sampling = {} if sample is None else {"do_sample": True, "seed": sample.seed, "temperature": sample.temperature,
                                          "top_p": sample.top_p}
    names = [f"prompt set {prompt_set.name}, prompt {p.id!r}" for p in prompt_set.prompts]
    generations = generate(loaded, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, names=names, **sampling)
    items = [
        {"id": p.id, "prompt": p.text, "system_prompt": p.system_prompt, "prompt_ids": g.prompt_ids,
         "response_ids": g.response_ids, "response": g.text}
        for p, g in zip(prompt_set.prompts, generations, strict=True)
    ]
    return {"prompt_set": prompt_set.name, "variant": loaded.spec.name, "model": model_identity(loaded),
            "mode": "sampled" if sample is not None else "greedy", "max_new_tokens": max_new_tokens, "items": items}


def replay_responses(loaded: Any, source: dict) -> dict:
    """Another variant's exact token ids, to be read by this variant (prefill only, nothing generated)."""
    items = [dict(item) for item in source["items"]]
    return {"prompt_set": source["prompt_set"], "variant": loaded.spec.name, "model": model_identity(loaded),
            "mode": "replay", "replayed_from": source["variant"], "items": items}


def import_responses(loaded: Any, prompt_set: PromptSet, path: Path, root: Path | None = None) -> dict:
    """Externally produced responses: `[{"id", "response", "response_ids"?}]` or `{"items": [...]}`, matched to
    the prompt set by id. Token ids are used when the file has them; otherwise the text is tokenised once
    (recorded as `tokenized_from_text`)."""
    from traitflow.data.files import parse_json, read_text
    from traitflow.model.chat import prompt_ids

    data = parse_json(read_text(path, root if root is not None else path.parent), path)  # inside the project root
    rows = data.get("items", data.get("responses")) if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise SpecError(path, "expected a list of {id, response} or {\"items\": [...]}")
    by_id = {}
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("response"), str):
            raise SpecError(path, f"item {index}: expected {{\"id\", \"response\"}}", field=f"items[{index}]")
        by_id[str(row["id"])] = row
    items, tokenized = [], False
    for prompt in prompt_set.prompts:
        row = by_id.get(prompt.id)
        if row is None:
            raise SpecError(path, f"no response for prompt id {prompt.id!r} of {prompt_set.name}", field="id")
        ids = row.get("response_ids")
        if ids is None:
            ids = loaded.tokenizer.encode(row["response"], add_special_tokens=False)
            tokenized = True
        items.append({"id": prompt.id, "prompt": prompt.text, "system_prompt": prompt.system_prompt,
                      "prompt_ids": prompt_ids(loaded, prompt.text, prompt.system_prompt), "response_ids": list(ids),
                      "response": row["response"]})
    return {"prompt_set": prompt_set.name, "variant": loaded.spec.name, "model": model_identity(loaded), "mode": "import",
            "imported_from": str(path), "tokenized_from_text": tokenized, "items": items}
