"""The docs stay true: their YAML examples load, and the CLI commands they show exist."""

import re
import shlex
import shutil
from pathlib import Path

import pytest

from traitflow.cli import _parser
from traitflow.specs.loader import load_project

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]


def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(), flags=re.S)


def test_experiment_example_in_specs_doc_validates(tmp_path):
    root = tmp_path / "proj"
    shutil.copytree(REPO / "specs", root / "specs")
    shutil.copytree(REPO / "datasets", root / "datasets", ignore=shutil.ignore_patterns("*.safetensors"))
    for name in ("toy-chat", "toy-pessimist-lora"):  # weights are not read by validation; the folders must exist
        (root / "datasets" / "models" / name).mkdir(parents=True, exist_ok=True)
    experiments = [b for b in yaml_blocks(REPO / "docs" / "specs.md") if b.startswith("name:")]
    assert experiments
    for index, block in enumerate(experiments):
        (root / "specs" / "experiments" / f"doc{index}.yaml").write_text(block.replace("name: demo", f"name: doc{index}"))
    project = load_project(root)
    assert {f"doc{i}" for i in range(len(experiments))} <= set(project.experiments)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_traitflow_commands_in_docs_parse(doc):
    parser = _parser()
    shell = "\n".join(re.findall(r"```(?:bash|sh)\n(.*?)```", doc.read_text(), flags=re.S))
    for line in re.findall(r"^\s*(?:\.venv/bin/)?traitflow (.+)$", shell, flags=re.M):
        args = shlex.split(line.split("#")[0])
        args = [a for a in args if not a.startswith("[")]  # optional flags shown in brackets
        args = [a.strip("'") for a in args if not a.endswith("]")]
        parser.parse_args(args)  # exits (SystemExit) on an unknown command or flag


def test_artifacts_doc_lists_every_asset_with_the_keys_it_writes(toy_demo):
    """docs/artifacts.md has a row per asset of the asset table naming its file, and every top-level
    key of each JSON artifact the toy demo really wrote appears in that row."""
    import json

    from traitflow.graph import ASSETS

    text = (REPO / "docs" / "artifacts.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in text.splitlines() if line.startswith("| `")}
    store = toy_demo["root"] / "experiments" / "demo"
    for asset in ASSETS:
        assert asset.name in rows, f"docs/artifacts.md has no row for {asset.name}"
        assert f"`{asset.artifact}`" in rows[asset.name], asset.name
        if not asset.artifact.endswith(".json"):
            continue
        written = sorted((store / asset.name).rglob(asset.artifact))
        if asset.name == "replayed_responses":
            continue  # the demo replays nothing; tests/test_inference_modes.py checks this row's keys
        assert written, f"the toy demo wrote no {asset.name}/{asset.artifact}"
        keys = set(json.loads(written[0].read_text()))
        missing = [k for k in sorted(keys) if k not in rows[asset.name]]
        assert not missing, f"docs/artifacts.md's {asset.name} row lacks {missing}"


def test_quickstart_report_sample_matches_a_real_report(toy_demo):
    """Every key the quickstart's `report --json` sample shows is in a real report of the demo."""
    sample = (REPO / "docs" / "quickstart.md").read_text().split("`traitflow report demo --json` prints", 1)[1]
    sample = sample.split("```json", 1)[1].split("```", 1)[0]
    shown = set(re.findall(r'"([a-z_]+)":', sample))
    report = toy_demo["report"]

    def keys(value) -> set[str]:
        if isinstance(value, dict):
            return set(value) | {k for v in value.values() for k in keys(v)}
        if isinstance(value, list):
            return {k for v in value for k in keys(v)}
        return set()

    assert shown and shown <= keys(report), sorted(shown - keys(report))
    assert set(report) >= {"experiment", "storage", "traits", "inference"}


def test_artifacts_doc_names_each_artifact_class_and_its_schema_fields():
    """Each asset's docs/artifacts.md row names its class in traitflow/artifacts.py, and every
    top-level field of that class's record schema (its TypedDict) appears in the row."""
    from traitflow.artifacts import ARTIFACTS, JsonArtifact
    from traitflow.graph import ASSETS

    text = (REPO / "docs" / "artifacts.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in text.splitlines() if line.startswith("| `")}
    assert set(ARTIFACTS) == {a.name for a in ASSETS}, "every asset of the table has one artifact class"
    for name, cls in ARTIFACTS.items():
        assert f"`{cls.__name__}`" in rows[name], f"docs/artifacts.md's {name} row does not name {cls.__name__}"
        if issubclass(cls, JsonArtifact):
            fields = cls.schema.__required_keys__ | cls.schema.__optional_keys__
            missing = sorted(f for f in fields if not re.search(rf"\b{f}\b", rows[name]))
            assert not missing, f"docs/artifacts.md's {name} row lacks {missing} (fields of {cls.schema.__name__})"
