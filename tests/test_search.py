"""The adaptive coefficient search as pure logic: it finds the coherence edge per layer, in lockstep,
and a resumed search re-evaluates nothing it already has."""

from traitflow.steer.search import Schedule, run_search


def synthetic_model(edges: dict[int, float]):
    """Coherence stays 100 below a layer's edge multiplier and collapses above; trait grows with m."""
    calls = []

    def evaluate(todo: dict[int, float]) -> dict[int, tuple[float, float]]:
        calls.append(dict(todo))
        return {layer: (50 + 40 * min(1.0, m), 100.0 if m <= edges[layer] else 20.0) for layer, m in todo.items()}

    return evaluate, calls


def test_search_brackets_each_layers_edge_in_lockstep():
    edges = {1: 0.7, 2: 1.3, 3: 0.2}
    evaluate, calls = synthetic_model(edges)
    states = run_search([1, 2, 3], Schedule(steps=8), evaluate)
    for layer, edge in edges.items():
        state = states[layer]
        if state.good is not None:
            assert state.good <= edge
        assert state.bad is None or state.bad > edge
    assert states[1].good is not None and states[1].bad is not None
    assert states[1].bad / states[1].good < 1.6  # narrowed down from the first bracket
    # Lockstep: every call evaluates all layers still searching (the first three steps cover all three).
    assert [set(c) for c in calls[:2]] == [{1, 2, 3}, {1, 2, 3}]
    assert max(len(s.multipliers) for s in states.values()) <= 8


def test_start_at_fraction_and_step_limit():
    evaluate, calls = synthetic_model({0: 100.0})
    states = run_search([0], Schedule(steps=5, start=0.5, up=2.0), evaluate)
    assert states[0].multipliers == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert states[0].bad is None


def test_resume_reuses_logged_results():
    edges = {1: 0.7, 2: 1.3}
    evaluate, first_calls = synthetic_model(edges)
    full = run_search([1, 2], Schedule(steps=6), evaluate)
    log = {(layer, m): evaluate({layer: m})[layer] for layer, s in full.items() for m in s.multipliers[:3]}
    evaluate2, calls = synthetic_model(edges)
    resumed = run_search([1, 2], Schedule(steps=6), evaluate2, known=log)
    assert {k: v.multipliers for k, v in resumed.items()} == {k: v.multipliers for k, v in full.items()}
    evaluated = {(layer, m) for c in calls for layer, m in c.items()}
    assert not evaluated & set(log)  # nothing already in the log was evaluated again
