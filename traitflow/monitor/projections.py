"""Per-token projections of responses onto every trait's vector, computed during the forward pass,
or from saved per-token activations (`inference.save_activations`) without the model."""

from dataclasses import dataclass, field
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
FLOAT16_MAX = 65504.0  # the largest finite float16


@dataclass
class SavedActivations:
    """Every token's residual activation of a prompt set's responses (the `inference_activations` artifact).

    ``acts[layer]`` is ``[total tokens, hidden]`` float16: item ``i``'s prompt + response tokens are the
    rows ``offsets[i]:offsets[i + 1]``, in the order of the responses' items. A reader may hold a
    subset of the saved layers (``acts`` then has only those); ``layers`` lists every saved layer.
    ``metadata`` names what they are (see :func:`capture_activations`)."""

    layers: list[int]
    acts: dict[int, torch.Tensor]
    offsets: torch.Tensor  # [n_items + 1] int64
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"layer/{layer}": self.acts[layer] for layer in self.layers}
        tensors["offsets"] = self.offsets
        return tensors, dict(self.metadata, layers=self.layers)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "SavedActivations":
        layers = [int(layer) for layer in meta["layers"]]
        acts = {layer: tensors[f"layer/{layer}"] for layer in layers if f"layer/{layer}" in tensors}
        return cls(layers, acts, tensors["offsets"], meta)


def sequence_tokens(item: dict) -> list[int]:
    return list(item["prompt_ids"]) + list(item["response_ids"])


def capture_activations(loaded: Any, responses: dict, layers: list[int], batch_size: int) -> SavedActivations:
    """Every token's residual activation (output of decoder block L) at ``layers``, float16 on CPU.

    The batches are :func:`~traitflow.model.hooks.project_tokens`' (sorted by length, left padded,
    ``batch_size`` per forward pass), so the activations are the very ones a projection with the
    model sees, rounded to float16. Memory: the artifact itself (tokens × layers × hidden × 2 bytes)
    plus one batch. A layer whose activations leave float16's range is an error naming it.
    """
    from traitflow.errors import TraitflowError
    from traitflow.extract.responses import model_identity
    from traitflow.model.arch import component_module
    from traitflow.model.hooks import StopForward, add_hooks, left_pad_batch, model_lock, output_tensor, run_forward

    layers = sorted({int(layer) for layer in layers})
    bad = [layer for layer in layers if not 0 <= layer < loaded.n_layers]
    if bad or not layers:
        raise TraitflowError(f"layers {bad or layers} are out of range: valid layers are 0-{loaded.n_layers - 1}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    items = responses["items"]
    sequences = [sequence_tokens(item) for item in items]
    empty = [item["id"] for item, seq in zip(items, sequences, strict=True) if not seq]
    if empty:
        raise TraitflowError(f"items {empty} have no tokens: nothing to save")
    lengths = [len(seq) for seq in sequences]
    offsets = torch.zeros(len(items) + 1, dtype=torch.long)
    if items:
        offsets[1:] = torch.as_tensor(lengths, dtype=torch.long).cumsum(0)
    total = int(offsets[-1])
    hidden = loaded.hidden_size
    acts = {layer: torch.empty((total, hidden), dtype=torch.float16) for layer in layers}
    peak = dict.fromkeys(layers, 0.0)
    state: dict[str, Any] = {}

    def make_hook(layer: int) -> Any:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            h = output_tensor(output)  # [B, T, H]
            peak[layer] = max(peak[layer], float(h.abs().amax()))
            h16 = h.to(torch.float16).cpu()
            for b, i in enumerate(state["chunk"]):
                acts[layer][offsets[i] : offsets[i + 1]] = h16[b, state["pads"][b]:]
            if layer == layers[-1]:
                raise StopForward

        return hook

    hooks = [(component_module(loaded.model, layer, "residual"), make_hook(layer)) for layer in layers]
    order = sorted(range(len(items)), key=lambda i: lengths[i])  # project_tokens' batches
    with model_lock(loaded.model), torch.inference_mode(), add_hooks(hooks):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = left_pad_batch([sequences[i] for i in chunk], loaded.pad_token_id, loaded.device)
            state["chunk"], state["pads"] = chunk, batch.pads
            run_forward(loaded, batch)
    state.clear()
    over = {layer: value for layer, value in peak.items() if not value <= FLOAT16_MAX}
    if over:
        raise TraitflowError(f"activations at layers {sorted(over)} reach |h| = {max(over.values()):.4g}, beyond float16's "
                             f"range ({FLOAT16_MAX:g}); leave those layers out of inference.save_layers")
    tokenizer = loaded.tokenizer
    metadata = {
        "prompt_set": responses["prompt_set"],
        "variant": responses["variant"],
        "model": model_identity(loaded),
        "n_layers": loaded.n_layers,
        "hidden_size": hidden,
        "layer_numbering": "layer L = residual stream after decoder block L (0-based)",
        "component": "residual",
        "dtype": "float16",
        "ids": [item["id"] for item in items],
        "n_tokens": lengths,
        "tokens": [tokenizer.convert_ids_to_tokens(seq) for seq in sequences],
    }
    return SavedActivations(layers, acts, offsets, metadata)


def project_saved(saved: SavedActivations, layers: list[int], vectors: torch.Tensor, prompt_lens: list[int],
                  chunk_tokens: int = 65536) -> list[Any]:
    """:func:`~traitflow.model.hooks.project_tokens` on saved activations: the same
    ``TokenProjection`` per item (``h·v̂`` per vector and ``‖h‖``, in float32), no model.
    ``vectors`` is ``[n_vectors, len(layers), hidden]``; each is normalised here. Works through
    ``chunk_tokens`` tokens of a layer at a time."""
    from traitflow.model.hooks import TokenProjection

    missing = [layer for layer in layers if layer not in saved.acts]
    if missing:
        raise ValueError(f"the saved activations hold no layers {missing} (they have {sorted(saved.acts)})")
    hidden = saved.acts[layers[0]].shape[-1] if layers else 0
    vectors = torch.as_tensor(vectors)
    if vectors.ndim != 3 or vectors.shape[1] != len(layers) or vectors.shape[2] != hidden:
        raise ValueError(f"vectors must be [n_traits, {len(layers)}, {hidden}], got {tuple(vectors.shape)}")
    unit = vectors.float()
    unit = unit / unit.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    total = int(saved.offsets[-1])
    scores = torch.empty((unit.shape[0], len(layers), total))
    norms = torch.empty((len(layers), total))
    for j, layer in enumerate(layers):
        for start in range(0, total, chunk_tokens):
            h = saved.acts[layer][start : start + chunk_tokens].float()  # [chunk, H]
            scores[:, j, start : start + len(h)] = unit[:, j] @ h.T
            norms[j, start : start + len(h)] = h.norm(dim=-1)
    out = []
    for i, prompt_len in enumerate(prompt_lens):
        a, b = int(saved.offsets[i]), int(saved.offsets[i + 1])
        out.append(TokenProjection(scores=scores[:, :, a:b].clone(), norms=norms[:, a:b].clone(), prompt_len=prompt_len))
    return out


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
    activations: SavedActivations | None = None,
) -> dict:
    """Project every token of every response onto all traits at once (one forward pass per batch).

    No activations are stored. With ``activations`` (the responses' saved activations, holding
    every layer the probes need) nothing runs on the model: ``loaded`` may be None, the tokens'
    strings come from the saved metadata, and the numbers equal the model's to float16 precision
    (``|Δ score| ≲ 1e-3·‖h‖``). Per token, trait and layer the score is computed in this order:

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
    if activations is None:
        sequences = [(it["prompt_ids"], it["response_ids"]) for it in items]
        projected = project_tokens(loaded, sequences, layers, stacked, batch_size=batch_size)
        token_strings = [loaded.tokenizer.convert_ids_to_tokens(sequence_tokens(it)) for it in items]
    else:
        lengths = (activations.offsets[1:] - activations.offsets[:-1]).tolist()
        if activations.metadata.get("ids") != [it["id"] for it in items] or lengths != [len(sequence_tokens(it)) for it in items]:
            raise ValueError("the saved activations were made from other responses (ids or token counts differ)")
        projected = project_saved(activations, layers, stacked, [len(it["prompt_ids"]) for it in items])
        token_strings = activations.metadata["tokens"]
    out_items = []
    n_probes = len(probes)
    for item, proj, strings in zip(items, projected, token_strings, strict=True):
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
            "tokens": list(strings[start:]),
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
