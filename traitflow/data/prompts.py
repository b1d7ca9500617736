"""Prompt sets for inference, in trait-interp's `inference/<set>.json` format."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from traitflow.errors import SpecError
from traitflow.specs.models import PromptSetFile


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    system_prompt: str | None = None


@dataclass(frozen=True)
class PromptSet:
    name: str  # "<folder>/<set>" relative to datasets/inference, without .json: the partition key
    path: Path
    description: str
    prompts: list[Prompt]

    def content_hash(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]


def load_prompt_set(path: Path, name: str) -> PromptSet:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(path, f"invalid JSON ({exc.msg})", line=exc.lineno) from None
    try:
        parsed = PromptSetFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        raise SpecError(path, f"{err['msg']} (expected {{\"prompts\": [{{\"id\", \"text\"}}]}})", field=field) from None
    ids = [str(p.id) for p in parsed.prompts]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise SpecError(path, f"duplicate prompt id {dup!r}", field="prompts.id")
    prompts = [
        Prompt(id=str(p.id), text=p.text, system_prompt=p.system_prompt or parsed.system_prompt) for p in parsed.prompts
    ]
    return PromptSet(name=name, path=path, description=parsed.description or "", prompts=prompts)


def prompt_set_versions(inference_dir: Path, names: list[str]) -> dict[str, str]:
    """Content hash per prompt set: the data version of each `prompt_sets` partition."""
    return {name: load_prompt_set(inference_dir / f"{name}.json", name).content_hash() for name in names}
