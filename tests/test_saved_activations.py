"""`inference.save_activations`: every response token's residual activations, saved once (float16),
so projections (for traits extracted later, too) run without the model and equal the model's."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
import torch
from safetensors import safe_open

from assets.runner import run_experiment
from traitflow.errors import SpecErrors, TraitflowError
from traitflow.specs.loader import load_project
from traitflow.stages.context import StageContext
from traitflow.stages.inference import run_inference_activations, run_projections

SAVED = "experiments/t/inference_activations/starter/general/{variant}/activations.safetensors"
PROJECTIONS = "experiments/t/projections/starter/general/{variant}/projections.json"


def copy_slice(project_root: Path, tmp_path: Path, **inference) -> Path:
    """The materialized slice with extra `inference:` keys (its store included)."""
    root = tmp_path / "proj"
    shutil.copytree(project_root, root)
    spec = root / "specs" / "experiments" / "t.yaml"
    extra = "".join(f"  {key}: {json.dumps(value)}\n" for key, value in inference.items())
    spec.write_text(spec.read_text().replace("  layers: best,best+1\n", "  layers: best,best+1\n" + extra))
    return root


def no_model(variant: str):
    raise AssertionError(f"the model of {variant} was loaded")


def assert_same_projections(saved: dict, model: dict) -> None:
    """Equal to float16 precision: |Δ score| <= 2^-11·‖h‖ per token (float16's unit roundoff times
    ‖h‖‖v̂‖ bounds the error of h·v̂; the stored numbers are rounded to 1e-5)."""
    assert saved["traits"] == model["traits"] and saved["layers"] == model["layers"]
    assert len(saved["items"]) == len(model["items"])
    for a, b in zip(saved["items"], model["items"], strict=True):
        assert (a["id"], a["tokens"], a["token_ids"], a["prompt_len"]) == (b["id"], b["tokens"], b["token_ids"], b["prompt_len"])
        for layer, norms in b["norms"].items():
            norms_b = torch.tensor(norms)
            assert torch.allclose(torch.tensor(a["norms"][layer]), norms_b, rtol=2**-11, atol=2e-5)
            for trait in b["scores"]:
                if layer in b["scores"][trait]:
                    delta = (torch.tensor(a["scores"][trait][layer]) - torch.tensor(b["scores"][trait][layer])).abs()
                    assert (delta <= 2**-11 * norms_b + 2e-5).all(), (trait, layer, float(delta.max()))


def test_saved_activations_file(project_root, materialized, tmp_path):
    root = copy_slice(project_root, tmp_path, save_activations=True)
    run_experiment(load_project(root), "t", stages=["inference_activations"], instance=dg.DagsterInstance.ephemeral())
    for variant in ("chat", "plain"):
        responses = json.loads((root / f"experiments/t/inference_responses/starter/general/{variant}/responses.json").read_text())
        lengths = [len(it["prompt_ids"]) + len(it["response_ids"]) for it in responses["items"]]
        with safe_open(str(root / SAVED.format(variant=variant)), framework="pt") as f:
            meta = {k: json.loads(v) if v[:1] in "[{0123456789" else v for k, v in f.metadata().items()}
            assert sorted(f.keys()) == ["layer/0", "layer/1", "layer/2", "offsets"]  # save_layers: all (3 layers)
            for layer in range(3):
                acts = f.get_tensor(f"layer/{layer}")
                assert acts.dtype == torch.float16 and acts.shape == (sum(lengths), 64)
                assert torch.isfinite(acts).all() and acts.abs().sum() > 0
            assert f.get_tensor("offsets").tolist() == [sum(lengths[:i]) for i in range(len(lengths) + 1)]
        assert meta["layers"] == [0, 1, 2] and meta["n_layers"] == 3 and meta["hidden_size"] == 64
        assert meta["dtype"] == "float16" and meta["component"] == "residual" and meta["variant"] == variant
        assert meta["ids"] == [it["id"] for it in responses["items"]] and meta["n_tokens"] == lengths
        assert [len(t) for t in meta["tokens"]] == lengths
        assert {**meta["model"], "source": ""} == {**responses["model"], "source": ""}  # (the copy moved the model)
        assert set(meta["input_hashes"]) == {"responses", "model"}


def test_projections_from_saved_activations_equal_the_models(project_root, materialized, tmp_path):
    """Through Dagster: inference_activations then projections; projections read the saved
    activations (no model) and give the model's numbers to float16 precision."""
    from traitflow.model.loading import MODEL_CACHE

    root = copy_slice(project_root, tmp_path, save_activations=True)
    project = load_project(root)
    run_experiment(project, "t", stages=["inference_activations"], instance=dg.DagsterInstance.ephemeral())
    for variant in ("chat", "plain"):
        (root / PROJECTIONS.format(variant=variant)).unlink()
    loads = MODEL_CACHE.loads
    run_experiment(project, "t", stages=["projections"], instance=dg.DagsterInstance.ephemeral())
    assert MODEL_CACHE.loads == loads
    for variant in ("chat", "plain"):
        saved = json.loads((root / PROJECTIONS.format(variant=variant)).read_text())
        model = json.loads((project_root / PROJECTIONS.format(variant=variant)).read_text())
        assert saved["computed_from"] == "saved_activations" and model["computed_from"] == "model"
        assert_same_projections(saved, model)
    # …and a stage context that cannot load a model at all gives the same record
    ctx = StageContext.create(load_project(root), "t", load_model=no_model)
    run_projections(ctx, "starter/general", "chat")
    again = json.loads((root / PROJECTIONS.format(variant="chat")).read_text())
    assert again["computed_from"] == "saved_activations"
    assert_same_projections(again, json.loads((project_root / PROJECTIONS.format(variant="chat")).read_text()))


def test_a_new_trait_is_projected_without_the_model(project_root, materialized, tmp_path):
    """Activations saved while the experiment monitored one trait serve a trait extracted later."""
    root = copy_slice(project_root, tmp_path, save_activations=True)
    spec = root / "specs" / "experiments" / "t.yaml"
    full = spec.read_text()
    spec.write_text(full.replace("traits: [starter/*]", "traits: [starter/optimism]"))
    ctx = StageContext.create(load_project(root), "t")
    run_inference_activations(ctx, "starter/general", "chat")
    spec.write_text(full)  # starter/formal joins (its vectors are in the store: extracted after the save)
    run_projections(StageContext.create(load_project(root), "t", load_model=no_model), "starter/general", "chat")
    saved = json.loads((root / PROJECTIONS.format(variant="chat")).read_text())
    assert set(saved["traits"]) == {"starter/optimism", "starter/formal"} and saved["computed_from"] == "saved_activations"
    assert_same_projections(saved, json.loads((project_root / PROJECTIONS.format(variant="chat")).read_text()))


def test_stale_or_narrow_saved_activations_fall_back_to_the_model(project_root, materialized, tmp_path):
    root = copy_slice(project_root, tmp_path, save_activations=True, save_layers="0")
    ctx = StageContext.create(load_project(root), "t")
    run_inference_activations(ctx, "starter/general", "chat")
    loaded: list[str] = []

    def counting(variant: str):
        loaded.append(variant)
        return ctx.load_model(variant)

    # layer 0 only: the traits are monitored at best,best+1, so the model projects
    run_projections(StageContext.create(load_project(root), "t", load_model=counting), "starter/general", "chat")
    record = json.loads((root / PROJECTIONS.format(variant="chat")).read_text())
    assert loaded == ["chat"] and record["computed_from"] == "model"

    # every layer saved, then the responses change: the saved activations are stale, the model projects
    spec = root / "specs" / "experiments" / "t.yaml"
    spec.write_text(spec.read_text().replace('  save_layers: "0"\n', ""))
    ctx = StageContext.create(load_project(root), "t")
    run_inference_activations(ctx, "starter/general", "chat")
    responses_path = root / "experiments/t/inference_responses/starter/general/chat/responses.json"
    responses = json.loads(responses_path.read_text())
    responses["items"][0]["response_ids"] = responses["items"][0]["response_ids"][:-1]
    responses_path.write_text(json.dumps(responses))
    loaded.clear()
    run_projections(StageContext.create(load_project(root), "t", load_model=counting), "starter/general", "chat")
    record = json.loads((root / PROJECTIONS.format(variant="chat")).read_text())
    assert loaded == ["chat"] and record["computed_from"] == "model"


def test_off_by_default_nothing_saved(project_root, materialized):
    from assets import build_defs

    assert not (project_root / "experiments/t/inference_activations").exists()
    graph = build_defs(load_project(project_root)).resolve_asset_graph()
    assert dg.AssetKey(["t", "inference_activations"]) not in graph.get_all_asset_keys()
    for variant in ("chat", "plain"):
        assert json.loads((project_root / PROJECTIONS.format(variant=variant)).read_text())["computed_from"] == "model"


def test_saved_activations_are_an_edge_of_projections(project_root, tmp_path):
    from assets import build_defs

    root = tmp_path / "proj"
    shutil.copytree(project_root, root, ignore=lambda folder, names: ["experiments"] if Path(folder) == project_root else [])
    spec = root / "specs" / "experiments" / "t.yaml"
    spec.write_text(spec.read_text().replace("  layers: best,best+1\n", "  layers: best,best+1\n  save_activations: true\n"))
    graph = build_defs(load_project(root)).resolve_asset_graph()
    saved = graph.get(dg.AssetKey(["t", "inference_activations"]))
    assert saved.pools == {"gpu"}
    assert sorted(saved.partitions_def.get_partition_keys()) == ["starter/general|chat", "starter/general|plain"]
    assert dg.AssetKey(["t", "inference_activations"]) in graph.get(dg.AssetKey(["t", "projections"])).parent_keys


@pytest.mark.parametrize(("value", "message"), [("best", "`best` is a trait's layer"), ("1,best+1", "`best`"),
                                                ("x", "bad layer token")])
def test_save_layers_validation(project_root, tmp_path, value, message):
    root = tmp_path / "proj"
    shutil.copytree(project_root, root, ignore=lambda folder, names: ["experiments"] if Path(folder) == project_root else [])
    spec = root / "specs" / "experiments" / "t.yaml"
    spec.write_text(spec.read_text().replace("  layers: best,best+1\n", f"  layers: best,best+1\n  save_layers: {value}\n"))
    with pytest.raises(SpecErrors) as errors:
        load_project(root)
    assert any(e.field == "inference.save_layers" and message in e.message for e in errors.value.errors), errors.value.errors


def test_save_layers_out_of_range_names_the_key(project_root, materialized, tmp_path):
    root = copy_slice(project_root, tmp_path, save_activations=True, save_layers="0-7")
    with pytest.raises(TraitflowError, match=r"inference.save_layers: .*out of range"):
        run_inference_activations(StageContext.create(load_project(root), "t"), "starter/general", "chat")


def test_sync_leaves_them_behind_by_default():
    from traitflow.sync import synced

    path = "inference_activations/starter/general/chat/activations.safetensors"
    assert not synced(path, include_activations=False) and synced(path, include_activations=True)
    assert synced("projections/starter/general/chat/projections.json", include_activations=False)
