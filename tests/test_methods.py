"""Vector methods (traitflow.extract.methods), massive-dim cleaning, and how extract_vectors uses them.

Synthetic activations with a known trait direction: every pair shares a large random "topic"
component, and the positive half adds ``+shift·u`` (the trait) on top of small noise.
"""

import json

import pytest
import torch

from traitflow.errors import TraitflowError
from traitflow.extract.capture import ActivationSet
from traitflow.extract.massive import clean_massive_dims, find_massive_dims
from traitflow.extract.methods import METHODS, get_method, gradient, mean_diff, pca, probe, random_baseline
from traitflow.extract.vectors import VectorSet, evaluate_vectors, extract_vectors

HIDDEN = 32
ORIENTED = [m for m in METHODS if m != "random_baseline"]


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(a @ b / (a.norm() * b.norm()))


def _pairs(n: int = 40, hidden: int = HIDDEN, shift: float = 1.0, topic: float = 5.0, noise: float = 0.3, seed: int = 0):
    """(pos, neg, u): pos[i] = topic_i + shift·u + noise, neg[i] = topic_i + noise."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(hidden, generator=g)
    u = u / u.norm()
    topics = topic * torch.randn(n, hidden, generator=g)
    pos = topics + shift * u + noise * torch.randn(n, hidden, generator=g)
    neg = topics + noise * torch.randn(n, hidden, generator=g)
    return pos.float(), neg.float(), u


# --------------------------------------------------------------------------- every method
@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("paired", [True, False])
def test_every_method_returns_a_float32_unit_vector(name, paired):
    pos, neg, _ = _pairs()
    v = METHODS[name](pos, neg, seed=0, paired=paired)
    assert v.shape == (HIDDEN,) and v.dtype == torch.float32
    assert abs(float(v.norm()) - 1.0) < 1e-5


@pytest.mark.parametrize("name", ORIENTED)
@pytest.mark.parametrize("paired", [True, False])
def test_fitted_methods_orient_positives_higher(name, paired):
    # flip the trait's sign: the method must follow the data, not a convention of its solver
    pos, neg, u = _pairs(seed=3)
    for p, n in ((pos, neg), (neg, pos)):
        v = METHODS[name](p, n, seed=0, paired=paired)
        assert float((p @ v).mean()) > float((n @ v).mean())


@pytest.mark.parametrize("name", ORIENTED)
def test_fitted_methods_find_the_trait_direction(name):
    pos, neg, u = _pairs(n=60, shift=2.0, topic=1.0, noise=0.2)
    assert _cos(METHODS[name](pos, neg, seed=0, paired=True), u) > 0.9


def test_signature_is_keyword_only_for_seed_and_paired():
    pos, neg, _ = _pairs()
    for fn in METHODS.values():
        with pytest.raises(TypeError):
            fn(pos, neg, 0)


def test_get_method_rejects_unknown_names():
    assert get_method("pca") is pca
    with pytest.raises(TraitflowError, match="vector method 'nope' is not available"):
        get_method("nope")


def test_paired_methods_require_equal_shapes():
    pos, neg, _ = _pairs()
    for fn in (pca, probe, gradient):
        with pytest.raises(ValueError, match="paired data need equal shapes"):
            fn(pos, neg[:-1], paired=True)


# --------------------------------------------------------------------------- mean_diff
def test_mean_diff_is_the_float32_difference_of_means():
    pos, neg, _ = _pairs()
    expected = pos.mean(0) - neg.mean(0)
    torch.testing.assert_close(mean_diff(pos, neg), expected / expected.norm())
    half = mean_diff(pos.half(), neg.half())
    assert half.dtype == torch.float32
    expected_half = pos.half().float().mean(0) - neg.half().float().mean(0)
    torch.testing.assert_close(half, expected_half / expected_half.norm())


def test_identical_classes_give_the_zero_vector():
    pos, _, _ = _pairs()
    for name in ("mean_diff", "pca"):
        assert float(METHODS[name](pos, pos.clone(), paired=True).abs().sum()) == 0


# --------------------------------------------------------------------------- probe
def test_probe_ignores_row_scale():
    pos, neg, _ = _pairs()
    scale = torch.linspace(0.5, 20, len(pos))[:, None]
    for paired in (True, False):
        torch.testing.assert_close(probe(pos * scale, neg * scale.flip(0), paired=paired), probe(pos, neg, paired=paired), atol=1e-5, rtol=1e-4)


def test_paired_probe_is_logistic_regression_on_within_pair_differences():
    # rows ±(x̂_pos_i - x̂_neg_i)/2 with labels ±1, no intercept, C=1 (steering-vectors' formulation)
    pos, neg, _ = _pairs(n=30)
    x_pos = pos.double() / pos.double().norm(dim=1, keepdim=True)
    x_neg = neg.double() / neg.double().norm(dim=1, keepdim=True)
    half = (x_pos - x_neg) / 2
    w = torch.zeros(HIDDEN, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, tolerance_grad=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = 2 * torch.nn.functional.softplus(-(half @ w)).sum() + 0.5 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    assert _cos(probe(pos, neg, paired=True), w.detach()) > 0.99999


# --------------------------------------------------------------------------- gradient
def test_gradient_is_bit_identical_for_the_same_seed():
    pos, neg, _ = _pairs(seed=5)
    for paired in (True, False):
        a = gradient(pos, neg, seed=7, paired=paired)
        b = gradient(pos.clone(), neg.clone(), seed=7, paired=paired)
        assert torch.equal(a, b)
    c = gradient(pos, neg, seed=8, paired=True)
    assert not torch.equal(gradient(pos, neg, seed=7, paired=True), c)
    assert _cos(gradient(pos, neg, seed=7, paired=True), c) > 0.95  # the seed only picks the start


def test_gradient_separates_the_training_pairs():
    pos, neg, _ = _pairs(n=50, shift=1.0, topic=5.0, noise=0.3, seed=2)
    v = gradient(pos, neg, paired=True)
    assert bool(((pos - neg) @ v > 0).all())


def test_gradient_stays_in_the_span_of_the_data():
    # activations that live in an 8-dim subspace of a 256-dim space: the vector must too
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(256, 8, generator=g, dtype=torch.float64))[0].float()
    pos, neg, _ = _pairs(n=20, hidden=8)
    v = gradient(pos @ basis.T, neg @ basis.T, paired=True)
    assert float((basis @ (basis.T @ v) - v).norm()) < 1e-4


# --------------------------------------------------------------------------- pca
def test_paired_pca_is_the_uncentred_first_direction_of_the_differences():
    pos, neg, u = _pairs(shift=1.0, topic=5.0, noise=0.3)
    v = pca(pos, neg, paired=True)
    d = (pos - neg).double()
    top = torch.linalg.svd(d, full_matrices=False)[2][0]
    assert abs(_cos(v, top)) > 0.99999
    assert _cos(v, u) > 0.95  # the pair topic (variance 25) cancels within pairs
    # unpaired PCA on the same data sees the topic variance and does much worse
    assert abs(_cos(pca(pos, neg, paired=False), u)) < 0.9


def test_unpaired_pca_equals_pca_of_all_cross_differences():
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(7, 12, generator=g) + 2.0
    neg = torch.randn(5, 12, generator=g)
    all_diffs = (pos[:, None, :] - neg[None, :, :]).reshape(-1, 12).double()
    top = torch.linalg.svd(all_diffs, full_matrices=False)[2][0]
    assert abs(_cos(pca(pos, neg, paired=False), top)) > 0.99999


# --------------------------------------------------------------------------- random_baseline
def test_random_baseline_is_seeded_and_ignores_the_data():
    pos, neg, _ = _pairs()
    a = random_baseline(pos, neg, seed=3)
    assert torch.equal(a, random_baseline(neg * 10, pos, seed=3))
    assert torch.equal(a, random_baseline(neg, pos, seed=3))  # not oriented: swapping sides changes nothing
    assert not torch.equal(a, random_baseline(pos, neg, seed=4))


# --------------------------------------------------------------------------- massive dims
def _with_massive(n: int = 50, hidden: int = 64, dims=(3, 40), size: float = 500.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(n, hidden, generator=g)
    for k, d in enumerate(dims):
        acts[:, d] = size * (k + 1) + torch.randn(n, generator=g)
    return acts


def test_find_massive_dims_finds_the_injected_dims():
    assert find_massive_dims(_with_massive()) == [3, 40]
    assert find_massive_dims(_with_massive(), top_k=1) == [40]  # the larger one
    assert find_massive_dims(_with_massive(size=20.0)) == []  # 20x the median is not massive at ratio 100
    assert find_massive_dims(_with_massive(size=20.0), ratio=10) == [3, 40]
    assert find_massive_dims(torch.randn(30, 64)) == []
    assert find_massive_dims(torch.zeros(0, 8)) == []


def test_find_massive_dims_validates_input():
    with pytest.raises(ValueError, match=r"\[n, hidden\]"):
        find_massive_dims(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="ratio"):
        find_massive_dims(torch.zeros(2, 3), ratio=0)


def test_clean_massive_dims_zeroes_a_copy():
    acts = _with_massive()
    cleaned = clean_massive_dims(acts, [3, 40])
    assert float(cleaned[:, [3, 40]].abs().sum()) == 0
    assert float(acts[:, 3].abs().min()) > 100  # input untouched
    torch.testing.assert_close(cleaned[:, :3], acts[:, :3])
    assert torch.equal(clean_massive_dims(acts, []), acts)


# --------------------------------------------------------------------------- extract_vectors
def _activation_set(pos: torch.Tensor, neg: torch.Tensor, paired: bool | None, order_seed: int = 0, drop_neg: int | None = None):
    """An ActivationSet with rows in a scrambled order, optionally missing one pair's negative half."""
    n = len(pos)
    acts = torch.cat([pos, neg])[:, None, :]  # one layer
    labels = torch.cat([torch.ones(n), torch.zeros(n)]).long()
    groups = torch.cat([torch.arange(n), torch.arange(n)]) if paired is not False else torch.arange(2 * n)
    keep = torch.ones(2 * n, dtype=torch.bool)
    if drop_neg is not None:
        keep[n + drop_neg] = False
    order = torch.randperm(2 * n, generator=torch.Generator().manual_seed(order_seed))
    order = order[keep[order]]
    meta = {"trait": "t/x", "variant": "v", "model": {}} | ({} if paired is None else {"paired": paired})
    return ActivationSet({"prompt[-1]": acts[order]}, labels[order], groups[order], [4], "residual", meta)


@pytest.mark.parametrize("recorded", [True, None])
def test_extract_vectors_aligns_pairs_by_group(recorded):
    pos, neg, _ = _pairs(n=30, seed=4)
    acts = _activation_set(pos, neg, paired=recorded, drop_neg=5)
    vs = extract_vectors(acts, ["pca", "probe"], val_split=0.0, seed=0, input_hashes={})
    assert vs.metadata["paired"] is True
    keep = [i for i in range(30) if i != 5]
    for method, fn in (("pca", pca), ("probe", probe)):
        expected = fn(pos[keep], neg[keep], paired=True)
        torch.testing.assert_close(vs.vector("prompt[-1]", "residual", method, 4), expected, atol=1e-5, rtol=1e-4)


def test_extract_vectors_unpaired_data_fit_unpaired():
    pos, neg, _ = _pairs(n=20, seed=4)
    acts = _activation_set(pos, neg, paired=False)
    vs = extract_vectors(acts, ["pca"], val_split=0.0, seed=0, input_hashes={})
    assert vs.metadata["paired"] is False
    torch.testing.assert_close(vs.vector("prompt[-1]", "residual", "pca", 4), pca(pos, neg, paired=False), atol=1e-5, rtol=1e-4)


def test_extract_vectors_cleans_massive_dims_and_records_them():
    pos, neg, _ = _pairs(n=40, hidden=64, shift=2.0, topic=0.3, seed=6)
    pos[:, 7] += 800.0
    neg[:, 7] += 805.0  # a massive dim that also differs a little between classes
    acts = _activation_set(pos, neg, paired=True)
    raw = extract_vectors(acts, ["mean_diff", "pca"], val_split=0.25, seed=0, input_hashes={})
    clean = extract_vectors(acts, ["mean_diff", "pca"], val_split=0.25, seed=0, input_hashes={}, clean_massive=True)
    assert "massive_dims" not in raw.metadata and raw.metadata["clean_massive_dims"] is False
    assert clean.metadata["massive_dims"] == {"4": [7]} and clean.metadata["clean_massive_dims"] is True
    json.dumps(clean.metadata)  # stored as safetensors string metadata
    for method in ("mean_diff", "pca"):
        assert abs(float(raw.vector("prompt[-1]", "residual", method, 4)[7])) > 0.9  # raw: dominated by the massive dim
        v = clean.vector("prompt[-1]", "residual", method, 4)
        assert float(v[7]) == 0.0 and abs(float(v.norm()) - 1) < 1e-5
    tensors, meta = clean.to_tensors()
    assert VectorSet.from_tensors(tensors, meta).metadata["massive_dims"] == {"4": [7]}
    by_method = {s.method: s for s in evaluate_vectors(acts, clean)}
    assert by_method["mean_diff"].val_accuracy == 1.0


def test_all_methods_through_extraction_and_evaluation():
    pos, neg, _ = _pairs(n=60, hidden=48, shift=2.0, topic=0.3, noise=0.3, seed=9)
    acts = _activation_set(pos, neg, paired=True)
    methods = list(METHODS)
    vs = extract_vectors(acts, methods, val_split=0.3, seed=1, input_hashes={"x": "y"})
    scores = {s.method: s for s in evaluate_vectors(acts, vs)}
    assert set(scores) == set(methods)
    for m in ORIENTED:
        assert scores[m].val_accuracy >= 0.9 and scores[m].polarity == 1, (m, scores[m])
    assert scores["random_baseline"].val_accuracy < 0.8  # chance-level reference
