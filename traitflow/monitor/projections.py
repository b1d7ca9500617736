"""Per-token projections of responses onto every trait's vector, computed during the forward pass."""

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TraitProbe:
    """Which vector of a trait to project on, and at which layers."""

    trait: str
    position: str
    component: str
    method: str
    layers: list[int]
    vectors: torch.Tensor  # [len(layers), hidden] unit vectors


def project_responses(loaded: Any, responses: dict, probes: list[TraitProbe], batch_size: int) -> dict:
    """Project every token of every response onto all traits at once (one forward pass per batch).

    Scores are h·v̂ at each trait's layers, with ‖h‖ alongside; no activations are stored.
    """
    from traitflow.model.hooks import project_tokens

    layers = sorted({layer for p in probes for layer in p.layers})
    hidden = probes[0].vectors.shape[-1]
    stacked = torch.zeros(len(probes), len(layers), hidden)
    for ti, probe in enumerate(probes):
        for li, layer in enumerate(probe.layers):
            stacked[ti, layers.index(layer)] = probe.vectors[li]
    items = responses["items"]
    sequences = [(it["prompt_ids"], it["response_ids"]) for it in items]
    projected = project_tokens(loaded, sequences, layers, stacked, batch_size=batch_size)
    tokenizer = loaded.tokenizer
    out_items = []
    for item, proj in zip(items, projected, strict=True):
        ids = item["prompt_ids"] + item["response_ids"]
        scores = {
            probe.trait: {str(layer): _round(proj.scores[ti, layers.index(layer)]) for layer in probe.layers}
            for ti, probe in enumerate(probes)
        }
        out_items.append({
            "id": item["id"],
            "prompt_len": len(item["prompt_ids"]),
            "tokens": tokenizer.convert_ids_to_tokens(ids),
            "token_ids": ids,
            "response": item["response"],
            "scores": scores,
            "norms": {str(layer): _round(proj.norms[li]) for li, layer in enumerate(layers)},
        })
    return {
        "prompt_set": responses["prompt_set"],
        "variant": responses["variant"],
        "layers": layers,
        "traits": {p.trait: {"position": p.position, "component": p.component, "method": p.method, "layers": p.layers}
                   for p in probes},
        "items": out_items,
    }


def _round(values: torch.Tensor) -> list[float]:
    return [round(float(v), 5) for v in values]


def response_means(projections: dict, trait: str, layer: int) -> list[float]:
    """Mean projection over each item's response tokens (the per-prompt summary used in reports)."""
    out = []
    for item in projections["items"]:
        values = item["scores"][trait][str(layer)][item["prompt_len"]:]
        out.append(sum(values) / len(values) if values else float("nan"))
    return out
