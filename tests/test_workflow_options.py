"""Workflow options: a fixed steering grid (`steering.coefficients`), response-only projections
(`inference.response_only`) and the per-prompt clause share of comparisons (`comparisons[].top_pct`)."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from traitflow.charts import projection_charts
from traitflow.compare.diff import Probe, _clauses, compare_variants, kept_clauses
from traitflow.data.traits import load_trait
from traitflow.judge import KeywordsBackend
from traitflow.monitor.projections import TraitProbe, project_responses, response_means
from traitflow.steer.run import ResultsLog, SteeringSetup, config_name, run_steering
from traitflow.steer.search import Schedule, run_grid, run_search

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- steering grid, pure logic
def synthetic_model(edge: float = 1.0):
    calls = []

    def evaluate(todo: dict[int, float]) -> dict[int, tuple[float, float]]:
        calls.append(dict(todo))
        return {layer: (50 + 10 * m + layer, 100.0 if m <= edge else 20.0) for layer, m in todo.items()}

    return evaluate, calls


def test_grid_evaluates_every_layer_at_every_multiplier_one_multiplier_per_call():
    evaluate, calls = synthetic_model()
    states = run_grid([3, 5, 7], [0.25, 1.5, 0.75, 1.50001, 4.0], evaluate)
    # 1.50001 rounds onto 1.5: a configuration is (layer, rounded multiplier), evaluated once
    assert calls == [{3: m, 5: m, 7: m} for m in (0.25, 1.5, 0.75, 4.0)]
    assert {layer: s.multipliers for layer, s in states.items()} == {layer: [0.25, 1.5, 0.75, 4.0] for layer in (3, 5, 7)}
    assert all((s.good, s.bad) == (0.75, 1.5) for s in states.values())  # against the default coherence target


def test_grid_reuses_known_results_like_the_search():
    evaluate, _ = synthetic_model()
    known = {(3, 0.25): evaluate({3: 0.25})[3], (5, 1.5): evaluate({5: 1.5})[5]}
    evaluate2, calls = synthetic_model()
    run_grid([3, 5], [0.25, 1.5], evaluate2, known=known)
    assert calls == [{5: 0.25}, {3: 1.5}]  # only what the log lacks
    # The search reads the same keys: a grid's results serve a later search.
    full_known = {(layer, m): evaluate({layer: m})[layer] for layer in (3, 5) for m in (0.5, 0.8)}
    evaluate3, calls = synthetic_model()
    run_search([3, 5], Schedule(steps=2, start=0.5, up=1.6), evaluate3, known=full_known)
    assert calls == []


# --------------------------------------------------------------------------- steering grid, tiny model
def _steering_setup(loaded, folder: Path, layers=(0, 1)) -> SteeringSetup:
    """The toy optimism trait, with pole words the tiny random model does emit (words by first letter),
    so the keywords judge's trait scores differ between configurations."""
    shutil.copytree(REPO / "datasets/traits/toy/optimism", folder)
    letters = "abcdefghijklmnopqrstuvwxyz"
    (folder / "trait.yaml").write_text(f"keywords:\n  positive: {[c + '*' for c in letters[:8]]}\n"
                                       f"  negative: {[c + '*' for c in letters[8:]]}\n")
    trait = load_trait(folder, "toy/letters")
    g = torch.Generator().manual_seed(7)
    vectors = {}
    for layer in layers:
        v = torch.randn(loaded.hidden_size, generator=g)
        vectors[layer] = v / v.norm()
    return SteeringSetup(
        trait=trait, variant="llama", questions=trait.steering.questions[:2], position="response[:5]",
        component="residual", method="probe", layers=list(layers), vectors=vectors,
        norms={layer: 2.0 + layer for layer in layers}, direction=1, max_new_tokens=8, batch_size=16,
        vector_source={"test": "grid"})


def _runs(folder: Path) -> list[dict]:
    return [e for e in ResultsLog(folder).read() if "config" in e]


def _key(entry: dict) -> tuple[int, float]:
    v = entry["config"]["vectors"][0]
    return v["layer"], round(v["multiplier"], 4)


GRID = [0.5, 2.0, 6.0]


def test_grid_steering_evaluates_the_grid_and_resumes(tiny_loaded, tmp_path):
    loaded = tiny_loaded("llama")
    setup = _steering_setup(loaded, tmp_path / "trait")
    judge, folder = KeywordsBackend(), tmp_path / "steering"
    messages: list[str] = []
    summary = run_steering(loaded, judge, setup, Schedule(), 0.0, folder, {}, log=messages.append, coefficients=GRID)

    runs = _runs(folder)
    grid = {(layer, m) for layer in setup.layers for m in GRID}
    assert len(runs) == len(setup.layers) * len(GRID) == summary["runs"]
    assert {_key(e) for e in runs} == grid
    for entry in runs:  # coefficients are multiples of the layer's mean activation norm
        v = entry["config"]["vectors"][0]
        assert v["weight"] == pytest.approx(v["multiplier"] * setup.norms[v["layer"]])
    # one multiplier across all layers per generation call: the log is in grid order, layers together
    assert [round(e["config"]["vectors"][0]["multiplier"], 4) for e in runs] == [m for m in GRID for _ in setup.layers]
    header = ResultsLog(folder).read()[0]
    assert header["traitflow"]["search"] == {"kind": "grid", "coefficients": GRID}
    assert summary["search"]["kind"] == "grid"
    stored = {p.stem for p in (folder / "responses").iterdir()}
    assert stored == {"baseline"} | {config_name(layer, m) for layer, m in grid}
    assert json.loads((folder / "summary.json").read_text()) == summary

    # Best: the largest delta among the grid's valid runs (min_coherence 0: all scored runs are valid).
    base = summary["baseline"]["trait_mean"]
    scored = [e for e in runs if e["result"]["trait_mean"] is not None]
    assert len({e["result"]["trait_mean"] for e in scored}) > 1  # a real choice to make
    expected = max(scored, key=lambda e: e["result"]["trait_mean"] - base)
    assert (summary["best"]["layer"], summary["best"]["multiplier"]) == _key(expected)
    assert summary["best"]["delta"] == pytest.approx(expected["result"]["trait_mean"] - base)

    # A killed run: the last two configurations never finished and the last line is torn.
    log = ResultsLog(folder)
    entries = log.read()
    log.rewrite(entries[:-2])
    with open(log.path, "a", encoding="utf-8") as handle:
        handle.write('{"result": {"trait_me')
    (folder / "summary.json").unlink()
    messages.clear()
    resumed = run_steering(loaded, judge, setup, Schedule(), 0.0, folder, {}, log=messages.append, coefficients=GRID)
    after = _runs(folder)
    assert after[:-2] == runs[:-2]  # finished configurations kept as they were
    assert [_key(e) for e in after[-2:]] == [_key(e) for e in runs[-2:]]  # only the missing ones evaluated
    assert len(after) == len({_key(e) for e in after}) == len(grid)
    assert sum(m.startswith("L") for m in messages) == 2 and not any(m.startswith("baseline") for m in messages)
    assert resumed["runs"] == len(grid)

    # A finished grid re-run evaluates nothing; a run from an earlier search (logged with the same
    # vectors) stays in the log but is not part of the grid's summary, however good it looks.
    log.append({"result": {"trait_mean": 100.0, "coherence_mean": 100.0, "n": 2, "trait_std": 0.0, "success_rate": 1.0},
                "config": {"vectors": [{"layer": 0, "component": "residual", "position": "response[:5]", "method": "probe",
                                        "weight": 0.6, "multiplier": 0.3}]}})
    mtimes = {p.name: p.stat().st_mtime_ns for p in (folder / "responses").iterdir()}
    messages.clear()
    again = run_steering(loaded, judge, setup, Schedule(), 0.0, folder, {}, log=messages.append, coefficients=GRID)
    assert not any(m.startswith("L") for m in messages)
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "responses").iterdir()} == mtimes
    assert again["runs"] == len(grid) and (again["best"]["layer"], again["best"]["multiplier"]) != (0, 0.3)
    assert again["best"] == resumed["best"]

    # The search on the same log reuses the grid's results (its first step, 0.5x, is in the grid)
    # and the header now says it was the search.
    messages.clear()
    searched = run_steering(loaded, judge, setup, Schedule(steps=1, start=0.5), 0.0, folder, {}, log=messages.append)
    assert not any(m.startswith("L") for m in messages)
    assert ResultsLog(folder).read()[0]["traitflow"]["search"]["kind"] == "search"
    assert searched["runs"] == len(grid) + 1  # the search summarises the whole log, as before


# --------------------------------------------------------------------------- response-only projections
def _projection_inputs(loaded):
    g = torch.Generator().manual_seed(3)
    items = []
    for i in range(3):
        p = torch.randint(5, 300, (4 + 2 * i,), generator=g).tolist()
        r = torch.randint(5, 300, (3 + i,), generator=g).tolist()
        items.append({"id": i, "prompt_ids": p, "response_ids": r, "response": "x"})
    layers = [0, 2]
    probes = []
    for name in ("a", "b"):
        v = torch.randn(len(layers), loaded.hidden_size, generator=g)
        probes.append(TraitProbe(name, "response[:3]", "residual", "probe", layers, v / v.norm(dim=-1, keepdim=True)))
    return {"prompt_set": "t/s", "variant": "v", "items": items}, probes


@pytest.mark.parametrize("options", [{}, {"mode": "cosine", "centre": {"a": {0: 0.5, 2: -1.0}, "b": {0: 0.0, 2: 2.0}}}])
def test_response_only_projection_is_the_response_part_of_the_full_one(tiny_loaded, options):
    loaded = tiny_loaded("llama")
    responses, probes = _projection_inputs(loaded)
    full = project_responses(loaded, responses, probes, 2, **options)
    short = project_responses(loaded, responses, probes, 2, response_only=True, **options)
    assert (full["response_only"], short["response_only"]) == (False, True)
    for item, f, s in zip(responses["items"], full["items"], short["items"], strict=True):
        n = len(item["prompt_ids"])
        assert f["prompt_len"] == n and "prompt_tokens" not in f
        assert (s["prompt_len"], s["prompt_tokens"]) == (0, n)
        assert s["token_ids"] == item["response_ids"] == f["token_ids"][n:]
        assert s["tokens"] == f["tokens"][n:] and len(s["tokens"]) == len(item["response_ids"])
        for trait in ("a", "b"):
            for layer in ("0", "2"):
                assert s["scores"][trait][layer] == f["scores"][trait][layer][n:]
                assert len(s["scores"][trait][layer]) == len(item["response_ids"])
        for layer in ("0", "2"):
            assert s["norms"][layer] == f["norms"][layer][n:]
    # Consumers slicing [prompt_len:] see the same numbers.
    for trait in ("a", "b"):
        assert response_means(short, trait, 2) == response_means(full, trait, 2)
    if not options:
        assert projection_charts(short).spec["vconcat"] == projection_charts(full).spec["vconcat"]


# --------------------------------------------------------------------------- comparison clause share
SENTENCES = [
    "Great news, the weather is sunny.",
    "Hello there! How are you today? I am fine, thank you.",
    "Be cheerful. Be gloomy. Be formal. Be casual. Tell me about cats, dogs and trains.",
    "I cannot help with that request, sorry. The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="module")
def diff_inputs(tiny_loaded):
    a, b = tiny_loaded("llama"), tiny_loaded("qwen2")  # same tokenizer, different weights
    items = []
    for i, text in enumerate(SENTENCES):
        prompt = a.tokenizer("Tell me something.", add_special_tokens=False)["input_ids"]
        items.append({"id": i, "prompt_ids": prompt, "response_ids": a.tokenizer(text, add_special_tokens=False)["input_ids"],
                      "response": text})
    g = torch.Generator().manual_seed(5)
    v = torch.randn(3, a.hidden_size, generator=g)
    return a, b, {"prompt_set": "t/s", "items": items}, [Probe("t", [0, 1, 2], v / v.norm(dim=-1, keepdim=True))]


def _by_prompt(clauses: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for clause in clauses:
        out.setdefault(clause["id"], []).append(clause)
    return out


def test_top_pct_keeps_each_prompts_share_ranked_by_delta(diff_inputs):
    a, b, responses, probes = diff_inputs
    records = {pct: compare_variants(a, b, responses, probes, batch_size=4, top_pct=pct) for pct in (100, 50, 5)}
    every = _by_prompt(records[100]["traits"]["t"]["top_clauses"])
    tokens = {i: [a.tokenizer.decode([t]) for t in item["response_ids"]] for i, item in enumerate(responses["items"])}
    counts = {i: len(_clauses(tokens[i], [0.0] * len(tokens[i]))) for i in tokens}
    assert {i: len(c) for i, c in every.items()} == counts  # 100 %: every clause of every prompt
    assert sorted(counts.values())[-1] >= 5 and len(set(counts.values())) > 1
    for pct, record in records.items():
        assert record["top_pct"] == pct
        clauses = record["traits"]["t"]["top_clauses"]
        magnitudes = [abs(c["delta"]) for c in clauses]
        assert magnitudes == sorted(magnitudes, reverse=True)  # ranked across the set by |delta|
        kept = _by_prompt(clauses)
        for i, n in counts.items():
            assert len(kept[i]) == max(1, math.ceil(pct * n / 100))
            largest = sorted(every[i], key=lambda c: -abs(c["delta"]))[: len(kept[i])]
            assert {c["clause"] for c in kept[i]} == {c["clause"] for c in largest}  # the prompt's largest |delta|
    assert {i: len(c) for i, c in _by_prompt(records[5]["traits"]["t"]["top_clauses"]).items()} == dict.fromkeys(counts, 1)
    assert {i: len(c) for i, c in _by_prompt(records[50]["traits"]["t"]["top_clauses"]).items()} == \
        {i: (n + 1) // 2 for i, n in counts.items()}


def test_kept_clauses_rounding():
    assert [kept_clauses(n, 5) for n in (0, 1, 19, 20, 21, 40, 41)] == [0, 1, 1, 1, 2, 2, 3]
    assert kept_clauses(100, 7) == 7 and kept_clauses(3, 50) == 2 and kept_clauses(3, 100) == 3


# --------------------------------------------------------------------------- through the pipeline
def test_options_reach_the_stages(project_root, materialized, tmp_path):
    """The tiny-Llama slice again with a grid, response-only projections and top_pct 50."""
    import dagster as dg

    from assets.runner import run_experiment
    from traitflow.specs.loader import load_project

    root = tmp_path / "proj"
    shutil.copytree(project_root, root)
    spec = root / "specs/experiments/t.yaml"
    text = spec.read_text()
    for old, new in [("  search: {steps: 2,", "  coefficients: [0.5, 2.0]\n  search: {steps: 2,"),
                     ("  max_new_tokens: 4\ncomparisons:", "  max_new_tokens: 4\n  response_only: true\ncomparisons:"),
                     ("prompt_set: starter/general}", "prompt_set: starter/general, top_pct: 50}")]:
        assert text.count(old) == 1
        text = text.replace(old, new)
    spec.write_text(text)
    run_experiment(load_project(root), "t", stages=["steering", "projections", "variant_diff"],
                   instance=dg.DagsterInstance.ephemeral())

    folder = root / "experiments/t/steering/starter/optimism/chat"
    log = ResultsLog(folder).read()
    assert log[0]["traitflow"]["search"] == {"kind": "grid", "coefficients": [0.5, 2.0]}
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["runs"] == 2 and summary["search"]["kind"] == "grid"
    assert {_key(e) for e in log if "config" in e} >= {(1, 0.5), (1, 2.0)}

    full = json.loads((project_root / "experiments/t/projections/starter/general/chat/projections.json").read_text())
    short = json.loads((root / "experiments/t/projections/starter/general/chat/projections.json").read_text())
    assert short["response_only"] is True
    for f, s in zip(full["items"], short["items"], strict=True):
        assert s["prompt_len"] == 0 and s["prompt_tokens"] == f["prompt_len"]
        assert s["token_ids"] == f["token_ids"][f["prompt_len"]:]

    diff = json.loads((root / "experiments/t/variant_diff/chat_vs_plain/starter/general/variant_diff.json").read_text())
    assert diff["top_pct"] == 50
