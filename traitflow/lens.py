"""Logit lens of trait vectors: which tokens a direction promotes and suppresses.

For each layer's vector ``v`` the lens reads the direction out through the model's own final
norm and unembedding, the way the residual stream at the last layer is read::

    logits(v) = unembed(final_norm(s · v)) − unembed(final_norm(0))

How the final norm is applied to a direction (and why):

- The norm module itself is applied — no per-architecture formulas — to ``s · v``, where ``s``
  is the scale of real activations at that layer (``scale``; the asset passes the layer's mean
  activation norm from the VectorSet, the default ``sqrt(hidden)`` gives the direction an RMS
  of 1). RMSNorm and LayerNorm are scale-invariant up to their epsilon, so ``s`` only keeps the
  epsilon as negligible as it is on real activations; what matters is that the norm's
  per-dimension gain (``weight``, or Gemma's ``1 + weight``) and LayerNorm's mean-centring are
  applied exactly as the model applies them. Reading a bare ``v`` through ``unembed`` without
  the gain would rank tokens by a geometry the model never uses.
- ``unembed(final_norm(0))`` is subtracted: it is what a *zero* direction produces — LayerNorm's
  bias (GPT-2, GPT-NeoX) and any ``lm_head`` bias pushed through the unembedding — a token prior
  that is the same for every direction. Without it the lens of every vector would show the same
  prior-heavy tokens. With it the lens is odd: ``logits(−v) == −logits(v)``, so the top tokens
  of ``v`` are the bottom tokens of ``−v``. For RMSNorm models the baseline is 0.
- A final logit soft-cap (``config.final_logit_softcapping``, Gemma 2/3) lives in the model's
  forward, not in a module, so it is applied here to the lens logits: ``cap · tanh(x / cap)``.
  It is monotone and odd, so it changes the reported values into the model's logit range and
  never the ranking or the antisymmetry.

``filter_common`` leaves out tokens that rank near the top or bottom for almost any direction
(tokens with large unembedding norms, under-trained tokens): the lens is computed for
``COMMON_DIRECTIONS`` seeded random unit directions (Gaussian, ``torch.Generator`` seed
``COMMON_SEED``, so the result is deterministic), and a token is *common* when it is among the
``top_k`` or the bottom ``top_k`` of more than ``common_threshold`` (default 0.5) of them.
Random directions are read with the mean of the scales passed (scale matters only through the
epsilon). Special tokens (``tokenizer.all_special_ids``, added tokens marked special) and
unembedding rows beyond the tokenizer's vocabulary (padding rows) are always left out.

Token strings: :class:`LensRow` stores ``tokenizer.decode([id])`` — the readable text of the
token, e.g. ``" great"`` with its leading space, rather than the raw vocabulary entry
``"Ġgreat"`` (``convert_ids_to_tokens``) — plus the token ids, which are unambiguous. Use
:func:`token_strings` to get both forms.

Example (the toy chat model's optimism vector at ``prompt[-1]``, last layer):
    >>> key = ("prompt[-1]", "residual", "mean_diff")
    >>> rows = logit_lens(loaded, vectors.vectors[key], vectors.layers, scale=vectors.norms[key[:2]])
    >>> rows[-1].top[0], rows[-1].bottom[0]
    (('Great', 9.5), ('Sadly', -6.9))
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "COMMON_DIRECTIONS",
    "COMMON_SEED",
    "LensRow",
    "common_token_ids",
    "lens_logits",
    "lens_record",
    "logit_lens",
    "token_strings",
]

COMMON_DIRECTIONS = 128
COMMON_SEED = 0
_CHUNK = 32  # directions per unembedding call (vocab × chunk floats at a time)


@dataclass
class LensRow:
    """The lens of one layer's vector.

    Attributes:
        layer: the layer (residual stream after decoder block ``layer``, 0-based).
        top: ``(decoded token, logit)`` of the ``top_k`` most promoted tokens, highest first.
        bottom: ``(decoded token, logit)`` of the ``top_k`` most suppressed tokens, lowest first.
        top_ids / bottom_ids: the token ids of ``top`` / ``bottom``, in the same order.
    """

    layer: int
    top: list[tuple[str, float]]
    bottom: list[tuple[str, float]]
    top_ids: list[int] = field(default_factory=list)
    bottom_ids: list[int] = field(default_factory=list)


def _softcap(model: Any) -> float | None:
    from traitflow.model.arch import unwrap

    config = unwrap(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for cfg in (text, config):
        cap = getattr(cfg, "final_logit_softcapping", None)
        if cap:
            return float(cap)
    return None


def lens_logits(loaded: Any, directions: Any, scale: Any = None) -> Any:
    """Lens logits ``[n, vocab]`` (float32, CPU) of ``directions`` ``[n, hidden]``.

    Args:
        loaded: a :class:`~traitflow.model.loading.LoadedModel`.
        directions: ``[n, hidden]`` (or ``[hidden]``) directions; their length is ignored.
        scale: the norm of real activations each direction is scaled to before the final norm:
            a float, a sequence/tensor of ``n`` floats, or None for ``sqrt(hidden)``.
    """
    import torch

    from traitflow.model.arch import final_norm, unembedding

    norm, head = final_norm(loaded.model), unembedding(loaded.model)
    weight = getattr(head, "weight", None)
    device = weight.device if weight is not None else loaded.device
    dtype = loaded.dtype if loaded.dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32
    dirs = torch.as_tensor(directions, dtype=torch.float32).detach().cpu()
    if dirs.ndim == 1:
        dirs = dirs[None]
    unit = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    n, hidden = unit.shape
    if scale is None:
        scales = torch.full((n,), float(hidden) ** 0.5)
    else:
        scales = torch.as_tensor(scale, dtype=torch.float32).flatten().cpu()
        if scales.numel() == 1:
            scales = scales.expand(n)
        elif scales.numel() != n:
            raise ValueError(f"scale has {scales.numel()} values for {n} directions")
    cap = _softcap(loaded.model)
    out = []
    with torch.inference_mode():
        zero = torch.zeros((1, 1, hidden), dtype=dtype, device=device)
        baseline = head(norm(zero)).float()[0, 0]
        for i in range(0, n, _CHUNK):
            x = (unit[i : i + _CHUNK] * scales[i : i + _CHUNK, None]).to(device=device, dtype=dtype)
            logits = head(norm(x[None])).float()[0] - baseline
            if cap:
                logits = cap * torch.tanh(logits / cap)
            out.append(logits.cpu())
    return torch.cat(out)


def _excluded_ids(loaded: Any, vocab: int) -> Any:
    """Boolean mask ``[vocab]`` of ids that are never shown: special tokens and padding rows."""
    import torch

    tokenizer = loaded.tokenizer
    mask = torch.zeros(vocab, dtype=torch.bool)
    special = set(int(i) for i in (tokenizer.all_special_ids or []) if i is not None)
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            special.add(int(token_id))
    for token_id in special:
        if 0 <= token_id < vocab:
            mask[token_id] = True
    n_tokens = len(tokenizer)
    if n_tokens < vocab:
        mask[n_tokens:] = True  # unembedding rows no token maps to
    return mask


def common_token_ids(loaded: Any, top_k: int, threshold: float = 0.5, n_directions: int = COMMON_DIRECTIONS,
                     seed: int = COMMON_SEED, scale: float | None = None) -> set[int]:
    """Ids of tokens in the top or bottom ``top_k`` of more than ``threshold`` of random directions.

    Special tokens and padding rows are excluded before ranking, as in :func:`logit_lens`.
    Deterministic for a given model, ``top_k``, ``n_directions`` and ``seed``.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn((n_directions, loaded.hidden_size), generator=generator)
    hits, excluded = None, None
    for i in range(0, n_directions, _CHUNK):  # chunks keep [chunk, vocab] logits small on big vocabularies
        logits = lens_logits(loaded, directions[i : i + _CHUNK], scale)
        if hits is None:
            excluded = _excluded_ids(loaded, logits.shape[-1])
            hits = torch.zeros(logits.shape[-1], dtype=torch.int64)
        k = min(top_k, int((~excluded).sum()))
        high = logits.masked_fill(excluded, float("-inf")).topk(k, dim=-1).indices
        low = (-logits).masked_fill(excluded, float("-inf")).topk(k, dim=-1).indices
        for row_high, row_low in zip(high, low, strict=True):
            hits[torch.unique(torch.cat([row_high, row_low]))] += 1
    if hits is None:
        return set()
    return set((hits > threshold * n_directions).nonzero().flatten().tolist())


def token_strings(loaded: Any, ids: Sequence[int]) -> list[tuple[str, str]]:
    """``(decoded text, vocabulary entry)`` per id: ``(" great", "Ġgreat")``."""
    tokenizer = loaded.tokenizer
    raw = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    return [(tokenizer.decode([int(i)]), str(r)) for i, r in zip(ids, raw, strict=True)]


def logit_lens(
    loaded: Any,
    vectors: Any,
    layers: list[int],
    top_k: int = 20,
    filter_common: bool = True,
    scale: Any = None,
    common_threshold: float = 0.5,
) -> list[LensRow]:
    """Top and bottom tokens of each layer's vector after the final norm and unembedding.

    Args:
        loaded: a :class:`~traitflow.model.loading.LoadedModel`.
        vectors: ``[len(layers), hidden]`` — one vector per layer (e.g. ``VectorSet.vectors[key]``).
        layers: the layer of each row of ``vectors``.
        top_k: tokens per side and layer.
        filter_common: leave out tokens that rank high or low for almost any direction (see the
            module docstring); special tokens are left out either way.
        scale: activation norm per layer (float, or ``len(layers)`` floats such as
            ``VectorSet.norms[(position, component)]``); None means ``sqrt(hidden)``.
        common_threshold: fraction of random directions above which a token counts as common.

    Returns:
        One :class:`LensRow` per layer, in the order of ``layers``.
    """
    import torch

    vectors = torch.as_tensor(vectors, dtype=torch.float32)
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.shape[0] != len(layers):
        raise ValueError(f"{vectors.shape[0]} vectors for {len(layers)} layers")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    logits = lens_logits(loaded, vectors, scale)
    excluded = _excluded_ids(loaded, logits.shape[-1])
    if filter_common:
        common_scale = None if scale is None else float(torch.as_tensor(scale, dtype=torch.float32).mean())
        for token_id in common_token_ids(loaded, top_k, common_threshold, scale=common_scale):
            excluded[token_id] = True
    k = min(top_k, int((~excluded).sum()))
    rows = []
    for layer, row in zip(layers, logits, strict=True):
        top = row.masked_fill(excluded, float("-inf")).topk(k)
        bottom = (-row).masked_fill(excluded, float("-inf")).topk(k)
        top_ids, bottom_ids = top.indices.tolist(), bottom.indices.tolist()
        rows.append(LensRow(
            layer=int(layer),
            top=[(text, float(v)) for (text, _), v in zip(token_strings(loaded, top_ids), top.values.tolist(), strict=True)],
            bottom=[(text, -float(v)) for (text, _), v in zip(token_strings(loaded, bottom_ids), bottom.values.tolist(), strict=True)],
            top_ids=top_ids,
            bottom_ids=bottom_ids,
        ))
    return rows


def lens_record(rows: list[LensRow], trait: str, variant: str, position: str, component: str, method: str) -> dict:
    """The ``logit_lens`` JSON artifact of one vector family.

    ``{"trait", "variant", "position", "component", "method", "token_form": "decoded",
    "layers": [{"layer", "top": [[token, logit], ...], "bottom": [...], "top_ids", "bottom_ids"}]}``
    — tokens are decoded text (see the module docstring), logits rounded to 4 decimals.
    """
    return {
        "trait": trait,
        "variant": variant,
        "position": position,
        "component": component,
        "method": method,
        "token_form": "decoded",
        "layers": [
            {
                "layer": row.layer,
                "top": [[token, round(value, 4)] for token, value in row.top],
                "bottom": [[token, round(value, 4)] for token, value in row.bottom],
                "top_ids": list(row.top_ids),
                "bottom_ids": list(row.bottom_ids),
            }
            for row in rows
        ],
    }
