"""Activation hooks: capture pooled activations and per-token projections, always cleaning up.

- :func:`add_hooks` is the one way hooks get onto a model (capture here, steering elsewhere):
  a context manager that removes every hook on exit, also when the forward raises.
- :func:`capture_pooled` runs one batched, left-padded forward pass per batch over
  prompt+response ids and, inside the hooks, pools each requested position's window for all
  requested layers. Full ``[batch, seq, hidden]`` activations never outlive the hook call.
- :func:`project_tokens` computes ``h·v̂`` and ``‖h‖`` per token inside the hooks, on the
  model's device, and returns them with the padding stripped.

Example:
    >>> seqs = [(prompt_ids, response_ids)]
    >>> acts = capture_pooled(loaded, seqs, layers=[0, 1], positions=["response[:5]"])
    >>> acts["response[:5]"].shape   # [n_sequences, n_layers, hidden], float32 on CPU

torch is imported inside functions.
"""

import inspect
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from traitflow.errors import TraitflowError
from traitflow.extract.positions import Position, parse_position
from traitflow.model.arch import component_module, unwrap

__all__ = [
    "StopForward",
    "TokenProjection",
    "add_hooks",
    "capture_pooled",
    "left_pad_batch",
    "model_lock",
    "output_tensor",
    "project_tokens",
    "replace_output",
]

Hook = Callable[[Any, Any, Any], Any]


# --------------------------------------------------------------------------- generic hooks
@contextmanager
def add_hooks(
    module_hooks: Iterable[tuple[Any, Hook]],
    module_pre_hooks: Iterable[tuple[Any, Callable[[Any, Any], Any]]] = (),
) -> Iterator[None]:
    """Register forward hooks (and optional forward pre-hooks) for the duration of a block.

    Args:
        module_hooks: ``(module, hook)`` pairs; ``hook(module, inputs, output)`` may return a
            replacement output (see :func:`replace_output`) or None.
        module_pre_hooks: ``(module, hook)`` pairs; ``hook(module, inputs)`` may return new inputs.

    Every hook is removed on exit, including when the body raises.

    Example:
        >>> with add_hooks([(block, lambda m, i, o: replace_output(o, output_tensor(o) + v))]):
        ...     model(**batch)
    """
    handles = []
    try:
        for module, hook in module_pre_hooks:
            handles.append(module.register_forward_pre_hook(hook))
        for module, hook in module_hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def output_tensor(output: Any) -> Any:
    """The main tensor of a module output (a tensor, or the first item of a tuple/ModelOutput)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    if hasattr(output, "to_tuple"):
        return output.to_tuple()[0]
    raise TypeError(f"cannot find a tensor in module output of type {type(output).__name__}")


def replace_output(output: Any, tensor: Any) -> Any:
    """``output`` with its main tensor replaced by ``tensor``, keeping the structure."""
    import torch

    if isinstance(output, torch.Tensor):
        return tensor
    if isinstance(output, tuple):
        return (tensor, *output[1:])
    if isinstance(output, list):
        return [tensor, *output[1:]]
    raise TypeError(f"cannot replace the tensor in module output of type {type(output).__name__}")


_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.RLock:
    """A re-entrant lock per model object.

    Hooks live on the shared module, so two threads running hooked forward passes on the same
    model would see each other's hooks. capture, projection and generation hold this lock;
    code that adds hooks (steering) should hold it around ``add_hooks`` + forward too.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = threading.RLock()
            _LOCKS[model] = lock
        return lock


class StopForward(Exception):
    """Raised by a hook to end a forward pass once every needed activation is captured."""


# --------------------------------------------------------------------------- batching
@dataclass
class _Batch:
    input_ids: Any  # [B, T] long
    attention_mask: Any  # [B, T] long
    position_ids: Any  # [B, T] long
    pads: list[int]  # left padding per row


def left_pad_batch(seqs: Sequence[Sequence[int]], pad_token_id: int, device: Any) -> _Batch:
    """Left-pad token id lists into tensors; position ids count real tokens from 0."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    pads = []
    for row, seq in enumerate(seqs):
        pad = width - len(seq)
        pads.append(pad)
        if len(seq):
            ids[row, pad:] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, pad:] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    return _Batch(ids.to(device), mask.to(device), position_ids.to(device), pads)


def forward_kwargs(model: Any) -> dict[str, Any]:
    """Extra forward kwargs that save work we never look at (only the last position's logits)."""
    try:
        params = inspect.signature(unwrap(model).forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


def run_forward(loaded: Any, batch: _Batch, extra: dict[str, Any] | None = None) -> None:
    """One forward over a left-padded batch for its hooks' sake (no cache, no output kept)."""
    try:
        loaded.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            **(extra or {}),
        )
    except StopForward:
        pass


def _check_layers(loaded: Any, layers: Sequence[int]) -> None:
    for layer in layers:
        if not 0 <= int(layer) < loaded.n_layers:
            raise TraitflowError(f"layer {layer} is out of range: valid layers are 0-{loaded.n_layers - 1}")


def _batches(order: list[int], batch_size: int) -> Iterator[list[int]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


# --------------------------------------------------------------------------- pooled capture
def capture_pooled(
    loaded: Any,
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    layers: Sequence[int],
    positions: Sequence[str],
    component: str = "residual",
    batch_size: int = 16,
    stop_early: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Mean activation over each position's window, for every sequence and layer.

    Args:
        loaded: a :class:`~traitflow.model.loading.LoadedModel`.
        sequences: ``(prompt_ids, response_ids)`` pairs.
        layers: layer indices (output of decoder block L for ``residual``).
        positions: position DSL strings, e.g. ``["response[:5]", "prompt[-1]"]``.
        component: ``residual`` | ``attn_out`` | ``mlp_out`` | ``attn_contribution`` | ``mlp_contribution``.
        batch_size: sequences per forward pass (sequences are grouped by length; order of the
            result follows ``sequences``).
        stop_early: end each forward pass after the last needed layer (skips the rest of the
            model and the unembedding).
        progress: called as ``progress(done, total)`` after each batch.

    Returns:
        ``{position text: float32 CPU tensor [n_sequences, len(layers), hidden]}``.

    Raises:
        TraitflowError when a position selects no tokens of a sequence (naming both).
    """
    import torch

    parsed: list[Position] = [parse_position(p) for p in positions]
    keys = list(positions)
    layers = [int(layer) for layer in layers]
    _check_layers(loaded, layers)
    n = len(sequences)
    windows: list[list[tuple[int, int]]] = []
    for i, (p_ids, r_ids) in enumerate(sequences):
        row = []
        for pos in parsed:
            start, stop = pos.window(len(p_ids), len(r_ids))
            if stop <= start:
                raise TraitflowError(
                    f"position {pos.text!r} selects no tokens in sequence {i} "
                    f"(prompt {len(p_ids)} tokens, response {len(r_ids)} tokens)"
                )
            row.append((start, stop))
        windows.append(row)

    hidden = loaded.hidden_size
    result = {k: torch.zeros((n, len(layers), hidden), dtype=torch.float32) for k in keys}
    if n == 0 or not layers or not keys:
        return result

    unique_layers = sorted(set(layers))
    slots = {layer: [j for j, x in enumerate(layers) if x == layer] for layer in unique_layers}
    modules = {layer: component_module(loaded.model, layer, component) for layer in unique_layers}
    last_layer = unique_layers[-1]
    device = loaded.device
    extra = forward_kwargs(loaded.model)
    n_pos = len(parsed)
    lengths = [len(p) + len(r) for p, r in sequences]
    order = sorted(range(n), key=lambda i: lengths[i])

    state: dict[str, Any] = {}

    def make_hook(layer: int) -> Hook:
        js = slots[layer]

        def hook(module: Any, inputs: Any, output: Any) -> None:
            h = output_tensor(output)
            # With `device_map: auto` a block may sit on another GPU than the embedding: work where h is.
            gathered = h[state["rows"].to(h.device), state["index"].to(h.device)]  # [B, K, H], real tokens only
            pooled = torch.bmm(state["weights"].to(h.device), gathered.float())  # [B, P, H]
            for j in js:
                state["buf"][:, :, j] = pooled.to(state["buf"].device)
            if stop_early and layer == last_layer:
                raise StopForward

        return hook

    hooks = [(modules[layer], make_hook(layer)) for layer in unique_layers]
    done = 0
    with model_lock(loaded.model), torch.inference_mode(), add_hooks(hooks):
        for chunk in _batches(order, batch_size):
            batch = left_pad_batch([list(sequences[i][0]) + list(sequences[i][1]) for i in chunk], loaded.pad_token_id, device)
            spans = [[(s + batch.pads[b], e + batch.pads[b]) for s, e in windows[i]] for b, i in enumerate(chunk)]
            widths = [max(e - s for s, e in (row[p] for row in spans)) for p in range(n_pos)]
            k_total = sum(widths)
            index = torch.empty((len(chunk), k_total), dtype=torch.long)
            weights = torch.zeros((len(chunk), n_pos, k_total), dtype=torch.float32)
            for b, row in enumerate(spans):
                col = 0
                for p, (s, e) in enumerate(row):
                    width = e - s
                    index[b, col : col + width] = torch.arange(s, e)
                    index[b, col + width : col + widths[p]] = s  # filler: a real token, weight 0
                    weights[b, p, col : col + width] = 1.0 / width
                    col += widths[p]
            state["rows"] = torch.arange(len(chunk), device=device)[:, None]
            state["index"] = index.to(device)
            state["weights"] = weights.to(device)
            state["buf"] = torch.zeros((len(chunk), n_pos, len(layers), hidden), dtype=torch.float32, device=device)
            run_forward(loaded, batch, extra)
            buf = state["buf"].cpu()
            rows = torch.as_tensor(chunk, dtype=torch.long)
            for p, key in enumerate(keys):
                result[key][rows] = buf[:, p]
            done += len(chunk)
            if progress is not None:
                progress(done, n)
    state.clear()
    return result


# --------------------------------------------------------------------------- per-token projection
@dataclass
class TokenProjection:
    """Per-token projections of one sequence (padding stripped).

    Attributes:
        scores: ``[n_traits, n_layers, seq_len]`` float32, ``h · v̂`` per token.
        norms: ``[n_layers, seq_len]`` float32, ``‖h‖`` per token.
        prompt_len: tokens ``[0, prompt_len)`` are the prompt, the rest the response.
    """

    scores: Any
    norms: Any
    prompt_len: int


def project_tokens(
    loaded: Any,
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    layers: Sequence[int],
    vectors: Any,
    batch_size: int = 16,
    component: str = "residual",
    progress: Callable[[int, int], None] | None = None,
) -> list[Any]:
    """Project every token's activation onto trait vectors, per layer.

    Args:
        loaded: a LoadedModel.
        sequences: ``(prompt_ids, response_ids)`` pairs.
        layers: layer indices.
        vectors: ``[n_traits, len(layers), hidden]``; each ``vectors[t, j]`` is normalised to
            unit length here (so scores are ``h · v̂`` whatever the input norm).
        batch_size: sequences per forward pass.
        component: which activation to project (default the residual stream).
        progress: called as ``progress(done, total)`` after each batch.

    Returns:
        One :class:`TokenProjection` per sequence, in input order.
    """
    import torch

    layers = [int(layer) for layer in layers]
    _check_layers(loaded, layers)
    vectors = torch.as_tensor(vectors)
    if vectors.ndim != 3 or vectors.shape[1] != len(layers) or vectors.shape[2] != loaded.hidden_size:
        raise ValueError(f"vectors must be [n_traits, {len(layers)}, {loaded.hidden_size}], got {tuple(vectors.shape)}")
    n = len(sequences)
    if n == 0:
        return []
    device = loaded.device
    unit = vectors.float()
    unit = unit / unit.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    unit = unit.to(device)
    n_traits = unit.shape[0]
    unique_layers = sorted(set(layers))
    slots = {layer: [j for j, x in enumerate(layers) if x == layer] for layer in unique_layers}
    modules = {layer: component_module(loaded.model, layer, component) for layer in unique_layers}
    last_layer = unique_layers[-1]
    extra = forward_kwargs(loaded.model)
    lengths = [len(p) + len(r) for p, r in sequences]
    if min(lengths) == 0:
        raise TraitflowError(f"sequence {lengths.index(0)} is empty: nothing to project")
    order = sorted(range(n), key=lambda i: lengths[i])
    state: dict[str, Any] = {}

    def make_hook(layer: int) -> Hook:
        js = slots[layer]

        def hook(module: Any, inputs: Any, output: Any) -> None:
            h = output_tensor(output).float()  # [B, T, H]; on its block's device (`device_map: auto`)
            norms = h.norm(dim=-1).to(state["norms"].device)  # [B, T]
            for j in js:
                state["scores"][:, :, j] = torch.einsum("bth,nh->bnt", h, unit[:, j].to(h.device)).to(state["scores"].device)
                state["norms"][:, j] = norms
            if layer == last_layer:
                raise StopForward

        return hook

    out: list[Any] = [None] * n
    done = 0
    hooks = [(modules[layer], make_hook(layer)) for layer in unique_layers]
    with model_lock(loaded.model), torch.inference_mode(), add_hooks(hooks):
        for chunk in _batches(order, batch_size):
            seqs = [list(sequences[i][0]) + list(sequences[i][1]) for i in chunk]
            batch = left_pad_batch(seqs, loaded.pad_token_id, device)
            width = batch.input_ids.shape[1]
            state["scores"] = torch.zeros((len(chunk), n_traits, len(layers), width), device=device)
            state["norms"] = torch.zeros((len(chunk), len(layers), width), device=device)
            run_forward(loaded, batch, extra)
            scores = state["scores"].cpu()
            norms = state["norms"].cpu()
            for b, i in enumerate(chunk):
                pad = batch.pads[b]
                out[i] = TokenProjection(
                    scores=scores[b, :, :, pad:].clone(),
                    norms=norms[b, :, pad:].clone(),
                    prompt_len=len(sequences[i][0]),
                )
            done += len(chunk)
            if progress is not None:
                progress(done, n)
    state.clear()
    return out
