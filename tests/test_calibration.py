"""Calibration (massive dims, mean norms) and the projection score options."""

import json

import pytest
import torch

from traitflow.model.arch import decoder_layers
from traitflow.model.hooks import add_hooks, output_tensor, replace_output
from traitflow.monitor.calibration import (
    NEUTRAL_PROMPTS_PATH,
    calibrate,
    load_neutral_prompts,
    massive_dims,
    mean_norms,
    neutral_prompt_ids,
)
from traitflow.monitor.projections import TraitProbe, project_responses

ARCHS = ("llama", "gemma2")


def _hidden_states(loaded, ids: list[int]):
    with torch.inference_mode():
        return loaded.model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False).hidden_states


def _prompt_ids(loaded) -> list[list[int]]:
    return neutral_prompt_ids(loaded)[:10]


def test_neutral_prompts_ship_with_package():
    ps = load_neutral_prompts()
    assert ps.name == "traitflow/neutral"
    assert len(ps.prompts) >= 20
    assert len({p.id for p in ps.prompts}) == len(ps.prompts)
    data = json.loads(NEUTRAL_PROMPTS_PATH.read_text())
    assert set(data) >= {"name", "description", "prompts"}


@pytest.mark.parametrize("arch", ARCHS)
def test_calibrate_matches_direct_computation(arch, tiny_loaded):
    loaded = tiny_loaded(arch)
    ids = _prompt_ids(loaded)
    record = calibrate(loaded, ids, top_k=5, batch_size=4)
    json.dumps(record, allow_nan=False)  # JSON-able
    n_layers = loaded.n_layers
    assert record["layers"] == list(range(n_layers))
    assert set(record["components"]) == {"residual", "attn_out", "mlp_out"}
    assert record["n_tokens"] == sum(len(s) for s in ids)

    states = [_hidden_states(loaded, s) for s in ids]
    for layer in range(n_layers - 1):  # hidden_states[L+1] is block L's output except the last (final norm)
        h = torch.cat([hs[layer + 1][0].double() for hs in states])  # [N, H], every token
        assert record["components"]["residual"]["mean_norm"][layer] == pytest.approx(float(h.norm(dim=-1).mean()), rel=1e-4)
        stat = h.mean(0).abs()
        expected = torch.topk(stat, 5)
        got = record["massive"][layer]
        assert got["layer"] == layer
        assert [d["dim"] for d in got["dims"]] == expected.indices.tolist()
        for d, v in zip(got["dims"], expected.values.tolist(), strict=True):
            assert d["abs_mean"] == pytest.approx(v, rel=1e-4, abs=1e-6)
            assert d["ratio_to_median"] == pytest.approx(v / float(stat.median()), rel=1e-3)
    for comp in ("attn_out", "mlp_out"):
        assert all(v > 0 for v in record["components"][comp]["mean_norm"])
    assert mean_norms(record) == dict(enumerate(record["components"]["residual"]["mean_norm"]))


def test_calibrate_finds_synthetic_massive_dim(tiny_loaded):
    loaded = tiny_loaded("llama")
    ids = _prompt_ids(loaded)

    def bump(module, inputs, output):
        h = output_tensor(output).clone()
        h[..., 3] += 1000.0
        return replace_output(output, h)

    with add_hooks([(block, bump) for block in decoder_layers(loaded.model)]):
        record = calibrate(loaded, ids, components=("residual",), top_k=4, batch_size=16)
    assert set(record["components"]) == {"residual"}
    for entry in record["massive"]:
        top = entry["dims"][0]
        assert top["dim"] == 3 and top["abs_mean"] > 500 and top["ratio_to_median"] > 100
    assert 3 in record["recurring_dims"]
    assert all(3 in dims for dims in massive_dims(record, min_ratio=100).values())
    # the hook is gone afterwards; a clean calibration has no such dim
    clean = calibrate(loaded, ids, components=("residual",), top_k=4)
    assert all(entry["dims"][0]["abs_mean"] < 500 for entry in clean["massive"])


# --------------------------------------------------------------------------- projection modes
def _setup(tiny_loaded, arch="llama"):
    loaded = tiny_loaded(arch)
    g = torch.Generator().manual_seed(1)
    items = []
    for i in range(3):
        p = torch.randint(5, 300, (int(4 + i),), generator=g).tolist()
        r = torch.randint(5, 300, (int(3 + 2 * i),), generator=g).tolist()
        items.append({"id": i, "prompt_ids": p, "response_ids": r, "response": "x"})
    responses = {"prompt_set": "t/s", "variant": "v", "items": items}
    layers = [0, 1]
    probes = []
    for name in ("a", "b"):
        v = torch.randn(len(layers), loaded.hidden_size, generator=g)
        probes.append(TraitProbe(name, "response[:3]", "residual", "probe", layers, v / v.norm(dim=-1, keepdim=True)))
    return loaded, responses, probes


def _scores(record, trait, layer, item=0):
    return torch.tensor(record["items"][item]["scores"][trait][str(layer)], dtype=torch.float64)


def _norms(record, layer, item=0):
    return torch.tensor(record["items"][item]["norms"][str(layer)], dtype=torch.float64)


def test_projection_modes(tiny_loaded):
    loaded, responses, probes = _setup(tiny_loaded)
    raw = project_responses(loaded, responses, probes, 2)
    assert raw["mode"] == "raw" and raw["centred"] is False and raw["cleaned"] == {}
    assert raw == project_responses(loaded, responses, probes, 2, mode="raw")
    cos = project_responses(loaded, responses, probes, 2, mode="cosine")
    norms = {0: 7.5, 1: 11.25}
    nrm = project_responses(loaded, responses, probes, 2, mode="normalized", mean_norms=norms)
    assert cos["mode"] == "cosine" and nrm["mode"] == "normalized"
    for i in range(3):
        for probe in probes:
            for layer in (0, 1):
                r = _scores(raw, probe.trait, layer, i)
                c = _scores(cos, probe.trait, layer, i)
                assert (c.abs() <= 1 + 1e-5).all()
                assert torch.allclose(c, r / _norms(raw, layer, i), atol=2e-5)
                assert torch.allclose(_scores(nrm, probe.trait, layer, i), r / norms[layer], atol=2e-5)
    with pytest.raises(ValueError, match="mean_norms"):
        project_responses(loaded, responses, probes, 2, mode="normalized")
    with pytest.raises(ValueError, match="mode"):
        project_responses(loaded, responses, probes, 2, mode="bogus")


def test_projection_centring(tiny_loaded):
    loaded, responses, probes = _setup(tiny_loaded)
    raw = project_responses(loaded, responses, probes, 2)
    centre = {"a": {0: 0.5, 1: -1.25}, "b": {0: 2.0, 1: 0.0}}
    cen = project_responses(loaded, responses, probes, 2, centre=centre)
    assert cen["centred"] is True
    for probe in probes:
        for layer in (0, 1):
            assert torch.allclose(_scores(cen, probe.trait, layer), _scores(raw, probe.trait, layer) - centre[probe.trait][layer], atol=2e-5)
    # centring comes before normalisation
    nrm = project_responses(loaded, responses, probes, 2, mode="normalized", mean_norms={0: 4.0, 1: 4.0}, centre=centre)
    expected = (_scores(raw, "a", 1) + 1.25) / 4.0
    assert torch.allclose(_scores(nrm, "a", 1), expected, atol=2e-5)
    with pytest.raises(ValueError, match="baseline"):
        project_responses(loaded, responses, probes, 2, centre={"a": centre["a"]})


def test_projection_cleaning(tiny_loaded):
    loaded, responses, probes = _setup(tiny_loaded)
    raw = project_responses(loaded, responses, probes, 2)
    dims = [3, 17]
    cl = project_responses(loaded, responses, probes, 2, clean_dims={0: dims})
    assert cl["cleaned"] == {"0": dims}
    item = responses["items"][1]
    hs = _hidden_states(loaded, item["prompt_ids"] + item["response_ids"])
    for probe in probes:
        h = hs[1][0].double()  # block 0 output, [T, H]
        v = probe.vectors[0].double()
        delta = (h[:, dims] * v[dims]).sum(-1)
        assert torch.allclose(_scores(raw, probe.trait, 0, 1) - _scores(cl, probe.trait, 0, 1), delta, atol=5e-5)
        # layer 1 is not cleaned
        assert torch.equal(_scores(raw, probe.trait, 1, 1), _scores(cl, probe.trait, 1, 1))
    h = hs[1][0].double()
    h_c = h.clone()
    h_c[:, dims] = 0
    assert torch.allclose(_norms(cl, 0, 1), h_c.norm(dim=-1), atol=1e-4)
    cos = project_responses(loaded, responses, probes, 2, mode="cosine", clean_dims={0: dims})
    expected = h_c @ probes[0].vectors[0].double() / h_c.norm(dim=-1)
    assert torch.allclose(_scores(cos, "a", 0, 1), expected, atol=1e-4)
    assert cos["cleaned"] == {"0": dims}
