"""Agreement with the peer libraries on the same cached activations.

The activations are real: the toy optimism scenarios (``datasets/traits/toy/optimism``, 50
pairs that differ only in the system prompt) run through the trained toy chat model and through
the tiny random Llama of ``conftest.py``, captured with :func:`capture_pooled` at ``prompt[-1]``
(the last prompt token, steering-vectors' default read position) and ``prompt[:]`` (mean over
the prompt), all layers.

- steering-vectors 0.12.2 reads the same activations (checked first), and per layer:
  ``mean_diff`` vs ``mean_aggregator`` (unnormalised there, so normalised here), ``pca`` vs
  ``pca_aggregator`` (signed cosine: both orient by the mean difference), ``probe`` (paired) vs
  ``logistic_aggregator`` fed the row-normalised activations our probe documents — all ≥ 0.99.
- repeng 0.4.0: same activations except the last layer (its ``hidden_states[-1]`` has the final
  norm applied); its ``pca_diff`` is a *centred* PCA of the differences, which is not what
  traitflow's ``pca`` (= steering-vectors') computes, so the test pins that formula down
  instead of asserting agreement.

The peers are installed beside transformers 5 with ``pip install --no-deps steering-vectors==0.12.2
repeng==0.4.0`` plus ``pip install scikit-learn gguf`` (DESIGN §7); without them the module is
skipped with that instruction.
"""

import contextlib
import copy
import io
from pathlib import Path

import pytest
import torch

from traitflow.extract.methods import mean_diff, pca, probe

INSTALL = ("pip install --no-deps steering-vectors==0.12.2 repeng==0.4.0 && pip install scikit-learn gguf "
           "(DESIGN §7: a normal install downgrades transformers and numpy)")
try:
    import steering_vectors
except ImportError as exc:  # pragma: no cover - the setup installs it
    pytest.skip(f"steering-vectors is not installed ({exc}); install it with: {INSTALL}", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
TRAIT = ROOT / "datasets" / "traits" / "toy" / "optimism"
POSITIONS = ["prompt[-1]", "prompt[:]"]
MODELS = ["toy-chat", "tiny-llama"]
MIN_COS = 0.99


def _import_repeng():
    import numpy as np

    if not hasattr(np, "float_"):  # repeng 0.4.0 annotates with np.float_, removed in numpy 2
        np.float_ = np.float64
    try:
        import repeng.extract
    except ImportError as exc:
        pytest.skip(f"repeng is not installed ({exc}); install it with: {INSTALL}")
    return repeng.extract


def _cos(a, b) -> float:
    a, b = torch.as_tensor(a).double().flatten(), torch.as_tensor(b).double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.fixture(scope="session")
def cached(tiny_loaded):
    """``{model: {"loaded", "pos_texts", "neg_texts", "acts": {position: [100, layers, hidden]}}}``."""
    from traitflow.data.traits import load_trait
    from traitflow.model.chat import format_prompt, prompt_ids
    from traitflow.model.hooks import capture_pooled
    from traitflow.model.loading import MODEL_CACHE
    from traitflow.specs.models import ModelSpec

    trait = load_trait(TRAIT, "toy/optimism")
    assert trait.paired and len(trait.positive) == 50
    models = {
        "toy-chat": MODEL_CACHE.get(ModelSpec(name="chat", model="datasets/models/toy-chat", device="cpu", dtype="float32"), ROOT),
        "tiny-llama": tiny_loaded("llama"),
    }
    out = {}
    for name, loaded in models.items():
        scenarios = trait.positive + trait.negative
        seqs = [(prompt_ids(loaded, s.prompt, s.system_prompt), []) for s in scenarios]
        acts = capture_pooled(loaded, seqs, list(range(loaded.n_layers)), POSITIONS, batch_size=50)
        texts = [format_prompt(loaded, s.prompt, s.system_prompt)[0] for s in scenarios]
        out[name] = {"loaded": loaded, "pos_texts": texts[:50], "neg_texts": texts[50:], "acts": acts, "ids": seqs}
    return out


def _layers(data):
    return range(data["loaded"].n_layers)


def _sides(data, position, layer):
    acts = data["acts"][position][:, layer]
    return acts[:50], acts[50:]


@pytest.mark.parametrize("model", MODELS)
def test_steering_vectors_reads_the_same_activations(cached, model):
    from steering_vectors import extract_activations

    data = cached[model]
    loaded = data["loaded"]
    tokenizer = copy.deepcopy(loaded.tokenizer)  # it may set a pad token; keep the shared one untouched
    # the text it tokenises gives exactly our prompt ids
    assert [tokenizer(t)["input_ids"] for t in data["pos_texts"] + data["neg_texts"]] == [ids for ids, _ in data["ids"]]
    pos, neg = extract_activations(loaded.model, tokenizer, list(zip(data["pos_texts"], data["neg_texts"], strict=True)),
                                   layers=list(_layers(data)), read_token_index=-1, batch_size=25)
    for layer in _layers(data):
        ours_pos, ours_neg = _sides(data, "prompt[-1]", layer)
        torch.testing.assert_close(torch.cat(pos[layer]).float(), ours_pos, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.cat(neg[layer]).float(), ours_neg, atol=1e-4, rtol=1e-4)


def _agreement(cached, ours_fn, theirs_fn) -> dict[tuple[str, str, int], float]:
    return {
        (model, position, layer): _cos(ours_fn(*_sides(cached[model], position, layer)), theirs_fn(*_sides(cached[model], position, layer)))
        for model in MODELS
        for position in POSITIONS
        for layer in _layers(cached[model])
    }


def _assert_agree(cosines: dict, what: str) -> None:
    low = {k: round(v, 5) for k, v in cosines.items() if not v >= MIN_COS}
    print(f"\n{what}: min cos {min(cosines.values()):.6f} over {len(cosines)} (model, position, layer)")
    assert not low, f"{what} disagrees (cos < {MIN_COS}): {low}"


def test_mean_diff_agrees_with_mean_aggregator(cached):
    aggregate = steering_vectors.mean_aggregator()
    _assert_agree(_agreement(cached, lambda p, n: mean_diff(p, n, paired=True), aggregate), "mean_diff vs mean_aggregator")


def test_pca_agrees_with_pca_aggregator(cached):
    aggregate = steering_vectors.pca_aggregator()
    cosines = _agreement(cached, lambda p, n: pca(p, n, paired=True), aggregate)
    _assert_agree(cosines, "pca vs pca_aggregator (signed)")
    # the test can tell PCA apart from the mean difference on these activations
    differs = _agreement(cached, lambda p, n: pca(p, n, paired=True), lambda p, n: mean_diff(p, n))
    assert min(differs.values()) < 0.9


@pytest.mark.filterwarnings("ignore:Creating a tensor from a list of numpy.ndarrays")
def test_probe_agrees_with_logistic_aggregator(cached):
    aggregate = steering_vectors.logistic_aggregator()

    def theirs(p, n):  # our probe's documented preprocessing: each activation scaled to unit norm
        return aggregate(p / p.norm(dim=1, keepdim=True), n / n.norm(dim=1, keepdim=True))

    _assert_agree(_agreement(cached, lambda p, n: probe(p, n, paired=True), theirs), "probe vs logistic_aggregator (row-normalised)")


def test_repeng_pca_diff_is_a_centred_pca(cached):
    """repeng reads the same activations (but a post-norm last layer) and its pca_diff is the
    first principal component of the *centred* paired differences — a different estimator from
    traitflow's / steering-vectors' uncentred one, which is why the two disagree."""
    extract = _import_repeng()
    data = cached["toy-chat"]
    loaded = data["loaded"]
    layers = list(_layers(data))
    entries = [extract.DatasetEntry(p, n) for p, n in zip(data["pos_texts"], data["neg_texts"], strict=True)]
    strings = [s for e in entries for s in (e.positive, e.negative)]
    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bars
        hiddens = extract.batched_get_hiddens(loaded.model, loaded.tokenizer, strings, layers, 50)
        directions = extract.read_representations(loaded.model, loaded.tokenizer, entries, hidden_layers=layers, batch_size=50)
    for layer in layers:
        ours_pos, ours_neg = _sides(data, "prompt[-1]", layer)
        theirs_pos = torch.as_tensor(hiddens[layer][::2])
        if layer < loaded.n_layers - 1:
            torch.testing.assert_close(theirs_pos, ours_pos, atol=1e-4, rtol=1e-4)
        diffs = torch.as_tensor(hiddens[layer][::2] - hiddens[layer][1::2]).double()
        centred = torch.linalg.svd(diffs - diffs.mean(0), full_matrices=False)[2][0]
        assert abs(_cos(directions[layer], centred)) > 0.999
        if layer < loaded.n_layers - 1:
            # on the toy model the trait *is* the mean difference; repeng's centred PCA misses it
            assert abs(_cos(directions[layer], pca(ours_pos, ours_neg, paired=True))) < 0.9
