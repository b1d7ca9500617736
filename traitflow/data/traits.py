"""Trait datasets in trait-interp's layout, read unchanged.

A trait is a folder `datasets/traits/<category>/<name>/` holding
`positive.{jsonl,txt}`, `negative.{jsonl,txt}` (jsonl wins when both exist, as in trait-interp),
`definition.txt` (judge rubric), `steering.json` and an optional `trait.yaml` of overrides.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from traitflow.data.files import parse_json, read_bytes, read_text
from traitflow.errors import SpecError, SpecWarning
from traitflow.specs.models import TraitConfig

SCENARIO_SIDES = ("positive", "negative")
STEERING_PLACEHOLDERS = ("{question}", "{answer}", "{response}", "{trait_name}", "{trait_definition}")


@dataclass(frozen=True)
class Scenario:
    prompt: str
    system_prompt: str | None = None


@dataclass(frozen=True)
class SteeringQuestion:
    """One steering question; upstream may describe what a high and a low answer look like."""

    question: str
    high_trait: str | None = None
    low_trait: str | None = None


@dataclass(frozen=True)
class SteeringConfig:
    """`steering.json`: questions to steer on, the direction to push, an optional judge prompt.

    `adversarial_prefix` is upstream's instruction towards the opposite pole, already embedded at
    the start of each question; `bare_questions` are the questions without it.
    """

    items: list[SteeringQuestion]
    direction: str = "positive"
    eval_prompt: str | None = None
    adversarial_prefix: str | None = None

    @property
    def questions(self) -> list[str]:
        return [item.question for item in self.items]

    @property
    def bare_questions(self) -> list[str]:
        prefix = (self.adversarial_prefix or "").strip()
        if not prefix:
            return self.questions
        return [q.strip()[len(prefix):].lstrip() if q.strip().startswith(prefix) else q for q in self.questions]


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
    warnings: list[SpecWarning] = field(default_factory=list)  # e.g. keys we do not know in upstream's files

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
            digest.update(read_bytes(path))
        return digest.hexdigest()[:16]


def load_trait(folder: Path, name: str, root: Path | None = None) -> TraitDataset:
    """Read one trait folder; every problem is a SpecError naming the file and line.

    Keys we do not know in upstream's own files (steering.json, jsonl rows) are warnings, never
    errors: that format evolves upstream. `trait.yaml` is ours and stays strict. Every file must
    resolve inside `root` (the project root; default: the trait folder itself) and be a regular
    file of bounded size.
    """
    root = root if root is not None else folder
    files: list[Path] = []
    warnings: list[SpecWarning] = []
    config = TraitConfig()
    config_path = folder / "trait.yaml"
    if config_path.exists():
        from traitflow.specs.loader import validate_located
        from traitflow.specs.yaml_lines import load_yaml

        config = validate_located(TraitConfig, load_yaml(config_path, root))
        files.append(config_path)

    sides: dict[str, list[Scenario]] = {}
    kinds: dict[str, str] = {}
    for side in SCENARIO_SIDES:
        jsonl, txt = folder / f"{side}.jsonl", folder / f"{side}.txt"
        if jsonl.exists():
            sides[side], kinds[side] = _read_jsonl(jsonl, warnings, root), "jsonl"
            files.append(jsonl)
        elif txt.exists():
            sides[side], kinds[side] = _read_txt(txt, root), "txt"
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
    if not paired and n_pos != n_neg and "txt" in kinds.values():
        # Upstream's guide matches .txt sides by line number; ours treats them as independent lists.
        warnings.append(SpecWarning(folder, f"positive has {n_pos} scenarios and negative {n_neg}; read as unpaired lists "
                                            "(upstream matches .txt sides by line number)", field=name))

    definition_path = folder / "definition.txt"
    definition = config.description or ""  # trait.yaml's description is the rubric when there is no definition.txt
    if definition_path.exists():
        definition = read_text(definition_path, root).strip()
        files.append(definition_path)

    steering = None
    steering_path = folder / "steering.json"
    if steering_path.exists():
        steering = _read_steering(steering_path, warnings, root)
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
        warnings=warnings,
    )


def min_scenarios(val_split: float) -> int:
    """Fewest scenarios a side needs for one training and one held-out example at `val_split`
    (the held-out share is rounded as the split rounds it)."""
    if val_split <= 0:
        return 1
    n = 2
    while round(n * val_split) < 1 or n - round(n * val_split) < 1:
        n += 1
    return n


def _read_txt(path: Path, root: Path) -> list[Scenario]:
    return [Scenario(prompt=line.strip()) for line in read_text(path, root).splitlines() if line.strip()]


JSONL_KEYS = ("prompt", "system_prompt")


def _read_jsonl(path: Path, warnings: list[SpecWarning], root: Path) -> list[Scenario]:
    out = []
    for number, line in enumerate(read_text(path, root).splitlines(), start=1):
        if not line.strip():
            continue
        item = parse_json(line, path, line=number)
        if not isinstance(item, dict):
            raise SpecError(path, "expected an object {\"prompt\": ..., \"system_prompt\"?: ...}", line=number)
        prompt = item.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise SpecError(path, "expected a non-empty string", line=number, field="prompt")
        system_prompt = item.get("system_prompt")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise SpecError(path, "expected a string or null", line=number, field="system_prompt")
        for key in sorted(set(item) - set(JSONL_KEYS), key=str):
            warnings.append(SpecWarning(path, f"unknown key, ignored (expected {', '.join(JSONL_KEYS)})", line=number, field=key))
        out.append(Scenario(prompt=prompt, system_prompt=system_prompt or None))
    return out


def json_line(text: str, needle: str, after: int = 1) -> int | None:
    """1-based number of the first line at or after `after` that contains `needle` (JSON has no positions)."""
    for number, line in enumerate(text.splitlines(), start=1):
        if number >= after and needle in line:
            return number
    return None


STEERING_KEYS = ("questions", "direction", "eval_prompt", "adversarial_prefix")
QUESTION_KEYS = ("question", "high_trait", "low_trait")


def _read_steering(path: Path, warnings: list[SpecWarning], root: Path) -> SteeringConfig:
    text = read_text(path, root)
    data = parse_json(text, path)
    if not isinstance(data, dict):
        raise SpecError(path, "expected an object with `questions`", line=1)

    def line_of(key: str, after: int = 1) -> int | None:
        return json_line(text, f'"{key}"', after)

    questions = data.get("questions")
    questions_line = line_of("questions")
    if not isinstance(questions, list) or not questions:
        raise SpecError(path, "expected a non-empty list of strings or {question, high_trait, low_trait} objects",
                        line=questions_line, field="questions")
    items: list[SteeringQuestion] = []
    cursor = questions_line or 1
    for index, question in enumerate(questions):
        if isinstance(question, str) and question.strip():
            items.append(SteeringQuestion(question))
            continue
        if not isinstance(question, dict):
            raise SpecError(path, "expected a non-empty string or an object {question, high_trait, low_trait}",
                            line=questions_line, field=f"questions[{index}]")
        cursor = line_of("question", cursor) or cursor
        text_of = question.get("question")
        if not isinstance(text_of, str) or not text_of.strip():
            raise SpecError(path, "expected a non-empty string", line=cursor, field=f"questions[{index}].question")
        notes = {}
        for key in ("high_trait", "low_trait"):
            value = question.get(key)
            if value is not None and not isinstance(value, str):
                raise SpecError(path, "expected a string", line=line_of(key, cursor), field=f"questions[{index}].{key}")
            notes[key] = value
        for key in sorted(set(question) - set(QUESTION_KEYS), key=str):
            warnings.append(SpecWarning(path, f"unknown key, ignored (expected {', '.join(QUESTION_KEYS)})",
                                        line=line_of(key, cursor), field=f"questions[{index}].{key}"))
        items.append(SteeringQuestion(text_of, **notes))
        cursor += 1

    direction = data.get("direction", "positive")
    if direction not in ("positive", "negative"):
        raise SpecError(path, f"expected positive or negative, got {direction!r}", line=line_of("direction"), field="direction")
    eval_prompt = data.get("eval_prompt")
    if eval_prompt is not None:
        if not isinstance(eval_prompt, str):
            raise SpecError(path, "expected a string", line=line_of("eval_prompt"), field="eval_prompt")
        if "{question}" not in eval_prompt or not ("{answer}" in eval_prompt or "{response}" in eval_prompt):
            raise SpecError(path, "must contain {question} and {answer} (or {response})", line=line_of("eval_prompt"),
                            field="eval_prompt")
    prefix = data.get("adversarial_prefix")
    if prefix is not None and not isinstance(prefix, str):
        raise SpecError(path, "expected a string", line=line_of("adversarial_prefix"), field="adversarial_prefix")
    for key in sorted(set(data) - set(STEERING_KEYS), key=str):
        warnings.append(SpecWarning(path, f"unknown key, ignored (expected {', '.join(STEERING_KEYS)})", line=line_of(key),
                                    field=key))
    return SteeringConfig(items=items, direction=direction, eval_prompt=eval_prompt, adversarial_prefix=prefix or None)


def trait_versions(traits_dir: Path, names: list[str]) -> dict[str, str]:
    """Content hash per trait: the data version of each `trait_datasets` partition."""
    root = traits_dir.parent.parent  # <root>/datasets/traits
    return {name: load_trait(traits_dir / name, name, root).content_hash() for name in names}
