"""What crosses the wire between the model server and its clients, in one place."""

import hashlib
import json
from pathlib import Path
from typing import Any

from traitflow.stages.context import StageOutput

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
    return output.to_json()


def output_from_json(data: dict[str, Any]) -> StageOutput:
    return StageOutput.from_json(data)
