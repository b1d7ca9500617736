"""Interventions on the residual stream: steering, directional ablation, activation capping.

An intervention acts on the output of decoder block L (layer L, DESIGN §4):

- :class:`Steer` adds ``coefficient · v̂`` at one layer, at the tokens of one position set;
- :class:`Ablate` projects ``v̂`` out, ``h ← h − (h·v̂) v̂``, at every listed layer (default: every
  layer), at every real token — the refusal-direction ablation;
- :class:`Cap` clamps the projection ``h·v̂`` into ``[floor, ceiling]`` at one layer.

Vectors are normalised to unit length inside, so a coefficient, floor or ceiling is in
activation units (the same units as ``h·v̂`` from :func:`traitflow.model.hooks.project_tokens`).
All arithmetic is done in float32 (``h.float() + c · v̂``) and cast back to the hidden dtype
once per layer. A *configuration* is a tuple of interventions; at each layer they apply in
the order given.

Position sets (``Steer.positions`` / ``Cap.positions``), for a prompt of ``n`` tokens:

- ``prompt``: the prompt's token positions ``0 … n−1``. They only occur in the prefill
  forward, so under a KV cache a prompt-only intervention touches no decode step.
- ``response``: every position whose output produces a response token: the last prompt
  position ``n−1`` (at prefill — its output yields the first response token, so that token is
  steered too) and every generated token fed back in (at each decode step).
- ``all``: both (the union; ``n−1`` counted once).

Left padding is never touched, by any intervention. Positions are absolute within the
sequence: a forward pass over ``prompt + response`` ids (teacher forcing, no cache) gets the
same positions steered as generation does, which is what makes the two agree.

:func:`intervene` installs the hooks for one batch whose rows may use different
configurations: row ``r`` gets ``configs[row_config[r]]``, and each row's arithmetic is the
same as if its configuration ran alone (identity rows add an exact zero). Interventions at
the same depth across configurations are stacked into ``[batch, hidden]`` tensors, so a batch
of K configurations costs a handful of tensor ops per hooked layer, not K.

Example:
    >>> cfgs = [(), (Steer(v, layer=3, coefficient=4.0),), (Ablate(v),)]
    >>> with intervene(loaded, cfgs, row_config=[0, 1, 2], prompt_lens=[7, 7, 7]):
    ...     loaded.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8)

torch is imported inside functions.
"""

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from traitflow.errors import TraitflowError
from traitflow.model.arch import decoder_layers
from traitflow.model.hooks import add_hooks, model_lock, output_tensor, replace_output

if TYPE_CHECKING:
    import torch

__all__ = ["POSITION_SETS", "Ablate", "Cap", "Config", "Intervention", "StepState", "Steer", "intervene"]

POSITION_SETS = ("all", "prompt", "response")


def _as_vector(vector: Any, what: str) -> Any:
    import torch

    v = torch.as_tensor(vector).detach()
    if v.ndim != 1:
        raise TraitflowError(f"{what}: the vector must be one-dimensional [hidden], got shape {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise TraitflowError(f"{what}: the vector has non-finite entries")
    if float(v.float().norm()) == 0.0:
        raise TraitflowError(f"{what}: the vector is zero, it has no direction")
    return v


def _check_positions(positions: str, what: str) -> None:
    if positions not in POSITION_SETS:
        raise TraitflowError(f"{what}: unknown positions {positions!r}; expected one of {', '.join(POSITION_SETS)}")


# eq=False: fields hold tensors, which do not compare to a single bool; identity is equality.
@dataclass(frozen=True, eq=False)
class Steer:
    """Add ``coefficient · unit(vector)`` to the residual output of decoder block ``layer``.

    Args:
        vector: ``[hidden]`` direction (any norm; normalised inside).
        layer: decoder block whose output is steered (0-based).
        coefficient: activation units; 0 is exactly the unsteered model.
        positions: ``all`` | ``prompt`` | ``response`` (see the module docstring).
    """

    vector: "torch.Tensor"
    layer: int
    coefficient: float
    positions: Literal["all", "prompt", "response"] = "response"

    def __post_init__(self) -> None:
        object.__setattr__(self, "vector", _as_vector(self.vector, "Steer"))
        object.__setattr__(self, "layer", int(self.layer))
        object.__setattr__(self, "coefficient", float(self.coefficient))
        if not math.isfinite(self.coefficient):
            raise TraitflowError(f"Steer: coefficient must be finite, got {self.coefficient}")
        _check_positions(self.positions, "Steer")


@dataclass(frozen=True, eq=False)
class Ablate:
    """Project ``unit(vector)`` out, ``h ← h − (h·v̂) v̂``, at every listed layer (None: every layer).

    Applies to every real token (prompt and response). The embedding output (the input of
    block 0) is not touched: layer L is always the output of block L.
    """

    vector: "torch.Tensor"
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "vector", _as_vector(self.vector, "Ablate"))
        if self.layers is not None:
            layers = tuple(sorted({int(layer) for layer in self.layers}))
            if not layers:
                raise TraitflowError("Ablate: layers is empty (use None for every layer)")
            object.__setattr__(self, "layers", layers)


@dataclass(frozen=True, eq=False)
class Cap:
    """Clamp the projection ``h·unit(vector)`` into ``[floor, ceiling]`` at ``layer``.

    Either bound may be None (no bound on that side), not both. Only the component along
    ``v̂`` changes: ``h ← h + (clamp(h·v̂) − h·v̂) v̂``.
    """

    vector: "torch.Tensor"
    layer: int
    floor: float | None = None
    ceiling: float | None = None
    positions: Literal["all", "prompt", "response"] = "all"

    def __post_init__(self) -> None:
        object.__setattr__(self, "vector", _as_vector(self.vector, "Cap"))
        object.__setattr__(self, "layer", int(self.layer))
        if self.floor is None and self.ceiling is None:
            raise TraitflowError("Cap: give a floor, a ceiling or both")
        for name in ("floor", "ceiling"):
            value = getattr(self, name)
            if value is not None:
                value = float(value)
                if math.isnan(value):
                    raise TraitflowError(f"Cap: {name} is NaN")
                object.__setattr__(self, name, value)
        if self.floor is not None and self.ceiling is not None and self.floor > self.ceiling:
            raise TraitflowError(f"Cap: floor {self.floor} is above ceiling {self.ceiling}")
        _check_positions(self.positions, "Cap")


Intervention = Steer | Ablate | Cap
Config = tuple[Intervention, ...]


@dataclass
class StepState:
    """Where the hooked model is in its sequence; yielded by :func:`intervene`.

    Attributes:
        prompt_lens: unpadded prompt length per batch row.
        width: the left-padded prompt width, ``max(prompt_lens)``; row ``r`` has
            ``width − prompt_lens[r]`` pad tokens on the left.
        seen: positions already processed in the current sequence (prefill + decode steps);
            the next forward's tokens sit at ``seen, seen + 1, …``.
        forwards: forward passes seen since the context opened.

    Positions advance by the sequence length of each forward (counted at block 0), which is
    exactly the KV-cache layout of ``model.generate``. For an unrelated forward pass in the
    same context (a fresh sequence, no cache), call :meth:`reset` first.
    """

    prompt_lens: list[int]
    width: int
    seen: int = 0
    forwards: int = 0
    _masks: dict[str, Any] = field(default_factory=dict, repr=False)

    def reset(self) -> None:
        """Start a new sequence: the next forward's first token is position 0 again."""
        self.seen = 0
        self._masks.clear()


# --------------------------------------------------------------------------- internals
@dataclass
class _Stage:
    """One intervention per row at one layer (identity rows: zero vector, coefficient 0)."""

    unit: Any  # [R, H] float32, R = batch or 1 when every row has the same op
    coef: Any  # [R] float32
    lo: Any  # [R] float32 (-inf when unbounded)
    hi: Any  # [R] float32 (+inf when unbounded)
    in_prompt: Any  # [R] bool: acts at prompt positions
    in_response: Any  # [R] bool: acts at response positions
    project: bool  # some row clamps the projection (Ablate / Cap)
    any_response: bool  # some row acts at response positions (else decode steps skip the stage)
    key: str  # cache key of this stage's mask within one forward
    response_delta: Any = None  # [R, H] what a steer-only stage adds at a decode step

    def __post_init__(self) -> None:
        self.response_delta = (self.coef * self.in_response)[:, None] * self.unit

    def to(self, device: Any) -> None:
        """Move the tensors (a model split over devices puts blocks on different devices)."""
        for name in ("unit", "coef", "lo", "hi", "in_prompt", "in_response", "response_delta"):
            setattr(self, name, getattr(self, name).to(device))


def _unit(vector: Any, hidden: int, device: Any, what: str) -> Any:
    import torch

    if vector.numel() != hidden:
        raise TraitflowError(f"{what}: vector has {vector.numel()} entries but the model's hidden size is {hidden}")
    v = vector.detach().to(device=device, dtype=torch.float32)
    return v / v.norm()


def _layers_of(op: Intervention, n_layers: int) -> tuple[int, ...]:
    if isinstance(op, Ablate):
        layers = op.layers if op.layers is not None else tuple(range(n_layers))
    elif isinstance(op, (Steer, Cap)):
        layers = (op.layer,)
    else:
        raise TypeError(f"not an intervention: {type(op).__name__}")
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise TraitflowError(f"{type(op).__name__}: layer {layer} is out of range: valid layers are 0-{n_layers - 1}")
    return layers


def _op_params(op: Intervention) -> tuple[float, float, float, bool, bool]:
    """(coefficient, lo, hi, acts on prompt, acts on response)."""
    inf = math.inf
    if isinstance(op, Steer):
        return op.coefficient, -inf, inf, op.positions != "response", op.positions != "prompt"
    if isinstance(op, Ablate):
        return 0.0, 0.0, 0.0, True, True
    floor = -inf if op.floor is None else op.floor
    ceiling = inf if op.ceiling is None else op.ceiling
    return 0.0, floor, ceiling, op.positions != "response", op.positions != "prompt"


def _build_stages(loaded: Any, configs: Sequence[Sequence[Intervention]], row_config: Sequence[int]) -> dict[int, list[_Stage]]:
    import torch

    n_layers = loaded.n_layers
    hidden = loaded.hidden_size
    device = loaded.device
    units: dict[int, Any] = {}  # id(op) -> unit vector on device

    # per config: layer -> ordered ops at that layer
    per_config: list[dict[int, list[Intervention]]] = []
    for k, config in enumerate(configs):
        at: dict[int, list[Intervention]] = {}
        for op in config:
            if not isinstance(op, (Steer, Ablate, Cap)):
                raise TypeError(f"config {k}: not an intervention: {type(op).__name__}")
            for layer in _layers_of(op, n_layers):
                at.setdefault(layer, []).append(op)
            if id(op) not in units:
                units[id(op)] = _unit(op.vector, hidden, device, f"config {k}, {type(op).__name__}")
        per_config.append(at)

    used = sorted(set(row_config))
    layers = sorted({layer for k in used for layer in per_config[k]})
    stages: dict[int, list[_Stage]] = {}
    for layer in layers:
        depth = max(len(per_config[k].get(layer, ())) for k in used)
        ops_of_row = [per_config[k].get(layer, []) for k in row_config]
        for s in range(depth):
            row_ops = [ops[s] if s < len(ops) else None for ops in ops_of_row]
            uniform = all(op is not None and op is row_ops[0] for op in row_ops)
            rows = row_ops[:1] if uniform else row_ops
            unit = torch.zeros((len(rows), hidden), dtype=torch.float32, device=device)
            params = []
            for r, op in enumerate(rows):
                if op is None:
                    params.append((0.0, -math.inf, math.inf, False, False))
                else:
                    unit[r] = units[id(op)]
                    params.append(_op_params(op))
            coef, lo, hi, in_p, in_r = zip(*params, strict=True)
            project = any(isinstance(op, (Ablate, Cap)) for op in rows)
            stages.setdefault(layer, []).append(
                _Stage(
                    unit=unit,
                    coef=torch.tensor(coef, dtype=torch.float32, device=device),
                    lo=torch.tensor(lo, dtype=torch.float32, device=device),
                    hi=torch.tensor(hi, dtype=torch.float32, device=device),
                    in_prompt=torch.tensor(in_p, dtype=torch.bool, device=device),
                    in_response=torch.tensor(in_r, dtype=torch.bool, device=device),
                    project=project,
                    any_response=any(in_r),
                    key=f"{layer}/{s}",
                )
            )
    return stages


def _apply(h: Any, stages: list[_Stage], state: StepState, geometry: dict[str, Any]) -> Any:
    """h with every stage applied in order (float32 arithmetic, cast back once).

    Every row goes through the same elementwise arithmetic whichever path a stage takes:
    a steer adds ``(c · m) · v̂`` (m = 1 or 0), and ``(clamp(p) − p) + c`` is exactly ``c``
    when nothing clamps — so a row's result does not depend on the other rows of the batch.
    """
    import torch

    hf = h.float()
    decode = geometry["decode"]
    for stage in stages:
        if stage.unit.device != hf.device:
            stage.to(hf.device)
        if decode:  # every position is a response position, none a prompt position
            if not stage.any_response:
                continue
            if not stage.project:
                hf = hf + stage.response_delta[:, None, :]
                continue
            mask = stage.in_response[:, None]
        else:
            mask = state._masks.get(stage.key)
            if mask is None:
                is_prompt, is_response = geometry["is_prompt"], geometry["is_response"]  # [B, T], [T]
                if is_response.device != hf.device:
                    is_prompt, is_response = is_prompt.to(hf.device), is_response.to(hf.device)
                mask = (stage.in_response[:, None] & is_response[None, :]) | (stage.in_prompt[:, None] & is_prompt)
                state._masks[stage.key] = mask
        if stage.project:
            proj = (hf * stage.unit[:, None, :]).sum(-1)  # [B, T]
            target = torch.minimum(torch.maximum(proj, stage.lo[:, None]), stage.hi[:, None])
            coef_mask = ((target - proj) + stage.coef[:, None]) * mask
        else:
            coef_mask = stage.coef[:, None] * mask
        hf = hf + coef_mask[..., None] * stage.unit[:, None, :]
    return hf if hf.dtype == h.dtype else hf.to(h.dtype)


# --------------------------------------------------------------------------- public context manager
@contextmanager
def intervene(
    loaded: Any,
    configs: Sequence[Sequence[Intervention]],
    row_config: Sequence[int],
    prompt_lens: Sequence[int],
) -> Iterator[StepState]:
    """Apply per-row intervention configurations to every forward pass inside the block.

    Args:
        loaded: a :class:`~traitflow.model.loading.LoadedModel` (a PEFT wrapper works too).
        configs: intervention configurations; a configuration is a tuple of interventions
            applied in order at each layer (``()`` is the unsteered model).
        row_config: for each batch row, the index of its configuration in ``configs``.
        prompt_lens: unpadded prompt length per row; the batch must be left-padded to
            ``max(prompt_lens)`` (as :func:`traitflow.model.hooks.left_pad_batch` does).

    Yields:
        The :class:`StepState` that tracks positions across the prefill and decode steps.

    Works for the prefill forward (seq_len > 1) and each KV-cache decode step (seq_len == 1).
    Holds :func:`~traitflow.model.hooks.model_lock` while the hooks are on the model, and
    removes every hook on exit, also when the body raises.

    Example:
        >>> with intervene(loaded, [(Steer(v, 2, 4.0),)], [0, 0], [5, 3]) as state:
        ...     out = loaded.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8)
    """
    import torch

    row_config = [int(k) for k in row_config]
    prompt_lens = [int(n) for n in prompt_lens]
    if len(row_config) != len(prompt_lens):
        raise ValueError(f"row_config has {len(row_config)} rows but prompt_lens has {len(prompt_lens)}")
    if not row_config:
        raise ValueError("intervene needs at least one batch row")
    for r, k in enumerate(row_config):
        if not 0 <= k < len(configs):
            raise ValueError(f"row {r}: configuration index {k} is out of range (have {len(configs)} configurations)")
    if min(prompt_lens) < 1:
        raise ValueError("every prompt needs at least one token")

    stages = _build_stages(loaded, configs, row_config)
    width = max(prompt_lens)
    state = StepState(prompt_lens=prompt_lens, width=width)
    batch = len(row_config)
    device = loaded.device
    pads = torch.tensor([width - n for n in prompt_lens], dtype=torch.long, device=device)
    geometry: dict[str, Any] = {}

    def start_forward(h: Any) -> None:
        if h.shape[0] != batch:
            raise ValueError(f"intervene was set up for {batch} rows but the forward pass has {h.shape[0]}")
        seq = h.shape[1]
        # past the prompt (KV-cache decode steps) every position is a response position: no masks
        geometry["decode"] = state.seen >= width
        if not geometry["decode"]:
            pos = torch.arange(state.seen, state.seen + seq, device=pads.device)
            geometry["is_response"] = pos >= width - 1
            geometry["is_prompt"] = (pos[None, :] >= pads[:, None]) & (pos[None, :] < width)
        state.seen += seq
        state.forwards += 1
        state._masks.clear()

    def make_hook(layer: int, layer_stages: list[_Stage]) -> Any:
        def hook(module: Any, inputs: Any, output: Any) -> Any:
            h = output_tensor(output)
            if layer == 0:
                start_forward(h)
            if not layer_stages:
                return None
            return replace_output(output, _apply(h, layer_stages, state, geometry))

        return hook

    blocks = decoder_layers(loaded.model)
    hooks = []
    if stages:
        hooks = [(blocks[0], make_hook(0, stages.get(0, [])))]
        hooks += [(blocks[layer], make_hook(layer, st)) for layer, st in sorted(stages.items()) if layer != 0]
    with model_lock(loaded.model), add_hooks(hooks):
        yield state
