"""Logit lens: known answers on the toy model, and its invariants on tiny random architectures."""

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from traitflow.lens import LensRow, common_token_ids, lens_logits, lens_record, logit_lens

REPO = Path(__file__).resolve().parents[1]
OPTIMISM = REPO / "datasets" / "traits" / "toy" / "optimism"
N_PAIRS = 20


def _words(tokens: list[tuple[str, float]], vocabulary: set[str]) -> list[str]:
    return [token for token, _ in tokens if token.strip().lstrip("Ġ▁").lower() in vocabulary]


@pytest.fixture(scope="module")
def toy():
    from traitflow.model.loading import MODEL_CACHE
    from traitflow.specs.models import ModelSpec

    return MODEL_CACHE.get(ModelSpec(name="chat", model="datasets/models/toy-chat", device="cpu", dtype="float32"), REPO)


@pytest.fixture(scope="module")
def optimism_vectors(toy) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Mean difference (positive − negative scenarios) per layer at prompt[-1] and response[:5]."""
    from traitflow.model.chat import prompt_ids
    from traitflow.model.generate import generate
    from traitflow.model.hooks import capture_pooled

    sides = []
    for side in ("positive", "negative"):
        lines = (OPTIMISM / f"{side}.jsonl").read_text().splitlines()[:N_PAIRS]
        sides += [json.loads(line) for line in lines]
    prompts = [prompt_ids(toy, item["prompt"], item.get("system_prompt")) for item in sides]
    generations = generate(toy, prompts, max_new_tokens=8, batch_size=len(prompts))
    positions = ["prompt[-1]", "response[:5]"]
    acts = capture_pooled(toy, [(g.prompt_ids, g.response_ids) for g in generations], list(range(toy.n_layers)),
                          positions, batch_size=len(prompts))
    return {p: (acts[p][:N_PAIRS].mean(0) - acts[p][N_PAIRS:].mean(0), acts[p].norm(dim=-1).mean(0)) for p in positions}


@pytest.mark.parametrize("position", ["prompt[-1]", "response[:5]"])
def test_toy_optimism_vector_reads_as_optimism_words(toy, optimism_vectors, position):
    keywords = yaml.safe_load((OPTIMISM / "trait.yaml").read_text())["keywords"]
    positive, negative = set(keywords["positive"]), set(keywords["negative"])
    vector, norms = optimism_vectors[position]
    layers = list(range(toy.n_layers))
    rows = logit_lens(toy, vector, layers, top_k=20, scale=norms)
    assert [row.layer for row in rows] == layers
    # Late layers (the last two) read as the trait at both poles, never the wrong way round.
    for row in rows[-2:]:
        assert _words(row.top, positive), (position, row.layer, row.top)
        assert _words(row.bottom, negative), (position, row.layer, row.bottom)
        assert not _words(row.top, negative) and not _words(row.bottom, positive), (position, row)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2", "gpt_neox"])
def test_lens_on_tiny_architectures(tiny_loaded, arch):
    loaded = tiny_loaded(arch)
    generator = torch.Generator().manual_seed(1)
    vectors = torch.randn((2, loaded.hidden_size), generator=generator)
    special = set(loaded.tokenizer.all_special_ids)
    for filter_common in (False, True):
        rows = logit_lens(loaded, vectors, [0, 2], top_k=7, filter_common=filter_common)
        assert [row.layer for row in rows] == [0, 2]
        for row in rows:
            assert isinstance(row, LensRow)
            assert len(row.top) == len(row.bottom) == len(row.top_ids) == len(row.bottom_ids) == 7
            assert not special & set(row.top_ids) and not special & set(row.bottom_ids)
            assert all(isinstance(t, str) and isinstance(v, float) for t, v in row.top + row.bottom)
            assert [v for _, v in row.top] == sorted((v for _, v in row.top), reverse=True)
            assert [v for _, v in row.bottom] == sorted(v for _, v in row.bottom)
            assert row.top[0][1] > row.bottom[0][1]
    # The lens is odd: the most promoted token of v is the most suppressed of −v.
    plus = logit_lens(loaded, vectors, [0, 2], top_k=5, filter_common=False)
    minus = logit_lens(loaded, -vectors, [0, 2], top_k=5, filter_common=False)
    for p, m in zip(plus, minus, strict=True):
        assert p.top_ids[0] == m.bottom_ids[0] and p.bottom_ids[0] == m.top_ids[0]
        assert p.top[0][0] == m.bottom[0][0]
        assert p.top[0][1] == pytest.approx(-m.bottom[0][1], rel=1e-4, abs=1e-5)


def test_layernorm_bias_is_a_prior_not_part_of_the_direction(tiny_loaded):
    """GPT-2's ln_f bias pushes the same token prior into every direction; the lens removes it."""
    loaded = tiny_loaded("gpt2")
    model = copy.deepcopy(loaded.model)
    with torch.no_grad():
        model.transformer.ln_f.bias.normal_(0.0, 3.0, generator=torch.Generator().manual_seed(2))
    biased = dataclasses.replace(loaded, model=model)
    v = torch.randn(loaded.hidden_size, generator=torch.Generator().manual_seed(3))
    logits = lens_logits(biased, torch.stack([v, -v]))
    torch.testing.assert_close(logits[0], -logits[1], rtol=1e-4, atol=1e-4)
    # ... and equals the unembedding of the bias-free normalised direction.
    ln = model.transformer.ln_f
    expected = model.lm_head(torch.nn.functional.layer_norm(v * loaded.hidden_size ** 0.5, (loaded.hidden_size,), ln.weight, None, ln.eps))
    torch.testing.assert_close(logits[0], expected, rtol=1e-4, atol=1e-4)


def test_gemma2_softcap_bounds_the_lens_values(tiny_loaded):
    loaded = tiny_loaded("gemma2")
    cap = loaded.model.config.final_logit_softcapping
    assert cap
    v = torch.randn((3, loaded.hidden_size), generator=torch.Generator().manual_seed(4))
    logits = lens_logits(loaded, v)
    assert logits.abs().max() < cap


def test_filter_common_drops_a_token_every_direction_ranks_high(tiny_loaded):
    loaded = tiny_loaded("llama")
    loud = loaded.tokenizer.convert_tokens_to_ids("Ġthe")
    assert isinstance(loud, int) and loud not in loaded.tokenizer.all_special_ids
    model = copy.deepcopy(loaded.model)
    with torch.no_grad():
        model.lm_head.weight[loud] *= 50.0  # a huge unembedding row: extreme for any direction
    noisy = dataclasses.replace(loaded, model=model)
    common = common_token_ids(noisy, top_k=5)
    assert loud in common
    assert common == common_token_ids(noisy, top_k=5)  # seeded: deterministic
    v = torch.randn((1, loaded.hidden_size), generator=torch.Generator().manual_seed(5))
    unfiltered = logit_lens(noisy, v, [1], top_k=5, filter_common=False)[0]
    filtered = logit_lens(noisy, v, [1], top_k=5, filter_common=True)[0]
    assert loud in unfiltered.top_ids + unfiltered.bottom_ids
    assert loud not in filtered.top_ids + filtered.bottom_ids
    assert len(filtered.top) == 5


def test_lens_record_is_the_json_artifact_shape(tiny_loaded):
    loaded = tiny_loaded("llama")
    v = torch.randn((2, loaded.hidden_size), generator=torch.Generator().manual_seed(6))
    rows = logit_lens(loaded, v, [1, 2], top_k=3)
    record = lens_record(rows, "toy/optimism", "chat", "prompt[-1]", "residual", "mean_diff")
    record = json.loads(json.dumps(record))
    assert {k: record[k] for k in ("trait", "variant", "position", "component", "method")} == {
        "trait": "toy/optimism", "variant": "chat", "position": "prompt[-1]", "component": "residual", "method": "mean_diff"}
    assert [layer["layer"] for layer in record["layers"]] == [1, 2]
    first = record["layers"][0]
    assert len(first["top"]) == len(first["bottom"]) == 3
    assert all(isinstance(token, str) and isinstance(value, float) for token, value in first["top"] + first["bottom"])
    assert first["top_ids"] == rows[0].top_ids


def test_lens_checks_its_arguments(tiny_loaded):
    loaded = tiny_loaded("llama")
    with pytest.raises(ValueError, match="2 vectors for 1 layers"):
        logit_lens(loaded, torch.zeros((2, loaded.hidden_size)), [0])
    with pytest.raises(ValueError, match="top_k"):
        logit_lens(loaded, torch.ones((1, loaded.hidden_size)), [0], top_k=0)
