"""Architecture map: where the decoder blocks, norms, embeddings and sub-layers live.

Works for Llama, Qwen2, Gemma2, Gemma3 (text and multimodal wrappers), Mistral, Phi3, GPT-2,
GPT-NeoX and anything with the same attribute names, also when wrapped in a PEFT model.

Components (what a hook on :func:`component_module` sees as the module's output):

- ``residual``: the decoder block itself — its output is the residual stream after block L.
- ``attn_out``: the attention module's output (before any post-norm / residual add).
- ``mlp_out``: the MLP module's output.
- ``attn_contribution`` / ``mlp_contribution``: what is actually added to the residual stream.
  On post-norm architectures (Gemma2/Gemma3: ``post_attention_layernorm`` and
  ``post_feedforward_layernorm`` after the sub-layers) that is the output of those norms; on
  pre-norm architectures it is the same module as ``attn_out`` / ``mlp_out``.

Import-light: only the functions touch the model; no torch import at module level.
"""

from typing import Any

from traitflow.errors import TraitflowError

__all__ = [
    "COMPONENTS",
    "component_module",
    "decoder_layers",
    "embedding",
    "final_norm",
    "is_post_norm",
    "unembedding",
    "unwrap",
]

COMPONENTS = ("residual", "attn_out", "mlp_out", "attn_contribution", "mlp_contribution")

# Attribute paths (relative to the unwrapped *ForCausalLM model), tried in order.
_LAYER_PATHS = (
    "model.layers",  # Llama, Qwen2, Gemma2, Gemma3 text, Mistral, Phi3
    "model.language_model.layers",  # Gemma3ForConditionalGeneration and other VLM wrappers
    "language_model.model.layers",  # older VLM wrappers
    "transformer.h",  # GPT-2, GPT-J
    "gpt_neox.layers",  # GPT-NeoX / Pythia
    "model.decoder.layers",  # OPT
    "layers",  # a bare decoder model
    "h",
)
_NORM_PATHS = (
    "model.norm",
    "model.language_model.norm",
    "language_model.model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm",
    "norm",
    "ln_f",
)
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")


def unwrap(model: Any) -> Any:
    """The underlying transformers model of a PEFT wrapper (or the model itself)."""
    seen = 0
    while hasattr(model, "get_base_model") and seen < 4:
        base = model.get_base_model()
        if base is model:
            break
        model = base
        seen += 1
    return model


def _resolve(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def decoder_layers(model: Any) -> list:
    """The decoder blocks, in order; block L's output is layer L."""
    import torch.nn as nn

    base = unwrap(model)
    for path in _LAYER_PATHS:
        found = _resolve(base, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return list(found)
    raise TraitflowError(f"unsupported architecture {type(base).__name__}: cannot find its decoder layers")


def final_norm(model: Any) -> Any:
    """The norm applied after the last block, before the unembedding."""
    base = unwrap(model)
    for path in _NORM_PATHS:
        found = _resolve(base, path)
        if found is not None:
            return found
    raise TraitflowError(f"unsupported architecture {type(base).__name__}: cannot find its final norm")


def unembedding(model: Any) -> Any:
    """The output projection to vocabulary logits (``lm_head`` / ``embed_out``)."""
    base = unwrap(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is None:
        head = _resolve(base, "lm_head")
    if head is None:
        raise TraitflowError(f"unsupported architecture {type(base).__name__}: it has no output embedding (lm_head)")
    return head


def embedding(model: Any) -> Any:
    """The input token embedding."""
    base = unwrap(model)
    emb = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    if emb is None:
        raise TraitflowError(f"unsupported architecture {type(base).__name__}: it has no input embedding")
    return emb


def _child(block: Any, names: tuple[str, ...], what: str) -> Any:
    for name in names:
        found = getattr(block, name, None)
        if found is not None:
            return found
    raise TraitflowError(f"unsupported architecture: decoder block {type(block).__name__} has no {what} module")


def is_post_norm(block: Any) -> bool:
    """True for blocks that normalise sub-layer outputs before adding them (Gemma2/Gemma3)."""
    return (
        getattr(block, "post_attention_layernorm", None) is not None
        and getattr(block, "post_feedforward_layernorm", None) is not None
        and getattr(block, "pre_feedforward_layernorm", None) is not None
    )


def component_module(model: Any, layer: int, component: str = "residual") -> Any:
    """The module whose forward output is ``component`` at ``layer`` (see module docstring)."""
    if component not in COMPONENTS:
        raise TraitflowError(f"unknown component {component!r}; expected one of {', '.join(COMPONENTS)}")
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise TraitflowError(f"layer {layer} is out of range: valid layers are 0-{len(layers) - 1}")
    block = layers[layer]
    if component == "residual":
        return block
    if component == "attn_contribution" and is_post_norm(block):
        return block.post_attention_layernorm
    if component == "mlp_contribution" and is_post_norm(block):
        return block.post_feedforward_layernorm
    if component in ("attn_out", "attn_contribution"):
        return _child(block, _ATTN_NAMES, "attention")
    return _child(block, _MLP_NAMES, "MLP")
