"""A benchmark's conditions as interventions: what each one does to the model while it is scored.

- ``baseline``: the model as it is.
- ``{steer: TRAIT, coef: C}``: add ``C · v̂`` to the residual stream, at the trait's best layer
  (``best_vector``'s) or the ``layer`` given — at the positions where the model answers (multiple
  choice: the last context token and the choice's tokens, as the steering search applied it) or at
  every token (``ce_loss``); ``v̂`` is the trait's best vector
  (unit length), so ``C`` is in activation units, the units of ``best_vector.coefficient`` and of
  ``traitflow monitor --steer``. ``coef: best`` is ``best_vector``'s own coefficient and
  ``coef: -best`` its opposite.
- ``{ablate: TRAIT}``: directional ablation, the refusal-direction method: ``h ← h − (h·v̂) v̂`` at
  the output of every decoder block, at every token, so no layer can write along ``v̂`` (not
  negative steering, which only pushes at one layer).

Each condition has a stable name (``baseline``, ``steer toy/optimism -80``, ``steer toy/optimism
best@L3``, ``ablate toy/refusal``): the key of its results in the artifact and in
``traitflow report --json``.
"""

from dataclasses import dataclass
from typing import Any

from traitflow.errors import TraitflowError

__all__ = ["Condition", "condition_name", "resolve_conditions"]


@dataclass(frozen=True)
class Condition:
    name: str
    config: tuple  # interventions for traitflow.steer.interventions.intervene; () is the baseline
    detail: dict[str, Any]  # what was applied: trait, layer, coefficient, vector source


def condition_name(spec: Any) -> str:
    """The stable name of a condition spec (``"baseline"`` or a SteerCondition / AblateCondition)."""
    if spec == "baseline":
        return "baseline"
    if hasattr(spec, "steer"):
        coef = spec.coef if isinstance(spec.coef, str) else f"{spec.coef:g}"
        return f"steer {spec.steer} {coef}" + (f"@L{spec.layer}" if spec.layer is not None else "")
    return f"ablate {spec.ablate}"


def resolve_conditions(ctx: Any, specs: list[Any], positions: str = "response", n_layers: int | None = None) -> list[Condition]:
    """Each condition with its interventions, from this experiment's stored best vectors.

    `positions` is where a steer applies (:class:`~traitflow.steer.interventions.Steer`):
    ``response`` for multiple choice (the last context token and the choice's tokens — what the
    model says, where the steering search tuned ``best_vector``'s coefficient), ``all`` for text
    scored as a whole (``ce_loss``). `n_layers`: the model's depth, to check ``layer:``.

    Raises:
        TraitflowError when a trait named has no best vector yet (materialize best_vector first),
        or ``coef: best`` names one chosen without steering (it has no coefficient).
    """
    from traitflow.stages.which_vector import best_steering_vector
    from traitflow.steer.interventions import Ablate, Steer

    out = []
    for spec in specs:
        name = condition_name(spec)
        if spec == "baseline":
            out.append(Condition(name, (), {}))
            continue
        trait = spec.steer if hasattr(spec, "steer") else spec.ablate
        choice = best_steering_vector(ctx, trait)
        if choice is None:
            raise TraitflowError(f"benchmark condition {name!r}: {trait} has no best vector yet; "
                                 f"run `traitflow run {ctx.experiment.name} --stages selection` first")
        if hasattr(spec, "ablate"):
            out.append(Condition(name, (Ablate(choice.vector),), {"trait": trait, "vector": choice.description}))
            continue
        coefficient = spec.coef
        if isinstance(coefficient, str):
            if choice.coefficient is None:
                raise TraitflowError(f"benchmark condition {name!r}: {trait}'s best vector was chosen without steering "
                                     "(best_vector has no coefficient); give coef a number")
            coefficient = -choice.coefficient if coefficient == "-best" else choice.coefficient
        layer = choice.layer if spec.layer is None else spec.layer
        if n_layers is not None and not 0 <= layer < n_layers:
            raise TraitflowError(f"benchmark condition {name!r}: layer {layer} is out of range (layers 0-{n_layers - 1})")
        if layer != choice.layer:
            if choice.method == "cma_es":
                raise TraitflowError(f"benchmark condition {name!r}: {trait}'s best vector is a CMA-ES refinement, made at "
                                     f"layer {choice.layer} only; drop layer: or set steering.cma_es.enabled: false")
            choice = best_steering_vector(ctx, trait, layer=layer) or choice
        out.append(Condition(name, (Steer(choice.vector, layer, float(coefficient), positions=positions),),
                             {"trait": trait, "layer": layer, "coefficient": float(coefficient), "positions": positions,
                              "vector": choice.description}))
    return out
