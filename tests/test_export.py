"""GGUF export: llama.cpp control vectors round-trip through gguf's own reader; CLI on a synthetic store."""

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from tests.test_specs import make_project
from traitflow.cli import main
from traitflow.errors import TraitflowError
from traitflow.export import export_gguf
from traitflow.extract.vectors import LAYER_NUMBERING, VectorSet
from traitflow.store import ArtifactStore

HIDDEN = 8
LAYERS = [0, 1, 2, 3]


def make_vectors() -> VectorSet:
    generator = torch.Generator().manual_seed(0)
    vs = VectorSet(layers=list(LAYERS), metadata={"trait": "starter/optimism", "variant": "chat", "component": "residual",
                                                  "layer_numbering": LAYER_NUMBERING})
    for component in ("residual", "attn_out"):
        for method in ("mean_diff", "probe"):
            raw = torch.randn((len(LAYERS), HIDDEN), generator=generator)
            key = ("prompt[-1]", component, method)
            vs.vectors[key] = raw / raw.norm(dim=-1, keepdim=True)
            vs.baselines[key] = torch.zeros(len(LAYERS))
            vs.train_accuracy[key] = torch.ones(len(LAYERS))
        vs.norms[("prompt[-1]", component)] = torch.full((len(LAYERS),), 10.0)
    return vs


def read_gguf(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [HIDDEN]
    return fields, tensors


def test_round_trip_through_gguf_reader(tmp_path):
    vs = make_vectors()
    out = export_gguf(vs, "prompt[-1]", "residual", "probe", tmp_path / "v.gguf", coefficient=2.5, model_hint="qwen2")
    assert out == tmp_path / "v.gguf"
    fields, tensors = read_gguf(out)
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "qwen2"
    # llama.cpp rejects direction.0 and never steers layer 0: every other stored layer, same numbering.
    assert fields["controlvector.layer_count"] == 3
    assert sorted(tensors) == ["direction.1", "direction.2", "direction.3"]
    for layer in (1, 2, 3):
        expected = (vs.vector("prompt[-1]", "residual", "probe", layer) * 2.5).numpy()
        np.testing.assert_allclose(tensors[f"direction.{layer}"], expected, rtol=1e-6)
    assert fields["traitflow.method"] == "probe" and fields["traitflow.position"] == "prompt[-1]"
    assert fields["traitflow.coefficient"] == pytest.approx(2.5)
    assert [p.name for p in tmp_path.iterdir()] == ["v.gguf"]  # no temp file left behind


def test_explicit_layers_and_overwrite(tmp_path):
    vs = make_vectors()
    out = tmp_path / "sub" / "v.gguf"
    export_gguf(vs, "prompt[-1]", "residual", "mean_diff", out)
    export_gguf(vs, "prompt[-1]", "residual", "mean_diff", out, layers=[2], coefficient=-1.0)
    fields, tensors = read_gguf(out)
    assert fields["controlvector.layer_count"] == 1 and list(tensors) == ["direction.2"]
    np.testing.assert_allclose(tensors["direction.2"], -vs.vector("prompt[-1]", "residual", "mean_diff", 2).numpy())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"component": "attn_out"}, "residual stream"),
    ({"method": "pca"}, "no 'pca' vector"),
    ({"layers": [0, 1]}, "layer 0 cannot be exported"),
    ({"layers": [7]}, r"layers \[7\] were not extracted"),
])
def test_user_mistakes_are_one_line_errors(tmp_path, kwargs, message):
    args = {"position": "prompt[-1]", "component": "residual", "method": "mean_diff", "out": tmp_path / "v.gguf"} | kwargs
    with pytest.raises(TraitflowError, match=message) as info:
        export_gguf(make_vectors(), **args)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "v.gguf").exists()


@pytest.mark.parametrize("coefficient", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_coefficient_is_refused(tmp_path, coefficient):
    with pytest.raises(TraitflowError, match=f"^coefficient {coefficient} is not a finite number; nothing exported$"):
        export_gguf(make_vectors(), "prompt[-1]", "residual", "probe", tmp_path / "v.gguf", coefficient=coefficient)
    assert list(tmp_path.iterdir()) == []


def test_coefficient_overflowing_float32_is_refused(tmp_path):
    """1e39 is finite as a Python float but every product is ±inf in the file's float32 tensors."""
    with pytest.raises(TraitflowError, match=r"overflows float32 at layers \[1, 2, 3\]; nothing exported$"):
        export_gguf(make_vectors(), "prompt[-1]", "residual", "probe", tmp_path / "v.gguf", coefficient=1e39)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_vector_with_non_finite_values_is_refused(tmp_path, bad):
    vs = make_vectors()
    vs.vectors[("prompt[-1]", "residual", "probe")][2, 3] = bad
    for layers in (None, [1, 2]):
        with pytest.raises(TraitflowError, match=r"^the 'probe' vector at position 'prompt\[-1\]' has non-finite values at "
                                                 r"layers \[2\]; nothing exported$"):
            export_gguf(vs, "prompt[-1]", "residual", "probe", tmp_path / "v.gguf", layers=layers)
    assert list(tmp_path.iterdir()) == []
    export_gguf(vs, "prompt[-1]", "residual", "probe", tmp_path / "v.gguf", layers=[3])  # the finite layers still export
    assert list(read_gguf(tmp_path / "v.gguf")[1]) == ["direction.3"]


def test_all_nan_row_is_a_layer_without_the_vector(tmp_path):
    """An all-NaN row is how a CMA-ES refinement marks layers it was not optimised at: skipped by
    default, a one-line error when asked for."""
    vs = make_vectors()
    vs.vectors[("prompt[-1]", "residual", "probe")][2] = float("nan")
    export_gguf(vs, "prompt[-1]", "residual", "probe", tmp_path / "v.gguf")
    assert sorted(read_gguf(tmp_path / "v.gguf")[1]) == ["direction.1", "direction.3"]
    expected = r"^layers \[2\]: this vector is not defined there \(non-finite\); it is at layers 0,1,3$"
    with pytest.raises(TraitflowError, match=expected):
        export_gguf(vs, "prompt[-1]", "residual", "probe", tmp_path / "w.gguf", layers=[2])
    assert not (tmp_path / "w.gguf").exists()


# --------------------------------------------------------------------------- CLI
EXPERIMENT = """\
name: exp
variants:
  chat: {model: some-org/some-model}
traits: [starter/optimism, starter/formal]
extraction: {position: ["prompt[-1]"]}
"""


@pytest.fixture()
def project(tmp_path) -> Path:
    """A project whose store holds vectors + extraction_eval for starter/optimism only."""
    root = make_project(tmp_path, EXPERIMENT)
    store = ArtifactStore(root / "experiments")
    tensors, meta = make_vectors().to_tensors()
    store.write_tensors(store.path("exp", "vectors", ("starter", "optimism", "chat"), "vectors.safetensors"), tensors, meta)
    scores = [{"position": "prompt[-1]", "component": "residual", "method": m, "layer": layer, "val_accuracy": 1.0,
               "auroc": 1.0, "cohens_d": d, "polarity": 1, "n_val": 4}
              for m, d0 in (("mean_diff", 1.0), ("probe", 2.0)) for layer, d in zip(LAYERS, (d0, d0 + 3, d0 + 1, d0), strict=True)]
    best = scores[5]  # probe at layer 1 (largest Cohen's d)
    store.write_json(store.path("exp", "extraction_eval", ("starter", "optimism", "chat"), "extraction_eval.json"),
                     {"trait": "starter/optimism", "variant": "chat", "best": {"prompt[-1]": best}, "scores": scores})
    return root


def test_cli_exports_the_best_method(project, tmp_path, capsys):
    out = tmp_path / "out.gguf"
    code = main(["export", "gguf", "exp", "--trait", "starter/optimism", "--root", str(project), "--out", str(out),
                 "--coefficient", "3"])
    assert code == 0, capsys.readouterr().err
    fields, tensors = read_gguf(out)
    assert fields["traitflow.method"] == "probe" and fields["traitflow.trait"] == "starter/optimism"
    assert sorted(tensors) == ["direction.1", "direction.2", "direction.3"]
    text = capsys.readouterr().out
    assert "wrote" in text and "best layer by extraction_eval: 1" in text


def test_cli_layers_best_and_explicit_method(project, tmp_path, capsys):
    out = tmp_path / "best.gguf"
    code = main(["export", "gguf", "exp", "--trait", "starter/optimism", "--root", str(project), "--out", str(out),
                 "--method", "mean_diff", "--layers", "best,best+1"])
    assert code == 0, capsys.readouterr().err
    fields, tensors = read_gguf(out)
    assert fields["traitflow.method"] == "mean_diff"
    assert sorted(tensors) == ["direction.1", "direction.2"]  # mean_diff's best layer is 1


@pytest.mark.parametrize(("extra", "message"), [
    (["--trait", "starter/nope"], "has no trait 'starter/nope'"),
    (["--trait", "starter/formal"], "artifact missing"),
    (["--trait", "starter/optimism", "--method", "gradient"], "method 'gradient' was not extracted"),
    (["--trait", "starter/optimism", "--position", "response[:5]"], "position 'response[:5]' was not extracted"),
    (["--trait", "starter/optimism", "--layers", "0"], "layer 0 cannot be exported"),
    (["--trait", "starter/optimism", "--coefficient", "nan"], "coefficient nan is not a finite number"),
    (["--trait", "starter/optimism", "--coefficient", "inf"], "coefficient inf is not a finite number"),
])
def test_cli_user_mistakes_exit_2_with_one_line(project, tmp_path, capsys, extra, message):
    code = main(["export", "gguf", "exp", "--root", str(project), "--out", str(tmp_path / "x.gguf"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "x.gguf").exists()


def test_cli_default_out_name(project, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "gguf", "exp", "--trait", "starter/optimism", "--root", str(project)]) == 0
    assert (tmp_path / "starter-optimism-chat-probe.gguf").exists()
