"""JSON Schemas of the spec kinds, for editors (yaml-language-server `$schema` comments)."""

import json
from pathlib import Path

from traitflow.specs.models import ExperimentSpec, ModelSpec, PromptSetFile, TraitConfig
from traitflow.store.atomic import atomic_write_text

SCHEMAS = {
    "experiment": ExperimentSpec,
    "model": ModelSpec,
    "trait": TraitConfig,
    "prompt_set": PromptSetFile,
}


def write_schemas(out: Path) -> list[Path]:
    written = []
    for name, model in SCHEMAS.items():
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = f"traitflow {name} spec"
        path = out / f"{name}.schema.json"
        atomic_write_text(path, json.dumps(schema, indent=2) + "\n")
        written.append(path)
    return written
