"""The asset table (traitflow.graph) is the one definition of the graph: the Dagster factories build
exactly its edges, kinds, checks and pools, `traitflow run` runs its stages, and editing a spec field
changes the code version of exactly the assets that read it and their descendants."""

import shutil

import dagster as dg
import pytest

from tests.test_every_key import CHANGES, apply_change, base_root, write_project  # noqa: F401 (base_root: a fixture)
from traitflow.graph import ASSETS, STAGES, descendants, row
from traitflow.specs.loader import TRAIT_OVERRIDES, load_project


def test_factories_build_the_table(base_root):  # noqa: F811
    from assets import build_defs

    project = load_project(base_root)
    exp = project.experiments["x"]
    graph = build_defs(project).resolve_asset_graph()
    built = {k.path[1] for k in graph.get_all_asset_keys() if k.path[0] == "x" and graph.get(k).is_materializable}
    assert built == {r.name for r in ASSETS if r.opt_in is None}  # cma_es is opt-in and off here
    for name in built:
        node = graph.get(dg.AssetKey(["x", name]))
        parents = {k.path[1] for k in node.parent_keys if k.path[0] == "x" and graph.get(k).is_materializable}
        assert parents == set(row(name).upstream) & built, name
        assert set(node.kinds) == set(row(name).kinds), name
        assert node.code_version == exp.code_version(name)
        assert {c.name for c in node.check_keys} == set(row(name).checks), name
        assert (node.pools == {"gpu"}) == row(name).gpu, name


def test_runner_stages_are_the_tables():
    from assets.runner import _asset_names

    assert _asset_names(["all"]) == [r.name for r in ASSETS]
    assert list(STAGES) == list(dict.fromkeys(r.stage for r in ASSETS))


def readers(field: str) -> set[str]:
    """Assets whose code version must change when `field` (a spec path) changes."""
    kind, _, rest = field.partition(".")
    if field == "variant.name":  # the name of a model file no experiment here uses
        return set()
    if kind == "variant" or field == "variants":
        direct = set()  # a variant is versioned by its `models` source, per variant (test_model_sources)
    elif kind == "trait":
        overridden = {path for path, keys in TRAIT_OVERRIDES.items() if rest in keys}
        direct = {r.name for r in ASSETS if overridden & set(r.reads)}
    else:
        path = field.replace("[]", "").replace("inference.import", "inference.import_responses")
        direct = {r.name for r in ASSETS for read in r.reads
                  if path == read or path.startswith(read + ".") or read.startswith(path + ".")}
    return direct | {d for name in direct for d in descendants(name)}


# Where test_every_key's change is an error in the base project, a change that loads.
LOADING_CHANGES = {
    "extraction.position": ["prompt[-1]", "response[:3]", "response[:1]"],
    "trait.position": ["response[:3]", "prompt[-1]"],
    "trait.methods": ["probe", "mean_diff", "pca"],
    "variants": {"chat": {"model": "models/llama", "device": "cpu"}, "other": {"model": "models/llama", "device": "cpu",
                 "chat_template": False}, "third": {"model": "models/llama", "device": "cpu", "dtype": "float32"}},
}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_a_field_changes_exactly_its_readers(field, base_root, tmp_path):  # noqa: F811
    base = load_project(base_root, strict=False).experiments["x"]
    root = tmp_path / "proj"
    shutil.copytree(base_root, root, symlinks=True)
    write_project(root, *apply_change(field, LOADING_CHANGES.get(field, CHANGES[field])))
    project = load_project(root, strict=False)
    changed_exp = next((e for name, e in project.experiments.items() if name != "src"), None)
    if changed_exp is None or project.errors:
        pytest.skip(f"{field}: this change is an error (shown by test_every_key)")
    changed = {r.name for r in ASSETS if changed_exp.code_version(r.name) != base.code_version(r.name)}
    assert changed == readers(field)


# --------------------------------------------------------------------------- what stages really read
# Spec fields that shape partitions and paths rather than results (they change which partitions
# exist, not what one partition holds) — any stage may read them.
STRUCTURE = {"name", "variants", "traits", "extraction.variant", "steering.variants", "inference.variants",
             "inference.prompt_sets", "storage.uri", "storage.endpoint_url", "storage.region", "storage.checksums", "comparisons", "steering.vectors_from", "inference.vectors_from",
             "inference.replay",  # which asset holds a variant's responses (inference_responses or replayed_responses)
             "inference.save_activations"}  # whether inference_activations exists (projections use it only then)
PROPERTIES = {"extraction.positions": "extraction.position"}


class Recorder:
    """Wraps a spec model and records every field path read through it."""

    def __init__(self, model, path: str, log: set[str]):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_log", log)

    def __getattr__(self, name: str):
        from pydantic import BaseModel

        value = getattr(self._model, name)
        path = f"{self._path}.{name}" if self._path else name
        if isinstance(value, BaseModel):
            return Recorder(value, path, self._log)
        if not callable(value):
            self._log.add(PROPERTIES.get(path, path))
        return value


def covered(path: str, fields: set[str]) -> bool:
    return any(path == f or path.startswith(f + ".") or f.startswith(path + ".") for f in fields)


STAGE_CALLS = [  # (asset, stage function in traitflow.stages, partition) on the materialized slice (tests/conftest.py)
    ("responses", "extraction.run_responses", {"trait": "starter/optimism", "variant": "chat"}),
    ("vetting", "extraction.run_vetting", {"trait": "starter/optimism", "variant": "chat"}),
    ("activations", "extraction.run_activations", {"trait": "starter/optimism", "variant": "chat"}),
    ("vectors", "extraction.run_vectors", {"trait": "starter/optimism", "variant": "chat"}),
    ("extraction_eval", "extraction.run_extraction_eval", {"trait": "starter/optimism", "variant": "chat"}),
    ("logit_lens", "extraction.run_logit_lens", {"trait": "starter/optimism", "variant": "chat"}),
    ("steering", "steering.run_steering_stage", {"trait": "starter/optimism", "variant": "chat"}),
    ("best_vector", "steering.run_best_vector", {"trait": "starter/optimism"}),
    ("calibration", "inference.run_calibration", {"variant": "chat"}),
    ("inference_responses", "inference.run_inference_responses", {"prompt_set": "starter/general", "variant": "chat"}),
    # (projections below then read these saved activations: both of its paths read only its row's fields)
    ("inference_activations", "inference.run_inference_activations", {"prompt_set": "starter/general", "variant": "chat"}),
    ("projections", "inference.run_projections", {"prompt_set": "starter/general", "variant": "chat"}),
    ("variant_diff", "comparison.run_variant_diff", {"comparison": "chat_vs_plain/starter/general"}),
    ("summary", "summary.run_summary", {}),
]


def test_stages_read_only_what_the_table_says(project_root, materialized, tmp_path):
    """Run every stage once with a recording spec: each reads only its row's `reads` and
    `settings` (plus the fields that shape partitions). A field read but not declared would
    change results without marking anything stale: the drift this table exists to prevent."""
    import importlib
    from dataclasses import replace

    from traitflow.stages.context import StageContext

    store = tmp_path / "store"
    shutil.copytree(project_root / "experiments", store)
    project = load_project(project_root)
    exp = project.experiments["t"]
    undeclared = {}
    for asset, stage, partition in STAGE_CALLS:
        log: set[str] = set()
        project.experiments["t"] = replace(exp, spec=Recorder(exp.spec, "", log))
        try:
            ctx = StageContext.create(project, "t", storage_uri=str(store))
            module, function = stage.split(".")
            getattr(importlib.import_module(f"traitflow.stages.{module}"), function)(ctx, **partition)
        finally:
            project.experiments["t"] = exp
        allowed = set(row(asset).reads) | set(row(asset).settings) | STRUCTURE
        extra = sorted(p for p in log if not covered(p, allowed))
        if extra:
            undeclared[asset] = extra
        assert log, f"{stage} read no spec field through the recorder; the test would prove nothing"
    assert not undeclared, f"stages read spec fields their asset-table row does not declare: {undeclared}"
