"""Trait datasets in trait-interp's layout, read unchanged.

A trait is a folder `datasets/traits/<category>/<name>/` holding
`positive.{jsonl,txt}`, `negative.{jsonl,txt}` (jsonl wins when both exist, as in trait-interp),
`definition.txt` (judge rubric), `steering.json` and an optional `trait.yaml` of overrides.
"""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from traitflow.errors import SpecError
from traitflow.specs.models import TraitConfig

SCENARIO_SIDES = ("positive", "negative")
STEERING_PLACEHOLDERS = ("{question}", "{answer}", "{response}", "{trait_name}", "{trait_definition}")


@dataclass(frozen=True)
class Scenario:
    prompt: str
    system_prompt: str | None = None


@dataclass(frozen=True)
class SteeringConfig:
    questions: list[str]
    direction: str = "positive"
    eval_prompt: str | None = None


@dataclass(frozen=True)
class TraitDataset:
    name: str  # "<category>/<trait>", the partition key
    folder: Path
    positive: list[Scenario]
    negative: list[Scenario]
    paired: bool
    definition: str
    steering: SteeringConfig | None
    config: TraitConfig
    files: list[Path] = field(default_factory=list)  # every file whose content matters

    @property
    def direction(self) -> str:
        if self.config.direction:
            return self.config.direction
        return self.steering.direction if self.steering else "positive"

    def content_hash(self) -> str:
        """Hash of the files that define this trait: editing any of them changes it."""
        digest = hashlib.sha256()
        for path in sorted(self.files):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()[:16]


def load_trait(folder: Path, name: str) -> TraitDataset:
    """Read one trait folder; every problem is a SpecError naming the file and line."""
    files: list[Path] = []
    config = TraitConfig()
    config_path = folder / "trait.yaml"
    if config_path.exists():
        from traitflow.specs.loader import validate_located
        from traitflow.specs.yaml_lines import load_yaml

        config = validate_located(TraitConfig, load_yaml(config_path))
        files.append(config_path)

    sides: dict[str, list[Scenario]] = {}
    kinds: dict[str, str] = {}
    for side in SCENARIO_SIDES:
        jsonl, txt = folder / f"{side}.jsonl", folder / f"{side}.txt"
        if jsonl.exists():
            sides[side], kinds[side] = _read_jsonl(jsonl), "jsonl"
            files.append(jsonl)
        elif txt.exists():
            sides[side], kinds[side] = _read_txt(txt), "txt"
            files.append(txt)
        else:
            raise SpecError(folder, f"missing {side}.jsonl or {side}.txt", field=name)
        if not sides[side]:
            raise SpecError(files[-1], "no scenarios (file is empty)", field=name)

    paired = config.paired if config.paired != "auto" else kinds["positive"] == kinds["negative"] == "jsonl"
    n_pos, n_neg = len(sides["positive"]), len(sides["negative"])
    if paired and n_pos != n_neg:
        raise SpecError(
            folder,
            f"positive has {n_pos} scenarios but negative has {n_neg}; paired datasets need equal counts "
            "(set `paired: false` in trait.yaml if they are independent lists)",
            field=name,
        )

    definition_path = folder / "definition.txt"
    definition = ""
    if definition_path.exists():
        definition = definition_path.read_text(encoding="utf-8").strip()
        files.append(definition_path)

    steering = None
    steering_path = folder / "steering.json"
    if steering_path.exists():
        steering = _read_steering(steering_path)
        files.append(steering_path)

    return TraitDataset(
        name=name,
        folder=folder,
        positive=sides["positive"],
        negative=sides["negative"],
        paired=bool(paired),
        definition=definition,
        steering=steering,
        config=config,
        files=files,
    )


def _read_txt(path: Path) -> list[Scenario]:
    return [Scenario(prompt=line.strip()) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_jsonl(path: Path) -> list[Scenario]:
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpecError(path, f"invalid JSON ({exc.msg})", line=number) from None
        if not isinstance(item, dict):
            raise SpecError(path, "expected an object {\"prompt\": ..., \"system_prompt\"?: ...}", line=number)
        prompt = item.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise SpecError(path, "expected a non-empty string", line=number, field="prompt")
        system_prompt = item.get("system_prompt")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise SpecError(path, "expected a string or null", line=number, field="system_prompt")
        out.append(Scenario(prompt=prompt, system_prompt=system_prompt or None))
    return out


def _json_line(text: str, needle: str) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    return None


def _read_steering(path: Path) -> SteeringConfig:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(path, f"invalid JSON ({exc.msg})", line=exc.lineno) from None
    if not isinstance(data, dict):
        raise SpecError(path, "expected an object with `questions`", line=1)
    questions = data.get("questions")
    if not isinstance(questions, list) or not questions or not all(isinstance(q, str) and q for q in questions):
        raise SpecError(path, "expected a non-empty list of strings", line=_json_line(text, '"questions"'), field="questions")
    direction = data.get("direction", "positive")
    if direction not in ("positive", "negative"):
        raise SpecError(
            path, f"expected positive or negative, got {direction!r}", line=_json_line(text, '"direction"'), field="direction"
        )
    eval_prompt = data.get("eval_prompt")
    if eval_prompt is not None:
        if not isinstance(eval_prompt, str):
            raise SpecError(path, "expected a string", line=_json_line(text, '"eval_prompt"'), field="eval_prompt")
        if "{question}" not in eval_prompt or not ("{answer}" in eval_prompt or "{response}" in eval_prompt):
            raise SpecError(
                path,
                "must contain {question} and {answer} (or {response})",
                line=_json_line(text, '"eval_prompt"'),
                field="eval_prompt",
            )
    unknown = set(data) - {"questions", "direction", "eval_prompt"}
    if unknown:
        key = sorted(unknown)[0]
        raise SpecError(path, "unknown key; expected questions, direction, eval_prompt", line=_json_line(text, f'"{key}"'), field=key)
    return SteeringConfig(questions=questions, direction=direction, eval_prompt=eval_prompt)



def trait_versions(traits_dir: Path, names: list[str]) -> dict[str, str]:
    """Content hash per trait: the data version of each `trait_datasets` partition."""
    return {name: load_trait(traits_dir / name, name).content_hash() for name in names}
