"""CMA-ES direction refinement (`cma_es`): known optima on synthetic rewards, determinism, batching,
the coherence constraint, and one short run on the toy chat model."""

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from traitflow.steer.cma import PENALTY, CmaResult, fitness_of, optimize_direction, steering_evaluator, subspace_basis

REPO = Path(__file__).resolve().parents[1]
OPTIMISM = REPO / "datasets" / "traits" / "toy" / "optimism"
HIDDEN, K, SEED, C0 = 48, 8, 3, 4.0


def _init_vector() -> torch.Tensor:
    return torch.randn(HIDDEN, generator=torch.Generator().manual_seed(11)) * 7.0  # not unit: normalised inside


class Synthetic:
    """Quadratic reward peaked at a known direction inside the search subspace and a known coefficient;
    coherence falls off linearly once the coefficient passes `edge`."""

    def __init__(self, peak_step: list[float], peak_factor: float, edge: float, seed: int = SEED):
        v0 = _init_vector()
        v0 = v0 / v0.norm()
        basis = subspace_basis(v0, K, seed)
        target = v0 + basis @ torch.tensor(peak_step, dtype=torch.float32)
        self.target = target / target.norm()
        self.v0 = v0
        self.peak = C0 * peak_factor
        self.edge = C0 * edge
        self.calls: list[list[tuple[torch.Tensor, float]]] = []

    def trait(self, vector: torch.Tensor, coefficient: float) -> float:
        miss = float((vector - self.target).norm()) ** 2
        return 90.0 - 60.0 * miss - 40.0 * math.log(coefficient / self.peak) ** 2

    def coherence(self, coefficient: float) -> float:
        return 95.0 if coefficient <= self.edge else 95.0 - 100.0 * (coefficient - self.edge) / C0

    def __call__(self, candidates):
        self.calls.append(list(candidates))
        return [(self.trait(v, c), self.coherence(c)) for v, c in candidates]


PEAK_STEP = [0.35, -0.25, 0.2, 0.0, 0.15, 0.0, -0.1, 0.0]


def test_improves_and_moves_towards_the_known_optimum():
    reward = Synthetic(PEAK_STEP, peak_factor=1.6, edge=3.0)  # the coherence edge is far away
    result = optimize_direction(reward, _init_vector(), C0, subspace_dim=K, seed=SEED, generations=12)
    assert isinstance(result, CmaResult)
    start = reward.trait(reward.v0, C0)
    assert result.start_fitness == pytest.approx(start, abs=1e-3)
    assert result.fitness > start + 5, (start, result.fitness)
    assert result.feasible and result.coherence_mean >= 77
    # Closer to the known direction and coefficient than the start.
    assert float(result.vector @ reward.target) > float(reward.v0 @ reward.target) + 0.02
    assert abs(math.log(result.coefficient / reward.peak)) < 0.5 * abs(math.log(C0 / reward.peak))
    assert result.coefficient > 0 and result.vector.dtype == torch.float32
    assert float(result.vector.norm()) == pytest.approx(1.0, abs=1e-5)
    assert result.cosine_to_init == pytest.approx(float(result.vector @ reward.v0), abs=1e-5)
    # One history entry per generation; the best so far never drops.
    assert [h["generation"] for h in result.history] == list(range(12))
    assert set(result.history[0]) >= {"generation", "best_fitness", "mean_fitness", "sigma", "evaluations"}
    best_so_far = [h["best_so_far"] for h in result.history]
    assert best_so_far == sorted(best_so_far) and best_so_far[-1] == result.fitness
    assert result.history[-1]["evaluations"] == result.evaluations == sum(len(c) for c in reward.calls)
    json.dumps(result.to_dict())


def test_coherence_constraint_binds():
    # The trait peaks at 2x the coefficient but coherence drops below 77 past ~1.55x.
    reward = Synthetic(PEAK_STEP, peak_factor=2.0, edge=1.4)
    result = optimize_direction(reward, _init_vector(), C0, subspace_dim=K, seed=SEED, generations=10)
    assert result.feasible
    assert result.coherence_mean >= 77 and reward.coherence(result.coefficient) >= 77
    assert result.coefficient <= C0 * 1.56
    assert result.fitness > result.start_fitness
    # Candidates past the edge were tried and penalised, not chosen.
    assert any(reward.coherence(c) < 77 for call in reward.calls for _, c in call)


def test_negative_direction_and_coefficient_sign():
    """direction=-1 minimises the trait; a negative starting coefficient keeps its sign."""

    def evaluate(candidates):
        # Lower trait for a stronger (more negative) coefficient, down to -2 * C0; incoherent beyond.
        return [(50.0 + 10.0 * max(c, -2 * C0), 90.0 if c >= -2 * C0 else 10.0) for _, c in candidates]

    result = optimize_direction(evaluate, _init_vector(), -C0, direction=-1, subspace_dim=2, seed=1, generations=8)
    assert result.coefficient < 0
    assert result.fitness == pytest.approx(-(50.0 + 10.0 * result.coefficient))
    assert result.fitness > result.start_fitness and result.coefficient >= -2 * C0


def test_same_seed_same_result_and_numpy_state_is_left_alone():
    def run(seed, noisy):
        reward = Synthetic(PEAK_STEP, peak_factor=1.6, edge=3.0)

        def evaluate(candidates):
            if noisy:
                np.random.rand(17)  # the caller's use of numpy.random must not change cma's samples
            return reward(candidates)

        return optimize_direction(evaluate, _init_vector(), C0, subspace_dim=K, seed=seed, generations=4), reward

    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    a, ra = run(0, False)
    assert np.random.rand() == expected  # the global generator was not reseeded under the caller
    b, rb = run(0, True)
    assert torch.equal(a.vector, b.vector) and a.coefficient == b.coefficient and a.fitness == b.fitness
    assert a.history == b.history and a.x == b.x
    for call_a, call_b in zip(ra.calls, rb.calls, strict=True):
        assert all(torch.equal(va, vb) and ca == cb for (va, ca), (vb, cb) in zip(call_a, call_b, strict=True))
    c, _ = run(1, False)
    assert c.history != a.history


def test_popsize_batches_the_whole_population():
    reward = Synthetic(PEAK_STEP, peak_factor=1.6, edge=3.0)
    result = optimize_direction(reward, _init_vector(), C0, subspace_dim=K, seed=SEED, generations=3, popsize=7)
    assert [len(call) for call in reward.calls] == [7, 7, 7]
    assert result.evaluations == 21 and [h["evaluations"] for h in result.history] == [7, 14, 21]
    # The first generation holds the start point exactly: the extracted vector at the initial coefficient.
    first = reward.calls[0]
    v0 = _init_vector() / _init_vector().norm()
    assert any(torch.allclose(v, v0, atol=1e-6) and c == pytest.approx(C0) for v, c in first)
    for call in reward.calls:
        for v, c in call:
            assert v.shape == (HIDDEN,) and v.dtype == torch.float32
            assert float(v.norm()) == pytest.approx(1.0, abs=1e-5) and c > 0
    # Default popsize: cma's 4 + 3 ln(N) for N = K + 1.
    reward.calls.clear()
    optimize_direction(reward, _init_vector(), C0, subspace_dim=K, generations=1)
    assert len(reward.calls) == 1 and len(reward.calls[0]) == 4 + int(3 * math.log(K + 1))


def test_coefficient_only_search():
    calls = []

    def evaluate(candidates):
        calls.append(candidates)
        return [(100.0 - (c - 6.0) ** 2, 90.0) for _, c in candidates]

    v0 = _init_vector()
    result = optimize_direction(evaluate, v0, C0, subspace_dim=0, seed=2, generations=8, sigma0=0.3)
    assert all(torch.allclose(v, v0 / v0.norm(), atol=1e-6) for call in calls for v, _ in call)
    assert abs(result.coefficient - 6.0) < abs(C0 - 6.0) / 2


def test_subspace_basis_and_fitness():
    v0 = _init_vector()
    basis = subspace_basis(v0, K, SEED)
    assert basis.shape == (HIDDEN, K) and basis.dtype == torch.float32
    assert torch.allclose(basis.T @ basis, torch.eye(K), atol=1e-5)
    assert float((basis.T @ (v0 / v0.norm())).abs().max()) < 1e-5
    assert torch.equal(basis, subspace_basis(v0, K, SEED)) and not torch.equal(basis, subspace_basis(v0, K, SEED + 1))
    with pytest.raises(ValueError):
        subspace_basis(v0, HIDDEN, 0)
    # Coherent candidates always beat incoherent ones; among incoherent ones, coherence orders them.
    assert fitness_of(10.0, 80.0) == 10.0 and fitness_of(10.0, 80.0, direction=-1) == -10.0
    assert fitness_of(100.0, 76.9) == PENALTY + 76.9
    assert fitness_of(0.0, 77.0, direction=-1) > fitness_of(100.0, 70.0) > fitness_of(100.0, 40.0)
    assert fitness_of(None, 95.0) == PENALTY + 95.0 and fitness_of(50.0, None) == PENALTY


def test_rejects_bad_arguments():
    ok = lambda cs: [(50.0, 90.0)] * len(cs)  # noqa: E731
    with pytest.raises(ValueError):
        optimize_direction(ok, _init_vector(), 0.0)
    with pytest.raises(ValueError):
        optimize_direction(ok, torch.zeros(HIDDEN), 1.0)
    with pytest.raises(ValueError):
        optimize_direction(ok, _init_vector(), 1.0, direction=0)
    with pytest.raises(ValueError, match="results"):
        optimize_direction(lambda cs: [(50.0, 90.0)], _init_vector(), 1.0, generations=1)


# --------------------------------------------------------------------------- the toy model
def test_toy_model_cma_never_worse_than_start():
    import yaml

    from traitflow.data.traits import load_trait
    from traitflow.judge import KeywordsBackend
    from traitflow.model.chat import prompt_ids
    from traitflow.model.generate import generate
    from traitflow.model.hooks import capture_pooled
    from traitflow.model.loading import load_model
    from traitflow.specs.models import ModelSpec
    from traitflow.steer.run import SteeringSetup

    started = time.perf_counter()
    loaded = load_model(ModelSpec(name="chat", model="datasets/models/toy-chat", device="cpu", dtype="float32"), REPO)
    layer, n_pairs = 2, 20
    sides = []
    for side in ("positive", "negative"):
        sides += [json.loads(line) for line in (OPTIMISM / f"{side}.jsonl").read_text().splitlines()[:n_pairs]]
    prompts = [prompt_ids(loaded, item["prompt"], item.get("system_prompt")) for item in sides]
    gens = generate(loaded, prompts, max_new_tokens=1, batch_size=len(prompts))
    acts = capture_pooled(
        loaded, [(g.prompt_ids, g.response_ids) for g in gens], [layer], ["prompt[-1]"], batch_size=len(prompts)
    )["prompt[-1]"][:, 0]
    vector = acts[:n_pairs].mean(0) - acts[n_pairs:].mean(0)
    norm = float(acts.norm(dim=-1).mean())

    trait = load_trait(OPTIMISM, "toy/optimism")
    assert yaml.safe_load((OPTIMISM / "trait.yaml").read_text())["keywords"]["positive"]
    setup = SteeringSetup(
        trait=trait,
        variant="chat",
        questions=trait.steering.questions[:3],
        position="prompt[-1]",
        component="residual",
        method="mean_diff",
        layers=[layer],
        vectors={layer: vector / vector.norm()},
        norms={layer: norm},
        direction=1,
        max_new_tokens=16,
        batch_size=64,
        vector_source={},
    )
    seen = []
    evaluate = steering_evaluator(
        loaded, KeywordsBackend(), setup, layer, record=lambda call, v, c, answers, summary: seen.append((call, c, summary))
    )
    start_coefficient = 0.6 * norm  # just below where optimism switches on (~0.7x at layer 2): room to improve
    result = optimize_direction(evaluate, vector, start_coefficient, subspace_dim=4, generations=2, popsize=6, seed=0)
    elapsed = time.perf_counter() - started
    print(
        f"toy cma_es: start {result.start_fitness:.1f} -> {result.fitness:.1f} (coef {start_coefficient:.2f} -> "
        f"{result.coefficient:.2f}, cos {result.cosine_to_init:.3f}, coherence {result.coherence_mean}) in {elapsed:.1f}s"
    )
    assert len(seen) == 12 and [call for call, _, _ in seen] == [0] * 6 + [1] * 6
    assert len(result.history) == 2
    assert result.start_fitness is not None and result.fitness >= result.start_fitness
    assert result.feasible and result.coherence_mean >= 77
