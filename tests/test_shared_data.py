"""Opt-in: the real upstream files beside the repo (trait-interp's trait folders and prompt sets).

Runs when TRAITFLOW_SHARED points at the shared folder (`.ci/run` sets it); skips otherwise, since
a fresh clone has nothing beside it. The files are read in place or copied to a temporary project,
never into the repo.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

SHARED = os.environ.get("TRAITFLOW_SHARED")
pytestmark = pytest.mark.skipif(not SHARED, reason="TRAITFLOW_SHARED is not set (the real upstream data is opt-in)")
COMPAT = Path(SHARED or ".") / "compat" / "trait-interp"


@pytest.fixture(scope="module")
def upstream_root(tmp_path_factory) -> Path:
    if not COMPAT.is_dir():
        pytest.fail(f"TRAITFLOW_SHARED={SHARED} has no compat/trait-interp")
    root = tmp_path_factory.mktemp("upstream")
    shutil.copytree(COMPAT / "traits", root / "datasets" / "traits")
    shutil.copytree(COMPAT / "inference", root / "datasets" / "inference")
    sets = sorted(p.relative_to(COMPAT / "inference").with_suffix("").as_posix() for p in (COMPAT / "inference").rglob("*.json"))
    (root / "specs" / "experiments").mkdir(parents=True)
    (root / "specs" / "experiments" / "upstream.yaml").write_text(
        f"name: upstream\nvariants: {{chat: {{model: some-org/some-model}}}}\ntraits: ['*']\n"
        f"inference: {{prompt_sets: {json.dumps(sets)}}}\n")
    return root


def trait_folders() -> list[Path]:
    return sorted({p.parent for p in COMPAT.glob("traits/**/positive.*")}) if COMPAT.is_dir() else []


def test_every_upstream_folder_validates(upstream_root):
    from traitflow.specs.loader import load_project

    project = load_project(upstream_root)  # strict: any error fails
    expected = sorted(p.relative_to(COMPAT / "traits").as_posix() for p in trait_folders())
    assert project.experiments["upstream"].traits == expected
    assert len(expected) >= 11
    # Only notes, never errors: unequal .txt sides and keys we do not know.
    assert all("unpaired" in w.message or "unknown key" in w.message for w in project.warnings), project.warnings


@pytest.mark.parametrize("folder", trait_folders(), ids=lambda p: p.relative_to(COMPAT / "traits").as_posix())
def test_trait_reads_unchanged(folder):
    from traitflow.data.traits import load_trait

    trait = load_trait(folder, folder.name)
    side = "jsonl" if (folder / "positive.jsonl").exists() else "txt"
    for name, scenarios in (("positive", trait.positive), ("negative", trait.negative)):
        lines = [line for line in (folder / f"{name}.{side}").read_text().splitlines() if line.strip()]
        assert len(scenarios) == len(lines)
        first = json.loads(lines[0])["prompt"] if side == "jsonl" else lines[0].strip()
        assert scenarios[0].prompt == first
    steering = json.loads((folder / "steering.json").read_text())
    assert trait.steering.questions == [q if isinstance(q, str) else q["question"] for q in steering["questions"]]
    assert trait.direction == steering.get("direction", "positive")
    assert trait.steering.eval_prompt == steering.get("eval_prompt")
    prefix = steering.get("adversarial_prefix")
    assert trait.steering.adversarial_prefix == prefix
    if prefix:
        assert all(not q.startswith(prefix) for q in trait.steering.bare_questions)


def test_prompt_sets_read_unchanged():
    from traitflow.data.prompts import load_prompt_set

    files = sorted((COMPAT / "inference").rglob("*.json"))
    assert len(files) >= 3
    for path in files:
        data = json.loads(path.read_text())
        items = data if isinstance(data, list) else data["prompts"]
        prompt_set = load_prompt_set(path, path.stem)
        assert [p.text for p in prompt_set.prompts] == [i.get("text", i.get("prompt")) for i in items]
        assert [p.id for p in prompt_set.prompts] == [str(i["id"]) for i in items]
        if isinstance(data, dict) and data.get("system_prompt"):
            assert {p.system_prompt for p in prompt_set.prompts} == {data["system_prompt"]}


def test_upstream_folders_compile_to_partitions(upstream_root):
    from assets import build_defs
    from traitflow.specs.loader import load_project

    project = load_project(upstream_root)
    defs = build_defs(project)
    import dagster as dg

    partitions = defs.resolve_assets_def(dg.AssetKey(["upstream", "responses"])).partitions_def
    assert partitions.get_partitions_def_for_dimension("trait").get_partition_keys() == project.experiments["upstream"].traits
