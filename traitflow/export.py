"""Export trait vectors to other tools' formats. safetensors stays traitflow's home format.

llama.cpp control vectors (GGUF)
--------------------------------
A control-vector file is a GGUF file with ``general.architecture = "controlvector"``, the keys
``controlvector.model_hint`` (the model architecture, informational) and
``controlvector.layer_count`` (the number of direction tensors), and one float32 tensor
``direction.<N>`` of shape ``[hidden]`` per steered layer. llama.cpp loads it with
``--control-vector FILE`` / ``--control-vector-scaled FILE SCALE`` (and optionally
``--control-vector-layer-range START END``).

Layer numbering — the same as ours, with layer 0 unavailable:

- traitflow: layer L is the residual stream after decoder block L (0-based).
- llama.cpp adds ``direction.N`` to the output of layer ``il = N`` of its graph loop
  (``cur = build_cvec(cur, il)`` right after the block's feed-forward residual add, ``il``
  counting blocks from 0), i.e. to the residual stream after block N — our layer N.
- llama.cpp never steers ``il = 0``: its loader rejects a ``direction.0`` tensor as invalid and
  stores the data of ``direction.N`` at offset ``N − 1``; the adapter allocates no tensor for
  layer 0. So our layer 0 cannot be exported: it is skipped when every layer is exported and an
  error when asked for explicitly.

(repeng's ``ControlVector.export_gguf`` writes the same: its layer index is the index into
``model.layers`` whose output it steers, written as ``direction.<index>``.)

The tensors are the stored unit vectors times ``coefficient``; llama.cpp adds them (times its
own ``--control-vector-scaled`` factor) to the residual stream at *every* exported layer, so a
coefficient is in activation units (compare the layer's mean activation norm,
``VectorSet.norms``), and exporting many layers steers much harder than one.

Example:
    >>> export_gguf(vectors, "prompt[-1]", "residual", "mean_diff", Path("optimism.gguf"), coefficient=40.0, layers=[3])
"""

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitflow.errors import TraitflowError
from traitflow.store.atomic import atomic_write_bytes

__all__ = ["GGUF_ARCH", "ExportResult", "export_experiment_gguf", "export_gguf", "gguf_layers", "model_hint_for", "model_layer_count"]

GGUF_ARCH = "controlvector"


def gguf_layers(vectors: Any, layers: list[int] | None, key: tuple[str, str, str] | None = None) -> list[int]:
    """The layers to export: all stored layers but 0 by default; explicit ones must be stored and > 0."""
    stored = list(vectors.layers) if key is None or key not in vectors.vectors else vectors.defined_layers(*key)
    if layers is None:
        chosen = [layer for layer in stored if layer > 0]
        if not chosen:
            raise TraitflowError("no exportable layers: llama.cpp control vectors cannot steer layer 0, and no other layer was extracted")
        return chosen
    chosen = sorted(set(int(layer) for layer in layers))
    if not chosen:
        raise TraitflowError("no layers to export")
    if 0 in chosen:
        raise TraitflowError("layer 0 cannot be exported: llama.cpp control vectors never steer the first block's output (direction.0 is invalid)")
    undefined = [layer for layer in chosen if layer not in stored and layer in vectors.layers]
    if undefined:
        raise TraitflowError(f"layers {undefined}: this vector is not defined there (non-finite); "
                             f"it is at layers {_ranges(stored)}")
    missing = [layer for layer in chosen if layer not in stored]
    if missing:
        raise TraitflowError(f"layers {missing} were not extracted; stored layers are {_ranges(stored)}")
    return chosen


def _corrupt_layers(vectors: Any, key: tuple[str, str, str], layers: list[int]) -> list[int]:
    """Layers among ``layers`` whose row holds NaN or ±inf without being all NaN (an all-NaN row only
    says the vector is not defined at that layer, as for a CMA-ES refinement)."""
    import torch

    stacked = vectors.vectors[key]
    rows = {layer: stacked[vectors.layers.index(layer)] for layer in layers if layer in vectors.layers}
    return [layer for layer, row in rows.items() if not bool(torch.isfinite(row).all()) and not bool(torch.isnan(row).all())]


def _ranges(layers: list[int]) -> str:
    if layers and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(str(layer) for layer in layers)


def _model_config(metadata: dict) -> dict:
    """The ``config.json`` of the model the vectors came from, when it is a local folder; else {}."""
    model = metadata.get("model")
    source = model.get("source") if isinstance(model, dict) else None
    if not source:
        return {}
    try:
        config = json.loads((Path(str(source)) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def model_hint_for(metadata: dict, default: str = "llama") -> str:
    """The ``model_type`` of the model the vectors came from (its local ``config.json``), else ``default``."""
    model_type = _model_config(metadata).get("model_type")
    return model_type if isinstance(model_type, str) and model_type else default


def model_layer_count(metadata: dict, stored_layers: list[int]) -> int:
    """The model's number of decoder blocks (local ``config.json``), else one past the last stored layer."""
    config = _model_config(metadata)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        for cfg in (text, config):
            value = cfg.get(key)
            if isinstance(value, int) and value > max(stored_layers, default=-1):
                return value
    return max(stored_layers, default=-1) + 1


def export_gguf(
    vectors: Any,
    position: str,
    component: str,
    method: str,
    out: Path,
    coefficient: float = 1.0,
    layers: list[int] | None = None,
    model_hint: str = "llama",
) -> Path:
    """Write one vector family of a :class:`~traitflow.extract.vectors.VectorSet` as a llama.cpp control vector.

    Args:
        vectors: the VectorSet (unit vectors per layer).
        position / component / method: which vectors; ``component`` must be ``residual``
            (llama.cpp adds control vectors to the residual stream only).
        out: the ``.gguf`` file to write (atomically: a temp file renamed over it).
        coefficient: multiplies every unit vector (activation units; see the module docstring).
        layers: layers to export (traitflow numbering = ``direction.<layer>``); None exports every
            stored layer except 0.
        model_hint: ``controlvector.model_hint`` (e.g. ``llama``, ``qwen2``, ``gemma2``).

    Returns:
        ``out``.

    Raises:
        TraitflowError for a non-residual component, a vector family that was not extracted,
        layer 0 or a layer that was not extracted, a non-finite coefficient, a vector with
        non-finite values, or a product that overflows float32. Nothing is written then.
    """
    import gguf
    import numpy as np

    if not math.isfinite(float(coefficient)):
        raise TraitflowError(f"coefficient {coefficient} is not a finite number; nothing exported")

    if component != "residual":
        raise TraitflowError(
            f"component {component!r} cannot be exported to llama.cpp: control vectors are added to the residual stream; "
            "export a 'residual' vector")
    key = (position, component, method)
    if key not in vectors.vectors:
        known = ", ".join(f"{p} {c} {m}" for p, c, m in sorted(vectors.vectors)) or "none"
        raise TraitflowError(f"no {method!r} vector at position {position!r} ({component}); stored: {known}")
    corrupt = _corrupt_layers(vectors, key, [layer for layer in vectors.layers if layer > 0] if layers is None else list(layers))
    if corrupt:
        raise TraitflowError(f"the {method!r} vector at position {position!r} has non-finite values at layers {corrupt}; "
                             "nothing exported")
    chosen = gguf_layers(vectors, layers, key)
    stacked = vectors.vectors[key].detach().float().cpu()
    directions = {layer: (stacked[vectors.layers.index(layer)] * float(coefficient)).numpy().astype(np.float32)
                  for layer in chosen}
    overflow = [layer for layer, row in directions.items() if not np.isfinite(row).all()]
    if overflow:
        raise TraitflowError(f"coefficient {coefficient:g} times the vector overflows float32 at layers {overflow}; "
                             "nothing exported")
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "controlvector.gguf"
        writer = gguf.GGUFWriter(path, GGUF_ARCH)
        writer.add_string(f"{GGUF_ARCH}.model_hint", model_hint)
        writer.add_uint32(f"{GGUF_ARCH}.layer_count", len(chosen))
        meta = vectors.metadata or {}
        for name, value in (("trait", meta.get("trait")), ("variant", meta.get("variant")), ("position", position),
                            ("component", component), ("method", method),
                            ("layer_numbering", "direction.N = traitflow layer N = residual stream after decoder block N (0-based)")):
            if value is not None:
                writer.add_string(f"traitflow.{name}", str(value))
        writer.add_float32("traitflow.coefficient", float(coefficient))
        for layer, row in directions.items():
            writer.add_tensor(f"direction.{layer}", row)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        data = path.read_bytes()
    atomic_write_bytes(out, data)
    return out


@dataclass
class ExportResult:
    """What :func:`export_experiment_gguf` wrote, and which choices it made."""

    path: Path
    trait: str
    variant: str
    position: str
    method: str
    layers: list[int]
    best_layer: int | None  # the best layer by extraction_eval, when it was read


def _best_row(evaluation: dict, position: str, method: str | None) -> dict | None:
    if method is None:
        return evaluation.get("best", {}).get(position)
    from traitflow.extract.evaluate import VectorScore, best_score

    rows = [r for r in evaluation.get("scores", []) if r["position"] == position and r["method"] == method]
    if not rows:
        return None
    best = best_score([VectorScore.from_dict(r) for r in rows])  # the extraction rule, null d included
    return next(r for r in rows if r["layer"] == best.layer)


def export_experiment_gguf(
    project: Any,
    experiment: str,
    trait: str,
    variant: str | None = None,
    position: str | None = None,
    method: str | None = None,
    layers: str | None = None,
    coefficient: float = 1.0,
    out: Path | None = None,
    model_hint: str | None = None,
    storage_uri: str | None = None,
) -> ExportResult:
    """Export an experiment's stored vectors of one trait (what ``traitflow export gguf`` runs).

    Defaults: ``variant`` the experiment's extraction variant, ``position`` the first extraction
    position, ``method`` the best one at that position by ``extraction_eval``, ``layers`` (layer
    DSL, ``best`` allowed) every extracted layer but 0, ``out`` ``<trait>-<variant>-<method>.gguf``
    in the current folder, ``model_hint`` the model's ``model_type``.

    Raises:
        TraitflowError (one line) for an unknown trait, variant or position, a missing artifact,
        a method that was not extracted, or layers that cannot be exported.
    """
    from traitflow.artifacts import ExtractionEval
    from traitflow.extract.layers import parse_layers
    from traitflow.stages.context import ReadContext
    from traitflow.stages.which_vector import CMA_ES, load_vectors, refined_vectors

    ctx = ReadContext.create(project, experiment, storage_uri=storage_uri)  # read-only: no model
    exp = ctx.experiment
    if trait not in exp.traits:
        raise TraitflowError(f"experiment {exp.name!r} has no trait {trait!r} (traits: {', '.join(exp.traits)})")
    variant = variant or exp.extraction_variant
    if variant not in exp.variants:
        raise TraitflowError(f"experiment {exp.name!r} has no variant {variant!r} (variants: {', '.join(exp.variants)})")
    if not exp.extracts:
        raise TraitflowError(f"experiment {exp.name} takes its vectors from {exp.vector_source('steering').name}; "
                             "export from that experiment")
    positions = exp.extraction_for(trait).positions
    position = position or positions[0]
    if position not in positions:
        raise TraitflowError(f"position {position!r} was not extracted (extraction.position: {', '.join(positions)})")
    vectors = load_vectors(ctx, trait, variant)
    if method == CMA_ES:
        # The CMA-ES refinement is its own artifact (cma_es, at one layer), not among the extracted
        # vectors; it keeps their metadata (model, component, variant) for the file's hints.
        refined = refined_vectors(ctx, trait)
        if refined is None:
            raise TraitflowError(f"method cma_es: {trait} has no CMA-ES refinement yet (steering.cma_es); materialize `cma_es` first")
        refined[1].metadata = {**refined[1].metadata, **vectors.metadata}
        vectors = refined[1]
    component = vectors.metadata.get("component") or exp.spec.extraction.component
    stored_methods = sorted({m for p, c, m in vectors.vectors if p == position and c == component})
    if method is not None and method not in stored_methods:
        raise TraitflowError(f"method {method!r} was not extracted for {trait} ({variant}) at {position!r} "
                             f"(extracted: {', '.join(stored_methods) or 'none'})")
    best_layer = None
    if method is None or "best" in (layers or ""):
        best = _best_row(ctx.artifacts.read(ExtractionEval, trait, variant), position, method)
        if not best:
            raise TraitflowError(f"extraction_eval of {trait} ({variant}) has no {method or 'vector'} at {position!r}")
        method, best_layer = str(best["method"]), int(best["layer"])
    chosen = None
    if layers:
        chosen = parse_layers(layers, model_layer_count(vectors.metadata, vectors.layers), best=best_layer)
    path = Path(out) if out else Path(f"{trait.replace('/', '-')}-{variant}-{method}.gguf")
    export_gguf(vectors, position, component, method, path, coefficient=coefficient, layers=chosen,
                model_hint=model_hint or model_hint_for(vectors.metadata))
    return ExportResult(path, trait, variant, position, method, gguf_layers(vectors, chosen, (position, component, method)), best_layer)
