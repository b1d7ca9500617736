"""Model loading, architecture map, chat formatting, generation and activation hooks.

Import-light: torch, transformers and peft are imported inside the functions.
"""

from traitflow.model.arch import component_module, decoder_layers, embedding, final_norm, unembedding
from traitflow.model.chat import prompt_ids
from traitflow.model.generate import Generation, generate
from traitflow.model.hooks import TokenProjection, add_hooks, capture_pooled, project_tokens
from traitflow.model.loading import MODEL_CACHE, LoadedModel, ModelCache, load_model

__all__ = [
    "MODEL_CACHE",
    "Generation",
    "LoadedModel",
    "ModelCache",
    "TokenProjection",
    "add_hooks",
    "capture_pooled",
    "component_module",
    "decoder_layers",
    "embedding",
    "final_norm",
    "generate",
    "load_model",
    "project_tokens",
    "prompt_ids",
    "unembedding",
]
