"""Prompt sets for inference, in trait-interp's `inference/<set>.json` formats.

Two forms are read unchanged: an object `{"name", "description", "system_prompt"?, "prompts":
[{"id", "text", "note"?, "system_prompt"?}]}` and a bare list `[{"id", "prompt"}]`. Keys we do
not know are warnings naming file and line (upstream's format evolves), never errors.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from traitflow.data.files import parse_json, read_bytes, read_text
from traitflow.data.traits import json_line
from traitflow.errors import SpecError, SpecWarning


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    system_prompt: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class PromptSet:
    name: str  # "<folder>/<set>" relative to datasets/inference, without .json: the partition key
    path: Path
    description: str
    prompts: list[Prompt]
    warnings: list[SpecWarning] = field(default_factory=list)

    def content_hash(self) -> str:
        return hashlib.sha256(read_bytes(self.path)).hexdigest()[:16]


SET_KEYS = ("name", "description", "system_prompt", "prompts")
ITEM_KEYS = ("id", "text", "prompt", "note", "system_prompt")


def load_prompt_set(path: Path, name: str, root: Path | None = None) -> PromptSet:
    """One prompt set; the file must resolve inside `root` (default: its own folder)."""
    text = read_text(path, root if root is not None else path.parent)
    data = parse_json(text, path)
    warnings: list[SpecWarning] = []
    description, set_system = "", None
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict):
        for key in sorted(set(data) - set(SET_KEYS), key=str):
            warnings.append(SpecWarning(path, f"unknown key, ignored (expected {', '.join(SET_KEYS)})",
                                        line=json_line(text, f'"{key}"'), field=key))
        items = data.get("prompts")
        description = _optional_str(data, "description", path, text) or ""
        set_system = _optional_str(data, "system_prompt", path, text)
        _optional_str(data, "name", path, text)
    else:
        raise SpecError(path, 'expected {"prompts": [{"id", "text"}]} or a list [{"id", "prompt"}]', line=1)
    if not isinstance(items, list) or not items:
        raise SpecError(path, 'expected a non-empty list of {"id", "text"} objects', line=json_line(text, '"prompts"') or 1,
                        field="prompts")
    prompts, seen, cursor = [], set(), 1
    for index, item in enumerate(items):
        where = f"prompts[{index}]"
        if not isinstance(item, dict):
            raise SpecError(path, 'expected an object {"id", "text"} (or {"id", "prompt"})', line=cursor, field=where)
        if "id" in item:
            cursor = json_line(text, '"id"', cursor) or cursor
        prompt_id = item.get("id", index + 1)
        if not isinstance(prompt_id, (int, str)) or isinstance(prompt_id, bool):
            raise SpecError(path, f"expected a number or a string, got {prompt_id!r}", line=cursor, field=f"{where}.id")
        body = item.get("text", item.get("prompt"))
        if not isinstance(body, str) or not body.strip():
            raise SpecError(path, "expected a non-empty string in `text` (or `prompt`)", line=cursor, field=f"{where}.text")
        if str(prompt_id) in seen:
            raise SpecError(path, f"duplicate prompt id {prompt_id!r}", line=cursor, field=f"{where}.id")
        seen.add(str(prompt_id))
        system, note = item.get("system_prompt"), item.get("note")
        for key, value in (("system_prompt", system), ("note", note)):
            if value is not None and not isinstance(value, str):
                raise SpecError(path, "expected a string", line=cursor, field=f"{where}.{key}")
        for key in sorted(set(item) - set(ITEM_KEYS), key=str):
            warnings.append(SpecWarning(path, f"unknown key, ignored (expected {', '.join(ITEM_KEYS)})",
                                        line=json_line(text, f'"{key}"', cursor), field=f"{where}.{key}"))
        prompts.append(Prompt(id=str(prompt_id), text=body, system_prompt=system or set_system, note=note))
        cursor += 1
    return PromptSet(name=name, path=path, description=description, prompts=prompts, warnings=warnings)


def _optional_str(data: dict, key: str, path: Path, text: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise SpecError(path, "expected a string", line=json_line(text, f'"{key}"'), field=key)
    return value


def prompt_set_versions(inference_dir: Path, names: list[str]) -> dict[str, str]:
    """Content hash per prompt set: the data version of each `prompt_sets` partition."""
    root = inference_dir.parent.parent  # <root>/datasets/inference
    return {name: load_prompt_set(inference_dir / f"{name}.json", name, root).content_hash() for name in names}
