"""One broken folder never takes the code location down; per-trait overrides; keys not built yet."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.traitinterp import write_prompt_set, write_starter_traits
from traitflow.cli import main
from traitflow.errors import SpecErrors
from traitflow.graph import ASSETS
from traitflow.specs.loader import load_project

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
name: good
variants: {chat: {model: some-org/some-model}}
traits: ["starter/*"]
"""
EXPLICIT = """\
name: explicit
variants: {chat: {model: some-org/some-model}}
traits: [starter/optimism, starter/formal]
"""


def make_root(tmp_path: Path, experiments: dict[str, str]) -> Path:
    root = tmp_path / "proj"
    write_starter_traits(root / "datasets" / "traits" / "starter", ["optimism", "formal", "helpful"])
    write_prompt_set(root / "datasets" / "inference" / "starter" / "general.json")
    (root / "specs" / "experiments").mkdir(parents=True)
    for name, text in experiments.items():
        (root / "specs" / "experiments" / f"{name}.yaml").write_text(text)
    return root


def break_formal(root: Path) -> Path:
    path = root / "datasets" / "traits" / "starter" / "formal" / "negative.jsonl"
    lines = path.read_text().splitlines()
    lines[3] = '{"prompt": "unterminated'
    path.write_text("\n".join(lines) + "\n")
    return path


def test_glob_matched_broken_trait_is_left_out_explicit_one_fails(tmp_path):
    root = make_root(tmp_path, {"good": GOOD, "explicit": EXPLICIT})
    broken = break_formal(root)
    project = load_project(root, strict=False)
    assert list(project.experiments) == ["good"]
    assert project.experiments["good"].traits == ["starter/helpful", "starter/optimism"]
    assert [e.format() for e in project.left_out["explicit"]] == [f"{broken}:4: invalid JSON (Unterminated string starting at)"]
    # The broken file is listed once although two experiments use it.
    assert [e.format() for e in project.errors] == [f"{broken}:4: invalid JSON (Unterminated string starting at)"]
    left = [w.format() for w in project.warnings if "left out of experiment good" in w.message]
    assert left == [f"{broken}:4: trait starter/formal left out of experiment good: invalid JSON (Unterminated string starting at)"]
    with pytest.raises(SpecErrors):
        load_project(root)  # strict: every problem stops


def test_validate_lists_everything_and_exits_2(tmp_path, capsys):
    root = make_root(tmp_path, {"good": GOOD, "explicit": EXPLICIT, "bad": "name: bad\nvariants: {}\ntraits: []\n"})
    broken = break_formal(root)
    assert main(["validate", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"error: {broken}:4:" in err and "bad.yaml:2: variants:" in err
    assert err.count(f"error: {broken}:4:") == 1


def test_cli_run_on_a_left_out_experiment_names_its_errors(tmp_path, capsys):
    root = make_root(tmp_path, {"good": GOOD, "explicit": EXPLICIT})
    broken = break_formal(root)
    assert main(["report", "explicit", "--root", str(root)]) == 2
    assert f"error: {broken}:4: invalid JSON" in capsys.readouterr().err
    assert main(["report", "nope", "--root", str(root)]) == 2
    assert "no experiment named 'nope'" in capsys.readouterr().err


def test_definitions_load_with_a_broken_experiment(tmp_path):
    """`import definitions` (what `dagster dev` loads) survives one broken experiment and logs why."""
    root = make_root(tmp_path, {"good": GOOD, "explicit": EXPLICIT})
    broken = break_formal(root)
    code = ("import definitions as d; import dagster as dg\n"
            "keys = sorted({k.path[0] for k in d.defs.resolve_asset_graph().get_all_asset_keys()})\n"
            "print('EXPERIMENTS', keys)\n"
            "print('TRAITS', d.defs.resolve_assets_def(dg.AssetKey(['good', 'responses'])).partitions_def"
            ".get_partitions_def_for_dimension('trait').get_partition_keys())\n")
    env = {**os.environ, "TRAITFLOW_ROOT": str(root)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "EXPERIMENTS ['good']" in result.stdout
    assert "TRAITS ['starter/helpful', 'starter/optimism']" in result.stdout
    assert result.stderr.count(f"error: {broken}:4: invalid JSON") == 1
    assert "experiment explicit left out" in result.stderr


# --------------------------------------------------------------------------- per-trait overrides
def test_trait_yaml_overrides_win_for_that_trait(tmp_path):
    root = make_root(tmp_path, {"good": GOOD.replace("traits:", "steering: {layers: '1-2'}\ntraits:")})
    project = load_project(root)
    exp = project.experiments["good"]
    before = {asset: exp.code_version(asset) for asset in (r.name for r in ASSETS)}
    (root / "datasets" / "traits" / "starter" / "formal" / "trait.yaml").write_text(
        'position: ["prompt[-1]"]\nmethods: [mean_diff]\nlayers: "2-3"\n')
    exp = load_project(root).experiments["good"]
    formal, optimism = exp.extraction_for("starter/formal"), exp.extraction_for("starter/optimism")
    assert (formal.positions, formal.methods, formal.layers) == (["prompt[-1]"], ["mean_diff"], "2-3")
    assert (optimism.positions, optimism.methods, optimism.layers) == (["response[:5]"], ["probe", "mean_diff"], "all")
    assert exp.steering_layers_for("starter/formal") == "2-3" and exp.steering_layers_for("starter/optimism") == "1-2"
    after = {asset: exp.code_version(asset) for asset in (r.name for r in ASSETS)}
    changed = {asset for asset in before if before[asset] != after[asset]}
    assert {"activations", "vectors", "steering"} <= changed
    assert "responses" not in changed and "inference_responses" not in changed and "calibration" not in changed


@pytest.mark.parametrize("text, line, field, needle", [
    ("methods: [magic]\n", 1, "methods[0]", "magic"),
    ("position: 'middle[:2]'\n", 1, "position", "middle"),
    ("\nlayers: '3-x'\n", 2, "layers", "3-x"),
    ("position: ['response[:3]']\n", 1, "position", "steering.position 'prompt[-1]'"),
    ("methods: [probe]\n", 1, "methods", "inference.method 'mean_diff'"),
])
def test_trait_yaml_override_mistakes(tmp_path, text, line, field, needle):
    spec = EXPLICIT.replace("traits:", "extraction: {position: ['prompt[-1]', 'response[:3]']}\n"
                                       "steering: {position: 'prompt[-1]'}\ninference: {method: mean_diff}\ntraits:")
    root = make_root(tmp_path, {"explicit": spec})
    (root / "datasets" / "traits" / "starter" / "formal" / "trait.yaml").write_text(text)
    with pytest.raises(SpecErrors) as info:
        load_project(root)
    errors = info.value.errors
    assert any(e.file.endswith("formal/trait.yaml") and e.line == line and e.field == field and needle in e.message
               for e in errors), [e.format() for e in errors]


# --------------------------------------------------------------------------- benchmarks
@pytest.mark.parametrize("extra, line, field, needle", [
    ("benchmarks: [{name: made-up}]\n", 4, "benchmarks[0].name", "expected 'hellaswag'"),
    ("benchmarks: [{name: mmlu, conditions: [{ablate: starter/nope}]}]\n", 4, "benchmarks[0].conditions[0]",
     "names trait 'starter/nope'"),
])
def test_bad_benchmarks_fail_validate(tmp_path, extra, line, field, needle):
    root = make_root(tmp_path, {"good": GOOD + extra})
    with pytest.raises(SpecErrors) as info:
        load_project(root)
    assert [(e.line, e.field) for e in info.value.errors] == [(line, field)]
    assert needle in info.value.errors[0].message


@pytest.mark.parametrize("extra, line, field, needle", [
    ("storage: {uri: 'ftp://host/x'}\n", 4, "storage.uri", "expected a local folder (relative to the project root) or s3://"),
    ("storage: {uri: 's3://Bad_Bucket/x'}\n", 4, "storage.uri", "'Bad_Bucket' is not a bucket name"),
    ("storage:\n  endpoint_url: http://127.0.0.1:9\n", 5, "storage.endpoint_url", "applies to s3:// storage only"),
    ("storage:\n  region: auto\n", 5, "storage.region", "applies to s3:// storage only"),
    ("storage:\n  checksums: when_required\n", 5, "storage.checksums", "applies to s3:// storage only"),
    ("storage:\n  uri: s3://bucket/x\n  endpoint_url: r2.example.com\n", 6, "storage.endpoint_url", "is not an http(s):// URL"),
])
def test_bad_storage_fails_validate(tmp_path, extra, line, field, needle):
    root = make_root(tmp_path, {"good": GOOD + extra})
    with pytest.raises(SpecErrors) as info:
        load_project(root)
    assert [(e.line, e.field) for e in info.value.errors] == [(line, field)]
    assert needle in info.value.errors[0].message


def test_r2_storage_validates(tmp_path):
    extra = ("storage:\n  uri: s3://traitflow-results/runs\n  endpoint_url: https://abc123.r2.cloudflarestorage.com\n"
             "  region: auto\n  checksums: when_required\n")
    storage = load_project(make_root(tmp_path, {"good": GOOD + extra})).experiments["good"].spec.storage
    assert (storage.uri, storage.region, storage.checksums) == ("s3://traitflow-results/runs", "auto", "when_required")


def test_inline_variant_name_must_be_its_key(tmp_path):
    root = make_root(tmp_path, {"good": GOOD.replace("{model: some-org/some-model}", "{model: some-org/m, name: other}")})
    with pytest.raises(SpecErrors) as info:
        load_project(root)
    assert [(e.line, e.field) for e in info.value.errors] == [(2, "variants.chat.name")]
