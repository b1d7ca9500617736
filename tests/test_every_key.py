"""Every key we accept does something: for each field of every spec model (experiment, model
variant, trait.yaml), changing it from a base project changes an artifact's inputs, a code version,
the asset graph, or gives an error.

The field list is walked from the pydantic models, so a new key without an entry in `CHANGES`
fails `test_every_field_has_a_change` until someone shows what it does.
"""

import copy
import json
import shutil
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from tests.traitinterp import write_prompt_set, write_starter_traits
from traitflow.specs.models import ExperimentSpec, ModelSpec, TraitConfig

BASE = {
    "name": "x",
    "variants": {"chat": {"model": "models/llama", "device": "cpu"},
                 "other": {"model": "models/llama", "device": "cpu", "chat_template": False}},
    "traits": ["starter/*"],
    "judge": {"model": "keywords"},
    "judges": {"strict": {"model": "keywords"}},
    "extraction": {"variant": "chat", "position": ["prompt[-1]", "response[:3]"], "methods": ["probe", "mean_diff"],
                   "max_new_tokens": 2, "batch_size": 16},
    "steering": {"variants": ["chat"], "position": "prompt[-1]", "method": "mean_diff"},
    "inference": {"variants": ["chat", "other"], "prompt_sets": ["starter/general"], "sample": {"temperature": 1.0},
                  "position": "response[:3]", "method": "probe"},
    "comparisons": [{"a": "chat", "b": "other", "prompt_set": "starter/general"}],
}
TRAIT_YAML = {"keywords": {"positive": ["hope"], "negative": ["doom"]}}

# One change per field: spec path -> the value it takes (list items: the first item; benchmarks get one).
CHANGES: dict[str, typing.Any] = {
    "name": "y",
    "variants": {"chat": {"model": "models/llama", "device": "cpu"}},
    "traits": ["starter/optimism"],
    "judge.model": "openai/gpt-4.1-mini",
    "judge.api_base": "http://127.0.0.1:9/v1",
    "judge.max_concurrency": 2,
    "judge.timeout_s": 5.0,
    "judge.max_retries": 0,
    "judge.backoff_s": 0.1,
    "judge.max_failure_rate": 0.5,
    "judge.deadline_s": 60.0,
    "judges": {"strict": {"model": "keywords", "timeout_s": 5.0}},
    "extraction.variant": "other",
    "extraction.position": ["prompt[-1]"],
    "extraction.component": "mlp_out",
    "extraction.methods": ["probe"],
    "extraction.layers": "1",
    "extraction.val_split": 0.3,
    "extraction.max_new_tokens": 3,
    "extraction.batch_size": 7,
    "extraction.seed": 1,
    "extraction.clean_massive_dims": True,
    "extraction.min_val_accuracy": 0.9,
    "extraction.vetting.enabled": True,
    "extraction.vetting.pos_threshold": 70,
    "extraction.vetting.neg_threshold": 30,
    "extraction.vetting.min_per_side": 3,
    "extraction.vetting.paired_filter": True,
    "extraction.vetting.adaptive_position": True,
    "logit_lens.top_k": 5,
    "logit_lens.filter_common": False,
    "steering.variants": ["chat", "other"],
    "steering.layers": "1",
    "steering.position": "response[:3]",
    "steering.method": "probe",
    "steering.min_delta": 20,
    "steering.system_prompt": "Be gloomy.",
    "steering.strip_prefix": True,
    "steering.coefficients": [0.5, 1.0],
    "steering.vectors_from": "src",
    "steering.search.steps": 2,
    "steering.search.questions": 2,
    "steering.search.max_new_tokens": 8,
    "steering.search.coherence_target": 70,
    "steering.search.min_coherence": 60,
    "steering.search.start": 0.3,
    "steering.search.up": 2.0,
    "steering.search.down": 0.5,
    "steering.search.batch_size": 4,
    "steering.cma_es.enabled": True,
    "steering.cma_es.generations": 2,
    "steering.cma_es.subspace_dim": 2,
    "steering.cma_es.sigma0": 0.3,
    "steering.cma_es.popsize": 4,
    "steering.cma_es.seed": 3,
    "inference.variants": ["chat"],
    "inference.sample.temperature": 0.7,
    "inference.sample.top_p": 0.9,
    "inference.sample.seed": 5,
    "inference.replay": {"other": "chat"},
    "inference.import": {"other": "datasets/imports/other.json"},
    "inference.prompt_sets": ["starter/second"],
    "inference.layers": "best+1",
    "inference.position": "prompt[-1]",
    "inference.score": "cosine",
    "inference.centre": True,
    "inference.clean_massive_dims": True,
    "inference.method": "mean_diff",
    "inference.response_only": True,
    "inference.vectors_from": "src",
    "inference.save_activations": True,
    "inference.save_layers": "1",
    "inference.max_new_tokens": 5,
    "inference.batch_size": 3,
    "comparisons[].a": "other",
    "comparisons[].b": "chat",
    "comparisons[].prompt_set": "starter/second",
    "comparisons[].top_pct": 50,
    "benchmarks[].name": "arc_easy",
    "benchmarks[].variants": ["chat"],
    "benchmarks[].limit": 10,
    "benchmarks[].source": "datasets/bench.jsonl",
    "benchmarks[].conditions[].steer": "starter/formal",
    "benchmarks[].conditions[].coef": -1.0,
    "benchmarks[].conditions[].layer": 1,
    "benchmarks[].chat_template": True,
    "storage.uri": "./elsewhere",
    "storage.endpoint_url": "http://127.0.0.1:9",
    "storage.region": "auto",
    "storage.checksums": "when_required",
    "automation.on_change": "materialize",
    "automation.schedule": "0 3 * * *",
    # model variants: the `chat` variant inline, and `name` in a model file
    "variant.name": "zzz",
    "variant.model": "some-org/some-model",
    "variant.revision": "main",
    "variant.dtype": "bfloat16",
    "variant.device": "cuda",
    "variant.device_map": "auto",
    "variant.quantization": "8bit",
    "variant.lora": "some-org/adapter",
    "variant.chat_template": False,
    "variant.trust_remote_code": True,
    "variant.chat_template_kwargs": {"enable_thinking": True},
    # trait.yaml of starter/optimism (which has no definition.txt in the base project)
    "trait.description": "How hopeful the reply is.",
    "trait.direction": "negative",
    "trait.paired": False,
    "trait.judge": "strict",
    "trait.position": ["prompt[-1]"],
    "trait.methods": ["mean_diff"],
    "trait.layers": "1",
    "trait.keywords.positive": ["bright"],
    "trait.keywords.negative": ["fine"],
}


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def leaf_fields(cls: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, info in cls.model_fields.items():
        key, subs = info.alias or name, _models_in(info.annotation)
        if not subs or typing.get_origin(info.annotation) is dict:  # a map of specs (variants, judges) is one key
            out.append(prefix + key)
        else:
            out += leaf_fields(subs[0], prefix + key + ("[]." if typing.get_origin(info.annotation) is list else "."))
    return out


def all_fields() -> list[str]:
    return (leaf_fields(ExperimentSpec) + [f"variant.{f}" for f in leaf_fields(ModelSpec)]
            + [f"trait.{f}" for f in leaf_fields(TraitConfig)])


def test_every_field_has_a_change():
    assert sorted(all_fields()) == sorted(CHANGES)


# --------------------------------------------------------------------------- the base project
@pytest.fixture(scope="module")
def base_root(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("every_key") / "base"
    shutil.copytree(tiny_model_dir("llama"), root / "models" / "llama")
    write_starter_traits(root / "datasets" / "traits" / "starter", ["optimism", "formal"])
    (root / "datasets" / "traits" / "starter" / "optimism" / "definition.txt").unlink()
    write_prompt_set(root / "datasets" / "inference" / "starter" / "general.json")
    write_prompt_set(root / "datasets" / "inference" / "starter" / "second.json", n=4)
    (root / "datasets" / "imports").mkdir()
    (root / "datasets" / "imports" / "other.json").write_text(json.dumps([{"id": "1", "response": "Fine."}]))
    (root / "datasets" / "bench.jsonl").write_text("")  # a local benchmark source (benchmarks[].source)
    (root / "specs" / "experiments").mkdir(parents=True)
    (root / "specs" / "models").mkdir()
    (root / "specs" / "models" / "named.yaml").write_text("model: models/llama\ndevice: cpu\n")
    write_project(root, copy.deepcopy(BASE), copy.deepcopy(TRAIT_YAML))
    return root


def write_project(root: Path, experiment: dict, trait_yaml: dict, model_file: dict | None = None) -> None:
    (root / "specs" / "experiments" / "x.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))
    src = copy.deepcopy(BASE) | {"name": "src"}
    (root / "specs" / "experiments" / "src.yaml").write_text(yaml.safe_dump(src, sort_keys=False))
    (root / "datasets" / "traits" / "starter" / "optimism" / "trait.yaml").write_text(yaml.safe_dump(trait_yaml))
    if model_file is not None:
        (root / "specs" / "models" / "named.yaml").write_text(yaml.safe_dump(model_file))


def apply_change(path: str, value) -> tuple[dict, dict, dict | None]:
    """(experiment, trait.yaml, model file) with one field changed."""
    experiment, trait_yaml, model_file = copy.deepcopy(BASE), copy.deepcopy(TRAIT_YAML), None
    kind, _, rest = path.partition(".")
    if kind == "variant":
        if rest == "name":  # a model file's name is what experiments refer to it by
            model_file = {"name": value, "model": "models/llama", "device": "cpu"}
        else:
            experiment["variants"]["chat"][rest] = value
        return experiment, trait_yaml, model_file
    if kind == "trait":
        target, parts = trait_yaml, rest.split(".")
    else:
        target, parts = experiment, path.split(".")
    for part in parts[:-1]:
        if part.endswith("[]"):
            key = part[:-2]
            if not target.get(key):
                target[key] = [{"name": "hellaswag"} if key == "benchmarks" else {"steer": "starter/optimism", "coef": 1.0}
                               if key == "conditions" else {"trait": "starter/optimism", "coef": 1.0}]
            target = target[key][0]
        else:
            target = target.setdefault(part, {})
    target[parts[-1]] = value
    return experiment, trait_yaml, model_file


# --------------------------------------------------------------------------- what can be observed
def observations(root: Path):
    """What a change can alter, cheapest first: errors, code versions, what traits and judges read,
    the asset graph, the store, and the batches a stage runs."""
    from traitflow.graph import ASSETS
    from traitflow.specs.loader import load_project

    project = load_project(root, strict=False)
    yield "errors", sorted(e.format() for e in project.errors)
    yield "experiments", sorted(project.experiments)
    yield "model specs", sorted(project.models)
    exp = next((e for name, e in project.experiments.items() if name != "src"), None)
    if exp is None:
        return
    yield "code versions", {asset: exp.code_version(asset) for asset in (r.name for r in ASSETS)}
    yield "variants", {name: spec.model_dump() for name, spec in exp.variants.items()}
    yield "traits", {name: trait_reading(project, exp, name) for name in exp.traits}
    yield "graph", asset_graph(project)
    from traitflow.stages.context import ReadContext

    uri = str(ReadContext.create(project, exp.name).store.uri)
    yield "store", uri.replace(str(root.resolve()), "<root>").replace(str(root), "<root>")
    yield "extraction batches", forward_batches(project, exp.name, "extraction.run_responses", trait="starter/formal", variant="chat")
    yield "calibration batches", forward_batches(project, exp.name, "inference.run_calibration", variant="chat")
    yield "steering batch size", steering_batch_size(project, exp.name)


def trait_reading(project, exp, name: str) -> dict:
    from traitflow.judge.factory import KeywordsBackend, judge_spec_for
    from traitflow.judge.prompts import trait_request

    trait = project.traits[name]
    score = None
    if trait.config.keywords is not None:
        score = KeywordsBackend().score([trait_request(trait, "How is it?", "hope hope fine fine doom")])[0].score
    return {"definition": trait.definition, "direction": trait.direction, "paired": trait.paired,
            "judge": judge_spec_for(exp.spec, trait).model_dump(), "keywords score": score}


def asset_graph(project) -> dict:
    from assets import build_defs

    graph = build_defs(project).resolve_asset_graph()
    out = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        parts = node.partitions_def.get_partition_keys() if node.partitions_def else None
        condition = node.automation_condition.get_label() if node.automation_condition else None
        out[key.to_user_string()] = (parts, sorted(k.to_user_string() for k in node.parent_keys), condition)
    return out


def forward_batches(project, experiment: str, stage: str, **partition) -> list[int]:
    """The batch sizes of the forward passes one stage runs on a real model."""
    import importlib
    import tempfile

    from traitflow.model.loading import MODEL_CACHE
    from traitflow.stages.context import StageContext

    with tempfile.TemporaryDirectory() as out:
        ctx = StageContext.create(project, experiment, storage_uri=out)
        loaded = MODEL_CACHE.get(ctx.experiment.variants["chat"], project.root)
        sizes: list[int] = []
        handle = loaded.model.register_forward_pre_hook(lambda _m, args, kwargs: sizes.append(
            int((kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[0])), with_kwargs=True)
        try:
            module, function = stage.split(".")  # e.g. "extraction.run_responses"
            getattr(importlib.import_module(f"traitflow.stages.{module}"), function)(ctx, **partition)
        finally:
            handle.remove()
    return sorted(set(sizes))


def steering_batch_size(project, experiment: str) -> int | str:
    """The batch size the steering stage takes from the spec (over extraction artifacts made once)."""
    from traitflow.model.loading import MODEL_CACHE
    from traitflow.stages.context import StageContext
    from traitflow.stages.steering import steering_setup

    ctx = StageContext.create(project, experiment, storage_uri=str(EXTRACTED))
    loaded = MODEL_CACHE.get(ctx.experiment.variants["chat"], project.root)
    try:
        return steering_setup(ctx, "starter/formal", "chat", loaded).batch_size
    except Exception as exc:  # noqa: BLE001 - a change that breaks the setup shows as its message
        return str(exc)


EXTRACTED = Path()  # set by base_observations: a store holding starter/formal|chat's vectors


@pytest.fixture(scope="module")
def base_observations(base_root, tmp_path_factory) -> dict:
    from traitflow.specs.loader import load_project
    from traitflow.stages import extraction
    from traitflow.stages.context import StageContext

    global EXTRACTED
    EXTRACTED = tmp_path_factory.mktemp("extracted")
    ctx = StageContext.create(load_project(base_root), "x", storage_uri=str(EXTRACTED))
    for stage in (extraction.run_responses, extraction.run_vetting, extraction.run_activations, extraction.run_vectors,
                  extraction.run_extraction_eval):
        stage(ctx, "starter/formal", "chat")
    return dict(observations(base_root))


@pytest.mark.parametrize("path", sorted(CHANGES))
def test_changing_a_field_changes_something(path, base_root, base_observations, tmp_path):
    root = tmp_path / "proj"
    shutil.copytree(base_root, root, symlinks=True)
    write_project(root, *apply_change(path, CHANGES[path]))
    for what, seen in observations(root):
        if seen != base_observations.get(what):
            return  # the change shows (the cheapest observation that shows it is enough)
    pytest.fail(f"changing {path} to {CHANGES[path]!r} changed nothing observable")


def test_every_field_is_in_the_key_reference():
    """docs/specs.md lists every key with what it changes (one table row each)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "specs.md").read_text()
    missing = [f for f in all_fields() if f"| `{f.split('.', 1)[1] if f.startswith(('variant.', 'trait.')) else f}` |" not in text]
    assert not missing, f"docs/specs.md's key reference lacks {missing}"
