"""Stage 2 of extraction: pooled activations of prompt + generated ids, for all layers at once."""

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ActivationSet:
    """Pooled activations of one trait × variant: `acts[position]` is `[n, len(layers), hidden]`."""

    acts: dict[str, torch.Tensor]
    labels: torch.Tensor  # [n] 1 = positive scenario, 0 = negative
    groups: torch.Tensor  # [n] pair index for paired data (keeps pairs on one side of the split), else unique
    layers: list[int]
    component: str
    metadata: dict

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"acts/{pos}": value for pos, value in self.acts.items()}
        tensors["labels"], tensors["groups"] = self.labels, self.groups
        meta = dict(self.metadata, layers=self.layers, component=self.component, positions=list(self.acts))
        return tensors, meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "ActivationSet":
        acts = {pos: tensors[f"acts/{pos}"] for pos in meta["positions"]}
        return cls(acts, tensors["labels"], tensors["groups"], list(meta["layers"]), meta["component"], meta)


def capture_trait_activations(
    loaded: Any, responses: dict, layers: list[int], positions: list[str] | dict[str, str], component: str, batch_size: int
) -> ActivationSet:
    """Pooled activations of every response. `positions` maps each key (the position as written in
    the spec) to the window actually pooled; a plain list pools each position as written."""
    from traitflow.extract.positions import parse_position
    from traitflow.model.hooks import capture_pooled

    # An item whose window is empty at some position (e.g. an immediate end-of-sequence reply
    # under `response[:5]`) has nothing to pool; it is left out and counted.
    windows = dict(positions) if isinstance(positions, dict) else {p: p for p in positions}
    parsed = [parse_position(w) for w in windows.values()]
    items, dropped = [], 0
    for it in responses["items"]:
        plen, rlen = len(it["prompt_ids"]), len(it["response_ids"])
        if all(start < stop for start, stop in (p.window(plen, rlen) for p in parsed)):
            items.append(it)
        else:
            dropped += 1
    sequences = [(it["prompt_ids"], it["response_ids"]) for it in items]
    pooled = capture_pooled(loaded, sequences, layers, list(dict.fromkeys(windows.values())), component=component, batch_size=batch_size)
    acts = {key: pooled[window] for key, window in windows.items()}
    labels = torch.tensor([1 if it["side"] == "positive" else 0 for it in items], dtype=torch.int64)
    if responses.get("paired"):
        groups = torch.tensor([it["index"] for it in items], dtype=torch.int64)
    else:
        groups = torch.arange(len(items), dtype=torch.int64)
    meta = {"trait": responses["trait"], "variant": responses["variant"], "model": responses["model"], "dropped_empty": dropped,
            "windows": windows, "paired": bool(responses.get("paired"))}
    return ActivationSet(acts, labels, groups, list(layers), component, meta)
