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
