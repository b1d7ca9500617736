"""Adaptive coefficient search: for each layer, the strongest steering that keeps the model coherent.

Coefficients are searched as multiples m of the layer's mean activation norm (taken from the
stored activations), so one schedule fits every layer and model. All layers move in lockstep: each
step evaluates every still-open layer's current multiplier in one batched generation.

Per layer: start at `start` (default 0.5×). While coherence holds the target, multiply up by `up`;
once it drops, multiply down by `down`; as soon as a good and a bad multiplier bracket the edge,
bisect geometrically between them. A layer stops when the bracket is narrower than `tolerance` (or
after `steps` evaluations). The schedule is a pure function of the results so far, which is what
lets an interrupted search resume from its log.

`run_grid` replaces the search with a fixed grid of multipliers (`steering.coefficients`): every
layer at every multiplier, one multiplier across all layers per evaluation, with the same reuse of
logged results.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Schedule:
    steps: int = 5
    start: float = 0.5
    up: float = 1.6
    down: float = 0.6
    tolerance: float = 1.15  # stop when bad/good < tolerance
    coherence_target: float = 80.0


@dataclass
class LayerState:
    layer: int
    multipliers: list[float] = field(default_factory=list)  # evaluated, in order
    good: float | None = None  # largest multiplier whose coherence met the target
    bad: float | None = None  # smallest multiplier whose coherence missed it

    def record(self, multiplier: float, coherence: float, target: float) -> None:
        self.multipliers.append(multiplier)
        if coherence >= target:
            self.good = multiplier if self.good is None else max(self.good, multiplier)
        else:
            self.bad = multiplier if self.bad is None else min(self.bad, multiplier)

    def next_multiplier(self, schedule: Schedule) -> float | None:
        if len(self.multipliers) >= schedule.steps:
            return None
        if not self.multipliers:
            return schedule.start
        if self.good is not None and self.bad is not None:
            if self.bad <= self.good or self.bad / self.good < schedule.tolerance:
                return None  # converged on the edge
            return math.sqrt(self.good * self.bad)
        last = self.multipliers[-1]
        return last * schedule.up if self.bad is None else last * schedule.down


def round_multiplier(value: float) -> float:
    """Finished configurations are recognised by rounded values, never by exact float equality."""
    return round(value, 4)


def run_search(
    layers: list[int],
    schedule: Schedule,
    evaluate: Callable[[dict[int, float]], dict[int, tuple[float, float]]],
    known: dict[tuple[int, float], tuple[float, float]] | None = None,
) -> dict[int, LayerState]:
    """Search every layer; `evaluate({layer: multiplier}) -> {layer: (trait_mean, coherence_mean)}`.

    `known` holds results already in the log, keyed by (layer, rounded multiplier): they are reused
    instead of evaluated again, so a resumed search redoes nothing that finished.
    """
    known = dict(known or {})
    states = {layer: LayerState(layer) for layer in layers}
    while True:
        proposals = {}
        for layer, state in states.items():
            multiplier = state.next_multiplier(schedule)
            if multiplier is not None:
                proposals[layer] = round_multiplier(multiplier)
        if not proposals:
            return states
        _step(states, proposals, evaluate, known, schedule.coherence_target)


def grid_multipliers(coefficients: list[float]) -> list[float]:
    """A fixed grid's multipliers, rounded like every configuration and without repeats (order kept)."""
    return list(dict.fromkeys(round_multiplier(c) for c in coefficients))


def run_grid(
    layers: list[int],
    coefficients: list[float],
    evaluate: Callable[[dict[int, float]], dict[int, tuple[float, float]]],
    known: dict[tuple[int, float], tuple[float, float]] | None = None,
    coherence_target: float = Schedule.coherence_target,
) -> dict[int, LayerState]:
    """Evaluate every (layer, multiplier) of a fixed grid instead of searching.

    Like :func:`run_search`, one multiplier is evaluated at all layers per `evaluate` call, and
    results in `known` (keyed by (layer, rounded multiplier)) are reused rather than evaluated again.
    The returned states hold each layer's multipliers in grid order (good/bad against `coherence_target`).
    """
    known = dict(known or {})
    states = {layer: LayerState(layer) for layer in layers}
    for multiplier in grid_multipliers(coefficients):
        _step(states, {layer: multiplier for layer in layers}, evaluate, known, coherence_target)
    return states


def _step(states: dict[int, LayerState], proposals: dict[int, float],
          evaluate: Callable[[dict[int, float]], dict[int, tuple[float, float]]],
          known: dict[tuple[int, float], tuple[float, float]], coherence_target: float) -> None:
    """Evaluate the proposals not yet in `known` (one batched call), then record them all."""
    todo = {layer: m for layer, m in proposals.items() if (layer, m) not in known}
    if todo:
        for layer, result in evaluate(todo).items():
            known[(layer, todo[layer])] = result
    for layer, multiplier in proposals.items():
        _, coherence = known[(layer, multiplier)]
        states[layer].record(multiplier, coherence, coherence_target)
