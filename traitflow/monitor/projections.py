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


MODES = ("raw", "cosine", "normalized")


def project_responses(
    loaded: Any,
    responses: dict,
    probes: list[TraitProbe],
    batch_size: int,
    *,
    mode: str = "raw",
    mean_norms: dict[int, float] | None = None,
    centre: dict[str, dict[int, float]] | None = None,
    clean_dims: dict[int, list[int]] | None = None,
    response_only: bool = False,
) -> dict:
    """Project every token of every response onto all traits at once (one forward pass per batch).

    No activations are stored. Per token, trait and layer the score is computed in this order:

    1. cleaning (``clean_dims``, ``{layer: dims}``): the dims are zeroed in ``h`` before
       projecting, i.e. ``raw = h_c · v̂`` with ``h_c = h`` minus those dims and ``v̂`` the
       probe's original unit vector (not renormalised). Implemented by zeroing ``v̂`` there,
       which gives exactly the same number. ``‖h_c‖`` (used by ``cosine`` and reported under
       ``norms``) is ``sqrt(‖h‖² − Σ_d h_d²)``, with ``h_d`` projected exactly (on basis
       vectors); float32 cancellation makes it accurate to about ``1e-7·‖h‖²/‖h_c‖²`` relative.
    2. centring (``centre``, ``{trait: {layer: baseline}}``): ``raw − baseline``; the baseline is
       the vector's class-midpoint projection, in the same (cleaned or not) units as ``raw``.
    3. normalisation by ``mode``:
       ``raw`` → as is; ``cosine`` → divided by the token's ``‖h‖`` (``‖h_c‖`` when cleaned),
       so uncentred cosine lies in [-1, 1]; ``normalized`` → divided by ``mean_norms[layer]``
       (mean ‖h‖ on neutral prompts, from calibration; pass cleaned mean norms if you want them
       to match a cleaned ``h``).

    The record's ``mode``, ``centred`` (bool) and ``cleaned`` (``{str(layer): dims}`` actually
    applied, empty when none) say what was done. With the defaults the scores are ``h·v̂`` and
    ``norms`` ``‖h‖``, as before these options existed.

    ``response_only`` stores the response tokens only (the forward pass still sees the prompt, so
    the numbers equal the response part of a full projection): each item's ``tokens``,
    ``token_ids``, ``scores`` and ``norms`` start at the first response token, ``prompt_len`` is 0
    and ``prompt_tokens`` holds the prompt's length; the record says ``response_only: true``.
    Readers that slice ``[prompt_len:]`` get the response either way.
    """
    from traitflow.model.hooks import project_tokens

    if mode not in MODES:
        raise ValueError(f"unknown projection mode {mode!r}; expected one of {', '.join(MODES)}")
    layers = sorted({layer for p in probes for layer in p.layers})
    if mode == "normalized":
        missing = [layer for layer in layers if mean_norms is None or layer not in mean_norms]
        if missing:
            raise ValueError(f"mode 'normalized' needs mean_norms (from calibration) for layers {missing}")
        bad = [layer for layer in layers if not float(mean_norms[layer]) > 0]
        if bad:
            raise ValueError(f"mean_norms must be positive; layers {bad} are not")
    if centre is not None:
        for probe in probes:
            absent = [layer for layer in probe.layers if layer not in centre.get(probe.trait, {})]
            if absent:
                raise ValueError(f"centre has no baseline for trait {probe.trait!r} at layers {absent}")
    cleaned = {layer: sorted({int(d) for d in (clean_dims or {}).get(layer, ())}) for layer in layers}
    cleaned = {layer: dims for layer, dims in cleaned.items() if dims}
    hidden = probes[0].vectors.shape[-1]
    for layer, dims in cleaned.items():
        if dims[0] < 0 or dims[-1] >= hidden:
            raise ValueError(f"clean_dims at layer {layer} out of range 0-{hidden - 1}: {dims}")

    stacked = torch.zeros(len(probes), len(layers), hidden)
    for ti, probe in enumerate(probes):
        for li, layer in enumerate(probe.layers):
            stacked[ti, layers.index(layer)] = probe.vectors[li]
    # project_tokens renormalises each vector, so zero the dims of the *unit* vector and scale
    # the scores back by its remaining norm: score = h · v̂ with v̂'s cleaned entries zeroed.
    scale = torch.ones(len(probes), len(layers))
    basis_dims = sorted({d for dims in cleaned.values() for d in dims})
    if cleaned:
        unit = stacked / stacked.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        for layer, dims in cleaned.items():
            li = layers.index(layer)
            unit[:, li, dims] = 0
            scale[:, li] = unit[:, li].norm(dim=-1)
        stacked = unit
        # h_d on basis vectors, for ‖h_c‖ (reported under norms, used by cosine)
        basis = torch.zeros(len(basis_dims), len(layers), hidden)
        for bi, d in enumerate(basis_dims):
            basis[bi, :, d] = 1.0
        stacked = torch.cat([stacked, basis])
    items = responses["items"]
    sequences = [(it["prompt_ids"], it["response_ids"]) for it in items]
    projected = project_tokens(loaded, sequences, layers, stacked, batch_size=batch_size)
    tokenizer = loaded.tokenizer
    out_items = []
    n_probes = len(probes)
    for item, proj in zip(items, projected, strict=True):
        ids = item["prompt_ids"] + item["response_ids"]
        start = len(item["prompt_ids"]) if response_only else 0  # first stored token
        raw = proj.scores[:n_probes].double() * scale[:, :, None].double()  # [n_traits, n_layers, T]
        norms = proj.norms.double()  # [n_layers, T]
        if cleaned:
            norms = norms.clone()
            for layer, dims in cleaned.items():
                li = layers.index(layer)
                h_d = proj.scores[n_probes:][[basis_dims.index(d) for d in dims], li].double()  # [n_dims, T]
                norms[li] = (norms[li] ** 2 - (h_d**2).sum(0)).clamp_min(0).sqrt()
        scores = {}
        for ti, probe in enumerate(probes):
            per_layer = {}
            for layer in probe.layers:
                li = layers.index(layer)
                s = raw[ti, li]
                if centre is not None:
                    s = s - float(centre[probe.trait][layer])
                if mode == "cosine":
                    s = s / norms[li].clamp_min(1e-12)
                elif mode == "normalized":
                    s = s / float(mean_norms[layer])
                per_layer[str(layer)] = _round(s[start:])
            scores[probe.trait] = per_layer
        out_item = {
            "id": item["id"],
            "prompt_len": len(item["prompt_ids"]) - start,
            "tokens": tokenizer.convert_ids_to_tokens(ids[start:]),
            "token_ids": ids[start:],
            "response": item["response"],
            "scores": scores,
            "norms": {str(layer): _round(norms[li, start:]) for li, layer in enumerate(layers)},
        }
        if response_only:
            out_item["prompt_tokens"] = start
        out_items.append(out_item)
    return {
        "prompt_set": responses["prompt_set"],
        "variant": responses["variant"],
        "layers": layers,
        "traits": {p.trait: {"position": p.position, "component": p.component, "method": p.method, "layers": p.layers}
                   for p in probes},
        "mode": mode,
        "centred": centre is not None,
        "cleaned": {str(layer): dims for layer, dims in cleaned.items()},
        "response_only": response_only,
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
