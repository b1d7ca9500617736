"""Every method × component × position through capture → vectors → evaluation, on the tiny random
configs of every supported architecture and under a PEFT LoRA wrapper."""

import pytest
import torch

from tests.conftest import TINY_ARCHS
from traitflow.extract.capture import capture_trait_activations
from traitflow.extract.vectors import evaluate_vectors, extract_vectors

COMPONENTS = ["residual", "attn_out", "mlp_out", "attn_contribution", "mlp_contribution"]
POSITIONS = ["prompt[-1]", "response[:3]", "all[:]"]
METHODS = ["mean_diff", "probe", "gradient", "pca", "random_baseline"]


def synthetic_responses(vocab: int, n_pairs: int = 8, seed: int = 0) -> dict:
    """Paired items whose positive side shares a marker token, so there is something to find."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for side, marker in (("positive", 7), ("negative", 11)):
        for index in range(n_pairs):
            prompt = torch.randint(20, vocab, (6,), generator=generator).tolist() + [marker]
            response = [marker] + torch.randint(20, vocab, (4,), generator=generator).tolist()
            items.append({"side": side, "index": index, "prompt_ids": prompt, "response_ids": response})
    return {"trait": "synthetic/marker", "variant": "v", "model": {}, "paired": True, "items": items}


def run_matrix(loaded) -> list:
    vocab = len(loaded.tokenizer)
    responses = synthetic_responses(vocab)
    layers = list(range(loaded.n_layers))
    rows = []
    for component in COMPONENTS:
        acts = capture_trait_activations(loaded, responses, layers, POSITIONS, component, batch_size=8)
        assert set(acts.acts) == set(POSITIONS)
        for value in acts.acts.values():
            assert value.shape == (16, len(layers), loaded.hidden_size) and torch.isfinite(value).all()
        vectors = extract_vectors(acts, METHODS, val_split=0.25, seed=0, input_hashes={})
        for (position, comp, method), stacked in vectors.vectors.items():
            assert comp == component and stacked.shape == (len(layers), loaded.hidden_size)
            norms = stacked.norm(dim=-1)
            assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4), (position, comp, method)
        scores = evaluate_vectors(acts, vectors)
        assert len(scores) == len(POSITIONS) * len(METHODS) * len(layers)
        rows += scores
    return rows


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_every_method_component_position(tiny_loaded, arch):
    rows = run_matrix(tiny_loaded(arch))
    combos = {(r.position, r.component, r.method) for r in rows}
    assert combos == {(p, c, m) for p in POSITIONS for c in COMPONENTS for m in METHODS}
    for r in rows:
        assert 0.0 <= r.val_accuracy <= 1.0 and 0.0 <= r.auroc <= 1.0


def test_matrix_under_lora_wrapper(tiny_loaded, tiny_lora_dir):
    lora = tiny_lora_dir("llama")
    loaded = tiny_loaded("llama", lora=str(lora.relative_to(lora.parents[1])))
    assert type(loaded.model).__name__.startswith("Peft")
    rows = run_matrix(loaded)
    # The marker token makes the residual stream separable: the supervised methods find it.
    residual = [r for r in rows if r.component == "residual" and r.position == "prompt[-1]" and r.method != "random_baseline"]
    assert max(r.val_accuracy for r in residual) == 1.0
