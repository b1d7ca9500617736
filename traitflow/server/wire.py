"""What crosses the wire between the model server and its clients, in one place."""

import hashlib
import json
from pathlib import Path
from typing import Any

from traitflow.stages.context import Check, Markdown, StageOutput

DISCOVERY_FILE = Path(".traitflow") / "server.json"  # under the project root
NO_SERVER_ENV = "TRAITFLOW_NO_SERVER"
DEFAULT_PORT = 8765


def _parsed(exp: Any) -> dict[str, Any]:
    return {"spec": exp.spec.model_dump(mode="json"), "traits": list(exp.traits), "prompt_sets": list(exp.prompt_sets),
            "variants": {name: spec.model_dump(mode="json") for name, spec in exp.variants.items()},
            "trait_configs": {name: config.model_dump(mode="json") for name, config in exp.trait_configs.items()},
            "vector_sources": {stage: _parsed(other) for stage, other in exp.vector_sources.items() if other is not exp}}


def spec_digest(exp: Any) -> str:
    """The experiment as one side parsed it (its YAML, each trait's trait.yaml, the experiments it
    takes vectors from, its variants). A stage runs on the server only when both sides read the
    same: specs edited since `dagster dev` loaded its definitions would otherwise run with
    different settings on each side."""
    return hashlib.sha256(json.dumps(_parsed(exp), sort_keys=True, default=str).encode()).hexdigest()[:16]


def output_to_json(output: StageOutput) -> dict[str, Any]:
    return {"path": str(output.path), "numbers": output.numbers, "files": {k: str(v) for k, v in output.files.items()},
            "chart": output.chart.text if output.chart is not None else None,
            "checks": {name: {"passed": c.passed, "detail": c.detail} for name, c in output.checks.items()}}


def output_from_json(data: dict[str, Any]) -> StageOutput:
    return StageOutput(path=Path(data["path"]), numbers=dict(data["numbers"]),
                       files={k: Path(v) for k, v in data["files"].items()},
                       chart=Markdown(data["chart"]) if data["chart"] is not None else None,
                       checks={name: Check(bool(c["passed"]), str(c["detail"])) for name, c in data["checks"].items()})
