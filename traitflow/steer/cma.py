"""CMA-ES refinement of a steering vector: the ``cma_es`` vector method.

Starting from an extracted vector and the coefficient the adaptive search found for it
(:mod:`traitflow.steer.search`), CMA-ES (the ``cma`` package) searches jointly over

- the direction, inside a random ``subspace_dim``-dimensional subspace orthogonal to the
  extracted vector: ``v = normalise(v0 + B @ x[:k])``, ``B`` a seeded random orthonormal
  ``[hidden, k]`` basis with ``B.T @ v0 = 0``;
- the coefficient, log-multiplicatively: ``c = c0 * exp(x[k])`` (its sign never changes).

The search starts at ``x = 0``, i.e. exactly the extracted vector at the searched coefficient;
that point is injected into the first generation, so the result is never worse than the start.

Fitness (maximised; CMA minimises ``-fitness``)::

    direction * trait_mean          if coherence_mean >= min_coherence
    PENALTY + coherence_mean        otherwise, or when trait_mean is None (PENALTY = -1000)

so every coherent candidate beats every incoherent one, and among incoherent ones the more
coherent wins (the search is pulled back towards the coherent region).

``evaluate`` is called once per generation with the whole population, as a list of
``(unit vector, coefficient)``, and returns one ``(trait_mean, coherence_mean)`` per candidate,
so a caller can run the population as one batched steered generation;
:func:`steering_evaluator` builds such a function for a :class:`~traitflow.steer.run.SteeringSetup`.

Determinism: the subspace comes from a ``torch.Generator`` seeded with ``seed``; CMA's sampling
uses cma's own ``seed`` option. cma seeds NumPy's *global* generator, so this module swaps that
state in only around cma's own calls and restores the caller's afterwards: the same seed gives
the same candidates whatever ``evaluate`` does with ``numpy.random``.

Example:
    >>> result = optimize_direction(evaluate, vectors[layer], coefficient, direction=+1, generations=6)
    >>> result.vector, result.coefficient, result.fitness, result.history[-1]["sigma"]
"""

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["METHOD", "PENALTY", "CmaResult", "fitness_of", "optimize_direction", "steering_evaluator", "subspace_basis"]

METHOD = "cma_es"
PENALTY = -1000.0

Evaluate = Callable[[list[tuple[torch.Tensor, float]]], Sequence[tuple[float | None, float | None]]]


@dataclass
class CmaResult:
    vector: torch.Tensor  # unit vector [hidden], float32
    coefficient: float  # activation units, same sign as the initial coefficient
    fitness: float  # best fitness found
    history: list[dict]  # per generation: generation, best_fitness, mean_fitness, sigma, evaluations (+ best_so_far)
    evaluations: int
    start_fitness: float | None = None  # fitness of x = 0 (the extracted vector at the initial coefficient)
    trait_mean: float | None = None  # of the best candidate
    coherence_mean: float | None = None  # of the best candidate
    feasible: bool = False  # the best candidate met min_coherence
    cosine_to_init: float = 1.0  # cos(result vector, initial vector)
    x: list[float] = field(default_factory=list)  # the best point in search coordinates

    def to_dict(self) -> dict:
        """JSON-ready summary (everything but the vector)."""
        return {
            "method": METHOD,
            "coefficient": self.coefficient,
            "fitness": self.fitness,
            "start_fitness": self.start_fitness,
            "trait_mean": self.trait_mean,
            "coherence_mean": self.coherence_mean,
            "feasible": self.feasible,
            "cosine_to_init": self.cosine_to_init,
            "evaluations": self.evaluations,
            "x": list(self.x),
            "history": [dict(h) for h in self.history],
        }


def _feasible(trait_mean: float | None, coherence_mean: float | None, min_coherence: float) -> bool:
    return (
        trait_mean is not None
        and math.isfinite(trait_mean)
        and coherence_mean is not None
        and math.isfinite(coherence_mean)
        and coherence_mean >= min_coherence
    )


def fitness_of(trait_mean: float | None, coherence_mean: float | None, direction: int = 1, min_coherence: float = 77.0) -> float:
    """The maximised fitness of one candidate (see the module docstring)."""
    if _feasible(trait_mean, coherence_mean, min_coherence):
        return float(direction) * float(trait_mean)
    return PENALTY + (float(coherence_mean) if coherence_mean is not None and math.isfinite(coherence_mean) else 0.0)


def subspace_basis(init_vector: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """A seeded random orthonormal basis ``[hidden, dim]`` (float32) orthogonal to ``init_vector``."""
    v0 = _unit(init_vector).double()
    hidden = v0.shape[0]
    if not 0 <= dim <= hidden - 1:
        raise ValueError(f"subspace_dim must be between 0 and hidden - 1 = {hidden - 1}, got {dim}")
    if dim == 0:
        return torch.zeros((hidden, 0), dtype=torch.float32)
    generator = torch.Generator().manual_seed(int(seed))
    g = torch.randn((hidden, dim), generator=generator, dtype=torch.float64)
    for _ in range(2):  # project v0 out twice, before and after orthonormalising, for round-off
        g = g - torch.outer(v0, v0 @ g)
        g, _ = torch.linalg.qr(g)
    return g.float()


def optimize_direction(
    evaluate: Evaluate,
    init_vector: torch.Tensor,
    init_coefficient: float,
    *,
    direction: int = 1,
    min_coherence: float = 77.0,
    subspace_dim: int = 8,
    sigma0: float = 0.3,
    generations: int = 6,
    popsize: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> CmaResult:
    """Refine ``init_vector`` and ``init_coefficient`` by CMA-ES (see the module docstring).

    Args:
        evaluate: ``[(unit vector, coefficient)] -> [(trait_mean, coherence_mean)]``, called once
            per generation with the whole population.
        init_vector: the extracted vector ``[hidden]`` (any norm).
        init_coefficient: the starting coefficient in activation units (non-zero; its sign is
            kept, so pass it with the steering direction already applied).
        direction: +1 maximises the trait mean, -1 minimises it.
        min_coherence: coherence a candidate needs to count.
        subspace_dim: dimensions of the direction search (0: coefficient only).
        sigma0: initial CMA step size in search coordinates (a step of 1 in the subspace is a
            45° turn; 1 in the last coordinate is a factor e on the coefficient).
        generations: CMA generations (= calls to ``evaluate``).
        popsize: candidates per generation (default: cma's ``4 + 3 ln(subspace_dim + 1)``).
        seed: seeds the subspace and CMA's sampling.
        log: optional progress callback, one line per generation.
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction}")
    if not math.isfinite(init_coefficient) or init_coefficient == 0:
        raise ValueError(f"init_coefficient must be finite and non-zero (it is scaled multiplicatively), got {init_coefficient}")
    if generations < 1:
        raise ValueError(f"generations must be at least 1, got {generations}")
    if sigma0 <= 0:
        raise ValueError(f"sigma0 must be positive, got {sigma0}")
    if popsize is not None and popsize < 2:
        raise ValueError(f"popsize must be at least 2, got {popsize}")

    import numpy as np

    v0 = _unit(init_vector)
    basis = subspace_basis(v0, subspace_dim, seed)
    k = subspace_dim
    c0 = float(init_coefficient)

    def decode(x: Any) -> tuple[torch.Tensor, float]:
        x = np.asarray(x, dtype=np.float64)
        step = torch.from_numpy(x[:k]).double()
        v = v0.double() + basis.double() @ step if k else v0.double()
        return (v / v.norm()).float(), c0 * math.exp(float(np.clip(x[k], -20.0, 20.0)))

    options: dict[str, Any] = {
        "seed": _cma_seed(seed),
        "verbose": -9,
        "maxiter": generations,
        "tolfun": 0,
        "tolx": 0,
        "tolflatfitness": generations + 1,
        "tolstagnation": generations + 1,
    }
    if popsize is not None:
        options["popsize"] = int(popsize)
    dim = max(k + 1, 2)  # cma refuses 1-D problems: with subspace_dim 0 a second coordinate is sampled and ignored

    rng = _NumpyState()
    with rng.active():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Could not import matplotlib.pyplot": plotting is not used
            import cma
        es = cma.CMAEvolutionStrategy(np.zeros(dim), sigma0, options)
        es.inject([np.zeros(dim)], force=True)  # the start point is in the first generation

    history: list[dict] = []
    evaluations = 0
    best: tuple[float, Any, float | None, float | None] | None = None
    start_fitness: float | None = None
    for generation in range(generations):
        with rng.active():
            xs = es.ask()
        candidates = [decode(x) for x in xs]
        results = list(evaluate(candidates))
        if len(results) != len(candidates):
            raise ValueError(f"evaluate returned {len(results)} results for {len(candidates)} candidates")
        fitnesses = [fitness_of(t, c, direction, min_coherence) for t, c in results]
        evaluations += len(candidates)
        if generation == 0:
            start = next((i for i, x in enumerate(xs) if not np.any(x)), None)
            start_fitness = fitnesses[start] if start is not None else None
        for x, f, (t, c) in zip(xs, fitnesses, results, strict=True):
            if best is None or f > best[0]:
                best = (f, np.array(x, dtype=np.float64), t, c)
        with rng.active():
            es.tell(xs, [-f for f in fitnesses])
        history.append(
            {
                "generation": generation,
                "best_fitness": max(fitnesses),
                "mean_fitness": sum(fitnesses) / len(fitnesses),
                "sigma": float(es.sigma),
                "evaluations": evaluations,
                "best_so_far": best[0],
            }
        )
        if log is not None:
            h = history[-1]
            log(
                f"cma_es generation {generation}: best {h['best_fitness']:.2f}, mean {h['mean_fitness']:.2f}, "
                f"sigma {h['sigma']:.3f}, best so far {h['best_so_far']:.2f}"
            )

    assert best is not None
    fitness, x_best, trait_mean, coherence_mean = best
    vector, coefficient = decode(x_best)
    return CmaResult(
        vector=vector,
        coefficient=coefficient,
        fitness=fitness,
        history=history,
        evaluations=evaluations,
        start_fitness=start_fitness,
        trait_mean=trait_mean,
        coherence_mean=coherence_mean,
        feasible=_feasible(trait_mean, coherence_mean, min_coherence),
        cosine_to_init=float(vector.double() @ v0.double()),
        x=[float(v) for v in x_best[: k + 1]],
    )


def steering_evaluator(
    loaded: Any,
    judge: Any,
    setup: Any,
    layer: int,
    *,
    record: Callable[[int, torch.Tensor, float, list[dict], dict], None] | None = None,
) -> Evaluate:
    """An ``evaluate`` for :func:`optimize_direction` over a :class:`~traitflow.steer.run.SteeringSetup`.

    Each call steers ``setup.questions`` with ``Steer(vector, layer, coefficient, positions="response")``
    for every candidate, all in one :func:`~traitflow.steer.generate.steered_generate` call, and
    scores them with :func:`~traitflow.steer.run.judge_answers`. ``record(call, vector, coefficient,
    answers, summary)`` (optional) sees every candidate's answers and summary, e.g. to log them.
    """
    from traitflow.model.chat import prompt_ids
    from traitflow.steer.generate import steered_generate
    from traitflow.steer.interventions import Steer
    from traitflow.steer.run import judge_answers

    prompts = [prompt_ids(loaded, q, getattr(setup, "system_prompt", None)) for q in setup.questions]
    calls = [0]

    def evaluate(candidates: list[tuple[torch.Tensor, float]]) -> list[tuple[float | None, float | None]]:
        configs = [(Steer(vector=v, layer=layer, coefficient=c, positions="response"),) for v, c in candidates]
        all_prompts = [p for _ in configs for p in prompts]
        config_of_prompt = [i for i in range(len(configs)) for _ in prompts]
        generations = steered_generate(loaded, all_prompts, configs, config_of_prompt, setup.max_new_tokens, setup.batch_size)
        out = []
        n = len(prompts)
        for i, (v, c) in enumerate(candidates):
            answers = [
                {"question": q, "answer": g.text} for q, g in zip(setup.questions, generations[i * n : (i + 1) * n], strict=True)
            ]
            summary = judge_answers(judge, setup.trait, answers, setup.direction)
            if record is not None:
                record(calls[0], v, c, answers, summary)
            out.append((summary["trait_mean"], summary["coherence_mean"]))
        calls[0] += 1
        return out

    return evaluate


# --------------------------------------------------------------------------- helpers
def _unit(vector: Any) -> torch.Tensor:
    v = torch.as_tensor(vector).detach().to(torch.float32).flatten().cpu()
    norm = float(v.double().norm())
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError("init_vector must be finite and non-zero")
    return (v.double() / norm).float()


def _cma_seed(seed: int) -> int:
    """cma reads a seed of 0 (or None) as 'seed from the clock': map every int to [1, 2**32 - 1]."""
    return int(seed) % (2**32 - 1) + 1


class _NumpyState:
    """cma samples from NumPy's global generator: keep its state apart from the caller's."""

    def __init__(self) -> None:
        self.state: Any = None

    @contextmanager
    def active(self) -> Iterator[None]:
        import numpy as np

        outer = np.random.get_state()
        if self.state is not None:
            np.random.set_state(self.state)
        try:
            yield
        finally:
            self.state = np.random.get_state()
            np.random.set_state(outer)
