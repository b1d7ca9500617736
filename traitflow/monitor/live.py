"""Live monitoring: greedy generation with every response token projected onto trait vectors.

:func:`generate_live` runs batch-1 greedy decoding with a KV cache in its own loop. A forward
hook on each needed module (the output of decoder block L for ``residual``) computes ``h·v̂``
for the newest position only, on the model's device, inside the forward that generation runs
anyway — there is no second pass over the sequence. The score of response token ``i`` is its
activation when it is fed back in (the same position :func:`traitflow.model.hooks.project_tokens`
reports for it), so it is known one step after the token is chosen: ``on_token`` fires for
token ``i`` right after the forward that feeds it. When generation ends at ``max_new_tokens``
the last token still needs that forward; it stops after the deepest hooked module
(:class:`~traitflow.model.hooks.StopForward`), so it skips the rest of the model and the
unembedding. A token that is an end-of-sequence id ends the response and is not scored.

Steering (a configuration of :mod:`traitflow.steer.interventions`) is applied through
:func:`~traitflow.steer.interventions.intervene`, whose hooks go on first, so the projections
see the steered residual stream — the activations the model actually used.

:func:`run_monitor` is the ``traitflow monitor`` command: vectors from an experiment's store,
tokens printed as they are generated, each with an ANSI 256-colour background for the first
trait's score, then a summary per trait and the tokens flagged by ``--threshold``.

Colour scale: the first trait's score is centred on its class midpoint (the ``baseline`` saved
with the vectors: the projection halfway between the positive and negative training means,
i.e. the decision boundary) and divided by the running maximum of ``|score − midpoint|`` over
the tokens so far; the result in ``[-1, 1]`` picks one of five reds (below the midpoint) or
five greens (above). The threshold, summary and flags use the raw scores ``h·v̂``.

Example:
    >>> result = generate_live(loaded, prompt_ids(loaded, "Hi"), vectors, layers=[3, 4], max_new_tokens=16)
    >>> result.text, result.scores.shape   # [n_tokens, n_traits]

torch is imported inside functions.
"""

import fnmatch
import math
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, TextIO

from traitflow.errors import TraitflowError

__all__ = ["LiveResult", "TraitMonitor", "colour_code", "generate_live", "run_monitor"]

OnToken = Callable[[int, str, list[float]], None]


@dataclass
class LiveResult:
    """One live generation.

    Attributes:
        prompt_ids: the prompt as given.
        response_ids: generated ids (an end-of-sequence token ends the response and is excluded).
        tokens: the decoded text each response token added (``"".join(tokens)`` is normally
            ``text``; a token completing a multi-byte character carries the whole character, and
            bytes of a character left unfinished at the end go to the last token).
        scores: ``[len(response_ids), n_traits]`` float32 CPU tensor, ``h·v̂`` per response token.
        text: the decoded response.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    tokens: list[str]
    scores: Any
    text: str


class _Pieces:
    """Incremental detokenisation: the text each new id adds (holds back incomplete characters)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] decode to text already emitted (context for the next id)
        self.read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd") and after.startswith(before):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        if not after.startswith(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = len(self.ids), len(self.ids)  # tokenizer rewrote the context
            return self._decode([int(token)])
        return ""

    def flush(self) -> str:
        """Text held back at the end (an incomplete character the response ends on)."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        return after[len(before) :] if after.startswith(before) else ""


def generate_live(
    loaded: Any,
    prompt_ids: Sequence[int],
    vectors: Any,
    layers: Sequence[int],
    max_new_tokens: int,
    steer: Sequence[Any] = (),
    on_token: OnToken | None = None,
    components: Sequence[str] | None = None,
) -> LiveResult:
    """Greedy batch-1 generation with each response token projected onto trait vectors.

    Args:
        loaded: a :class:`~traitflow.model.loading.LoadedModel`.
        prompt_ids: prompt token ids (e.g. :func:`traitflow.model.chat.prompt_ids`).
        vectors: ``[n_traits, hidden]`` trait directions (normalised to unit length here).
        layers: one layer per trait: where that trait's activation is read.
        max_new_tokens: upper bound on response length.
        steer: an intervention configuration (tuple of Steer / Ablate / Cap; ``()`` = none),
            applied to the prompt and every decode step as :func:`intervene` defines.
        on_token: called as ``on_token(index, text_piece, scores)`` for each response token,
            as soon as its scores exist (one forward after it was chosen).
        components: per trait, which activation to read (default ``residual`` for all).

    Returns:
        A :class:`LiveResult`; ``response_ids`` equal :func:`traitflow.model.generate.generate`'s
        greedy output for the prompt (and ``steered_generate``'s under ``steer``).

    Every hook is removed on return, also when generation or ``on_token`` raises.
    """
    import torch

    from traitflow.model.arch import component_module
    from traitflow.model.hooks import StopForward, _check_layers, add_hooks, forward_kwargs, model_lock, output_tensor
    from traitflow.steer.interventions import intervene

    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise ValueError("the prompt has no tokens")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    vectors = torch.as_tensor(vectors)
    layers = [int(layer) for layer in layers]
    if vectors.ndim != 2 or vectors.shape[1] != loaded.hidden_size or vectors.shape[0] != len(layers):
        raise ValueError(f"vectors must be [n_traits={len(layers)}, {loaded.hidden_size}] (one layer per trait), "
                         f"got {tuple(vectors.shape)}")
    components = list(components) if components is not None else ["residual"] * len(layers)
    if len(components) != len(layers):
        raise ValueError(f"components has {len(components)} entries for {len(layers)} traits")
    _check_layers(loaded, layers)

    device = loaded.device
    n_traits = len(layers)
    unit = vectors.detach().float()
    unit = unit / unit.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    # one hook per (layer, component), projecting onto every trait read there
    groups: dict[tuple[int, str], list[int]] = {}
    for t, key in enumerate(zip(layers, components, strict=True)):
        groups.setdefault(key, []).append(t)
    buf = torch.zeros((max_new_tokens, n_traits), dtype=torch.float32, device=device)
    state = {"row": -1, "pending": 0, "final": False}

    def make_hook(idx: list[int]) -> Any:
        where = torch.as_tensor(idx, dtype=torch.long, device=device)
        u = unit[idx].to(device)  # [k, H]

        def hook(module: Any, inputs: Any, output: Any) -> None:
            row = state["row"]
            if row >= 0:
                h = output_tensor(output)[0, -1]
                vals = u.to(h.device) @ h.float()
                buf[row].index_copy_(0, where, vals.to(buf.device))
            if state["final"]:
                state["pending"] -= 1
                if state["pending"] == 0:
                    raise StopForward

        return hook

    hooks = [(component_module(loaded.model, layer, comp), make_hook(idx)) for (layer, comp), idx in groups.items()]
    eos = set(loaded.eos_token_ids)
    extra = forward_kwargs(loaded.model)
    pieces = _Pieces(loaded.tokenizer)
    response: list[int] = []
    tokens: list[str] = []

    def emit(i: int) -> None:
        piece = pieces.push(response[i])
        tokens.append(piece)
        if on_token is not None:
            on_token(i, piece, buf[i].tolist())

    with model_lock(loaded.model), torch.inference_mode(), ExitStack() as stack:
        if len(steer):
            stack.enter_context(intervene(loaded, [tuple(steer)], [0], [len(prompt)]))
        stack.enter_context(add_hooks(hooks))
        out = loaded.model(input_ids=torch.tensor([prompt], device=device), use_cache=True, **extra)
        while True:
            token = int(out.logits[0, -1].argmax())
            if token in eos:
                break
            response.append(token)
            i = len(response) - 1
            state["row"] = i
            last = len(response) == max_new_tokens
            if last:
                state["final"], state["pending"] = True, len(hooks)
            try:
                out = loaded.model(input_ids=torch.tensor([[token]], device=device), past_key_values=out.past_key_values,
                                   use_cache=True, **extra)
            except StopForward:
                pass
            emit(i)
            if last:
                break
    if tokens:
        tokens[-1] += pieces.flush()  # not seen by on_token: only an unfinished character
    scores = buf[: len(response)].cpu()
    text = loaded.tokenizer.decode(response, skip_special_tokens=True)
    return LiveResult(prompt_ids=prompt, response_ids=response, tokens=tokens, scores=scores, text=text)


# --------------------------------------------------------------------------- the terminal view
RED = (52, 88, 124, 160, 196)  # dark … bright
GREEN = (22, 28, 34, 40, 46)
NEUTRAL = 238


def colour_code(value: float, scale: float) -> int:
    """ANSI 256-colour index for ``value`` on a ``±scale`` range: reds below 0, greens above."""
    if not (scale > 0) or not math.isfinite(value):
        return NEUTRAL
    t = max(-1.0, min(1.0, value / scale))
    level = min(4, int(abs(t) * 5))
    if abs(t) < 0.1:
        return NEUTRAL
    return (GREEN if t > 0 else RED)[level]


def _paint(text: str, code: int) -> str:
    fg = 16 if code in (GREEN[3:] + RED[4:]) else 15
    return f"\x1b[48;5;{code}m\x1b[38;5;{fg}m{text}\x1b[0m"


@dataclass
class TraitMonitor:
    """A trait's monitored vector: what :func:`generate_live` reads and how to show it."""

    trait: str
    position: str
    component: str
    method: str
    layer: int
    vector: Any  # [hidden]
    midpoint: float = 0.0  # class-midpoint projection (colour centre); 0 when unknown
    scores: list[float] = field(default_factory=list)


def _require_vectors(src: Any, trait: str) -> None:
    """The trait's vectors (those of `inference.vectors_from` when set) must be materialized."""
    from traitflow.artifacts import ExtractionEval, Vectors

    exp = src.experiment
    if not all(src.artifacts.exists(a, trait, exp.extraction_variant) for a in (Vectors, ExtractionEval)):
        raise TraitflowError(f"{trait}: vectors are not materialized yet; run `traitflow run {exp.name} --stages extraction` first")


def _monitors(ctx: Any, traits: list[str]) -> list[TraitMonitor]:
    from traitflow.stages.which_vector import monitored_vector, vectors_context, vectors_for_method

    src = vectors_context(ctx, "inference")
    out = []
    for trait in traits:
        _require_vectors(src, trait)
        position, component, method, layer = monitored_vector(ctx, trait)
        vectors = vectors_for_method(src, trait, method)  # `inference.method: cma_es`: the refinement
        key = (position, component, method)
        vector = vectors.vector(position, component, method, layer)
        baseline = vectors.baselines.get(key)
        midpoint = float(baseline[vectors.layers.index(layer)]) if baseline is not None else 0.0
        out.append(TraitMonitor(trait, position, component, method, layer, vector,
                                midpoint if math.isfinite(midpoint) else 0.0))
    return out


def _steers(ctx: Any, specs: Sequence[str]) -> tuple[list[Any], list[str]]:
    """Parse ``TRAIT:COEF``; each steers at the trait's best steering layer (else its monitored layer)."""
    from traitflow.stages.which_vector import best_steering_vector, monitored_vector, vectors_context, vectors_for_method
    from traitflow.steer.interventions import Steer

    exp = ctx.experiment
    config, notes = [], []
    for spec in specs:
        trait, sep, coef_text = spec.rpartition(":")
        try:
            coefficient = float(coef_text)
        except ValueError:
            coefficient = math.nan
        if not sep or not trait or not math.isfinite(coefficient):
            raise TraitflowError(f"--steer {spec!r}: expected TRAIT:COEFFICIENT, e.g. toy/optimism:-80")
        if trait not in exp.traits:
            raise TraitflowError(f"--steer: unknown trait {trait!r}; experiment {exp.name} has {', '.join(exp.traits)}")
        src = vectors_context(ctx, "inference")
        _require_vectors(src, trait)
        best = best_steering_vector(ctx, trait, stage="inference")
        if best is not None:
            vector, layer, source = best.vector, best.layer, best.description
        else:  # no best vector yet: the monitored one
            position, component, method, layer = monitored_vector(ctx, trait)
            vector = vectors_for_method(src, trait, method).vector(position, component, method, layer)
            source = f"monitored vector: {position} {component} {method}, layer {layer}"
        config.append(Steer(vector, layer, coefficient, positions="response"))
        notes.append(f"steer {trait} ({source}) × {coefficient:g}")
    return config, notes


def _fmt(x: float) -> str:
    return f"{x:+.3g}"


def run_monitor(
    root: Any,
    experiment: str,
    variant: str,
    prompt: str,
    traits: str = "*",
    system: str | None = None,
    max_new_tokens: int = 64,
    threshold: float | None = None,
    steer: Sequence[str] = (),
    storage_uri: str | None = None,
    out: TextIO | None = None,
    colour: bool | None = None,
) -> LiveResult:
    """The ``traitflow monitor`` command (see the module docstring); prints to ``out``."""
    import torch

    from traitflow.model.chat import prompt_ids
    from traitflow.model.loading import MODEL_CACHE
    from traitflow.specs.loader import load_project
    from traitflow.stages.context import ReadContext

    out = out or sys.stdout
    if colour is None:
        colour = bool(getattr(out, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")
    if max_new_tokens < 1:
        raise TraitflowError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    project = load_project(root, experiments=[experiment], strict=False)
    project.require(experiment)
    ctx = ReadContext.create(project, experiment, storage_uri=storage_uri)  # artifacts only; the model is loaded below
    exp = ctx.experiment
    if variant not in exp.variants:
        raise TraitflowError(f"unknown variant {variant!r}; experiment {exp.name} has {', '.join(exp.variants)}")
    chosen = [t for t in exp.traits if fnmatch.fnmatchcase(t, traits)]
    if not chosen:
        raise TraitflowError(f"--traits {traits!r} matches none of {exp.name}'s traits ({', '.join(exp.traits)})")
    monitors = _monitors(ctx, chosen)
    loaded = MODEL_CACHE.get(exp.variants[variant], project.root)
    config, notes = _steers(ctx, steer)

    lead = monitors[0]
    out.write(f"{exp.name}/{variant}: " + ", ".join(f"{m.trait} (L{m.layer} {m.position} {m.method})" for m in monitors) + "\n")
    for note in notes:
        out.write(note + "\n")
    if colour:
        out.write(f"colour: {lead.trait}, red below / green above its class midpoint {lead.midpoint:+.3g}, "
                  f"scaled by the running max |score - midpoint|\n")
    out.write("\n")
    out.flush()

    scale = 0.0
    flags: list[tuple[int, str, str, float]] = []

    def on_token(i: int, piece: str, scores: list[float]) -> None:
        nonlocal scale
        for m, s in zip(monitors, scores, strict=True):
            m.scores.append(s)
        text = piece
        if colour and piece:
            dev = scores[0] - lead.midpoint
            scale = max(scale, abs(dev))
            text = _paint(piece, colour_code(dev, scale))
        marker = ""
        if threshold is not None:
            hits = [(m.trait, s) for m, s in zip(monitors, scores, strict=True) if abs(s) > threshold]
            for trait, s in hits:
                flags.append((i, piece, trait, s))
            if hits:
                marker = "▲" if max(hits, key=lambda h: abs(h[1]))[1] > 0 else "▼"
        out.write(text + marker)
        out.flush()

    ids = prompt_ids(loaded, prompt, system)
    vectors = torch.stack([m.vector.float() for m in monitors])
    result = generate_live(loaded, ids, vectors, [m.layer for m in monitors], max_new_tokens, steer=tuple(config),
                           on_token=on_token, components=[m.component for m in monitors])
    out.write("\n\n")
    n = len(result.response_ids)
    for t, m in enumerate(monitors):
        if n:
            col = result.scores[:, t]
            out.write(f"{m.trait} L{m.layer}: mean {_fmt(float(col.mean()))}  min {_fmt(float(col.min()))}  "
                      f"max {_fmt(float(col.max()))}  over {n} tokens\n")
        else:
            out.write(f"{m.trait} L{m.layer}: no response tokens\n")
    if threshold is not None:
        if flags:
            out.write(f"flagged (|score| > {threshold:g}): {len(flags)}\n")
            for i, piece, trait, s in flags:
                out.write(f"  #{i} {piece!r} {trait} {_fmt(s)} {'▲' if s > 0 else '▼'}\n")
        else:
            out.write(f"flagged (|score| > {threshold:g}): none\n")
    out.flush()
    return result
