"""Load a project root (specs/ and datasets/) into typed, cross-checked objects.

Every user mistake becomes a SpecError naming file, line and field; `load_project` collects all
of them (raising SpecErrors) so `traitflow validate` can show every problem at once.
"""

import fnmatch
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from traitflow.data.prompts import PromptSet, load_prompt_set
from traitflow.data.traits import TraitDataset, load_trait
from traitflow.errors import SpecError, SpecErrors, TraitflowError
from traitflow.specs.models import ExperimentSpec, ModelSpec
from traitflow.specs.yaml_lines import LocatedYaml, dotted, load_yaml

M = TypeVar("M", bound=BaseModel)

TRAITS_DIR = Path("datasets/traits")
INFERENCE_DIR = Path("datasets/inference")
EXPERIMENTS_DIR = Path("specs/experiments")
MODELS_DIR = Path("specs/models")


@dataclass(frozen=True)
class Experiment:
    """An experiment spec with its references resolved against the project."""

    spec: ExperimentSpec
    path: Path
    variants: dict[str, ModelSpec]  # variant name -> full model spec (name == variant name)
    traits: list[str]  # trait partition keys, sorted
    prompt_sets: list[str]  # prompt-set partition keys used by inference or comparisons

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def extraction_variant(self) -> str:
        return self.spec.extraction.variant or next(iter(self.variants))

    @property
    def inference_variants(self) -> list[str]:
        return list(self.spec.inference.variants) or list(self.variants)

    def code_version(self, asset: str) -> str:
        """Content hash of the spec fields an asset depends on, chained through its upstream assets,
        so a change shows as stale exactly where it matters (e.g. a new vetting threshold re-filters
        and re-extracts, but does not regenerate responses)."""
        fields = ASSET_SPEC_FIELDS[asset]
        payload: dict[str, Any] = {}
        for dotted_path in fields:
            value: Any = self.spec
            for part in dotted_path.split("."):
                value = getattr(value, part)
            payload[dotted_path] = _dump(value)
        if asset in ("responses", "inference_responses", "calibration", "steering"):
            payload["variants"] = {k: v.model_dump(mode="json", exclude={"name"}) for k, v in sorted(self.variants.items())}
        payload["upstream"] = [self.code_version(up) for up in ASSET_UPSTREAM.get(asset, [])]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# Which spec fields each asset reads, and which assets feed it (for chained code versions).
ASSET_SPEC_FIELDS: dict[str, list[str]] = {
    "responses": ["extraction.max_new_tokens"],
    "vetting": ["judge", "extraction.vetting"],
    "activations": ["extraction.position", "extraction.component", "extraction.layers"],
    "vectors": ["extraction.methods", "extraction.val_split", "extraction.seed", "extraction.clean_massive_dims"],
    "extraction_eval": ["extraction.min_val_accuracy"],
    "logit_lens": ["logit_lens"],
    "steering": ["steering.layers", "steering.position", "steering.method", "steering.search", "judge"],
    "cma_es": ["steering.cma_es", "steering.search.min_coherence"],
    "best_vector": ["steering.min_delta", "steering.cma_es.enabled"],
    "inference_responses": ["inference.max_new_tokens"],
    "calibration": ["inference.batch_size"],
    "projections": ["inference.layers", "inference.position", "inference.method", "inference.score", "inference.centre",
                    "inference.clean_massive_dims"],
    "variant_diff": ["comparisons", "inference.position", "inference.method"],
}
ASSET_UPSTREAM: dict[str, list[str]] = {
    "vetting": ["responses"],
    "activations": ["vetting"],
    "vectors": ["activations"],
    "extraction_eval": ["vectors"],
    "logit_lens": ["extraction_eval"],
    "steering": ["extraction_eval"],
    "cma_es": ["steering"],
    "best_vector": ["steering", "cma_es"],
    "projections": ["inference_responses", "extraction_eval", "calibration"],
    "variant_diff": ["inference_responses", "extraction_eval"],
}


@dataclass
class Project:
    root: Path
    models: dict[str, ModelSpec] = field(default_factory=dict)
    experiments: dict[str, Experiment] = field(default_factory=dict)
    traits: dict[str, TraitDataset] = field(default_factory=dict)
    prompt_sets: dict[str, PromptSet] = field(default_factory=dict)


def _dump(value: Any) -> Any:
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


# --------------------------------------------------------------------------- pydantic -> SpecError
def validate_located(model_cls: type[M], located: LocatedYaml) -> M:
    """Validate parsed YAML against a pydantic model; raise SpecErrors naming each bad field's line."""
    if not isinstance(located.data, dict):
        raise SpecError(located.path, f"expected a mapping of keys, got {type(located.data).__name__}", line=1)
    try:
        return model_cls.model_validate(located.data)
    except ValidationError as exc:
        raise SpecErrors(_convert_errors(exc, located)) from None


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _convert_errors(exc: ValidationError, located: LocatedYaml) -> list[SpecError]:
    # Group by location in the user's YAML. Errors from union branches that cannot apply (a `str`
    # branch when a mapping was given) are dropped when a more specific error exists at that place;
    # otherwise they merge into one "expected one of" message.
    groups: dict[tuple, list[tuple[dict, list[str]]]] = {}
    for err in exc.errors():
        loc, skipped = _clean_loc(err["loc"], located.data, err["type"])
        groups.setdefault(loc, []).append((err, skipped))
    out: list[SpecError] = []
    for loc, errs in groups.items():
        specific = [e for e, tags in errs if not any(t.lower() in _TYPE_TAGS for t in tags)]
        nested = any(len(other) > len(loc) and other[: len(loc)] == loc for other in groups)
        if specific:
            chosen = [_message(e) for e in specific]
        elif nested:
            continue  # the nested errors say what is wrong inside this value
        else:
            types = sorted({t for _, tags in errs for t in tags if t.lower() in _TYPE_TAGS})
            chosen = [f"expected {' or '.join(types)}, got {type(_value_at(located.data, loc)).__name__}"]
        for message in dict.fromkeys(chosen):
            out.append(SpecError(located.path, message, line=located.line_of(loc), field=dotted(loc) or None))
    return out or [SpecError(located.path, str(exc).splitlines()[0])]


def _clean_loc(loc: tuple, data: Any, kind: str) -> tuple[tuple, list[str]]:
    """Drop pydantic's union-branch tags from a location, keeping the path into the user's YAML."""
    cleaned, skipped, node = [], [], data
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(node, dict) and part in node:
            cleaned.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            cleaned.append(part)
            node = node[part]
        elif last and kind in ("missing", "extra_forbidden"):
            cleaned.append(part)
        else:
            skipped.append(str(part))
    return tuple(cleaned), skipped


def _value_at(data: Any, loc: tuple) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _message(err: dict) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    got = err.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    text = err["msg"].replace("Input should be", "expected").replace("Value error, ", "")
    return f"{text}, got {shown}" if kind != "value_error" else text


# --------------------------------------------------------------------------- path safety
def safe_relative(root: Path, text: str, file: Path, line: int | None, field_name: str) -> Path:
    """A path relative to the root that must stay inside it (no absolute paths, `..`, symlinks out)."""
    candidate = Path(text)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise SpecError(file, f"path {text!r} must be relative to the project root, without '..'", line=line, field=field_name)
    resolved = (root / candidate).resolve()
    if resolved != root.resolve() and root.resolve() not in resolved.parents:
        raise SpecError(file, f"path {text!r} leads outside the project root (symlink?)", line=line, field=field_name)
    return root / candidate


def _model_reference_error(root: Path, spec: ModelSpec, file: Path, line: int | None, loc: str) -> SpecError | None:
    """Local-looking model/LoRA paths must exist inside the root; anything else is taken as a hub id."""
    for key in ("model", "lora"):
        value = getattr(spec, key)
        if not value:
            continue
        looks_local = value.startswith((".", "/")) or ".." in Path(value).parts or (root / value).exists()
        if not looks_local:
            continue  # a hub id such as Qwen/Qwen2.5-0.5B-Instruct
        try:
            path = safe_relative(root, value, file, line, f"{loc}{key}")
        except SpecError as exc:
            return exc
        if not path.exists():
            return SpecError(file, f"local path {value!r} does not exist", line=line, field=f"{loc}{key}")
    return None


# --------------------------------------------------------------------------- discovery
def discover_traits(root: Path) -> list[str]:
    base = root / TRAITS_DIR
    if not base.is_dir():
        return []
    names = set()
    for marker in base.rglob("positive.*"):
        if marker.suffix in (".jsonl", ".txt"):
            names.add(marker.parent.relative_to(base).as_posix())
    return sorted(names)


def discover_prompt_sets(root: Path) -> list[str]:
    base = root / INFERENCE_DIR
    if not base.is_dir():
        return []
    return sorted(p.relative_to(base).with_suffix("").as_posix() for p in base.rglob("*.json"))


# --------------------------------------------------------------------------- main entry
def load_project(root: Path | str, experiments: list[str] | None = None) -> Project:
    """Load and cross-check everything under `root`; raise SpecErrors listing every problem."""
    root = Path(root)
    if not root.is_dir():
        raise TraitflowError(f"{root}: project root is not a folder")
    if not (root / EXPERIMENTS_DIR).is_dir() and not (root / MODELS_DIR).is_dir():
        raise TraitflowError(f"{root}: no specs/experiments/ or specs/models/ here; is this the project root? (--root DIR)")
    project = Project(root=root)
    errors: list[SpecError] = []

    def collect(fn, *args):
        try:
            return fn(*args)
        except SpecErrors as many:
            errors.extend(many.errors)
        except SpecError as one:
            errors.append(one)
        return None

    for path in sorted((root / MODELS_DIR).glob("*.y*ml")):
        spec = collect(_load_model_file, root, path)
        if spec is not None:
            project.models[spec.name] = spec

    all_traits = discover_traits(root)
    all_prompt_sets = set(discover_prompt_sets(root))
    located_experiments = []
    for path in sorted((root / EXPERIMENTS_DIR).glob("*.y*ml")):
        located = collect(load_yaml, path)
        if located is None:
            continue
        spec = collect(validate_located, ExperimentSpec, located)
        if spec is None:
            continue
        if experiments and spec.name not in experiments:
            continue
        if spec.name in {e.spec.name for e, _ in located_experiments}:
            errors.append(SpecError(path, f"experiment name {spec.name!r} is used twice", line=located.line_of(("name",)), field="name"))
            continue
        exp = collect(_resolve_experiment, project, spec, located, all_traits, all_prompt_sets)
        if exp is not None:
            located_experiments.append((exp, located))

    needed_traits = sorted({t for exp, _ in located_experiments for t in exp.traits})
    for name in needed_traits:
        trait = collect(load_trait, root / TRAITS_DIR / name, name)
        if trait is not None:
            project.traits[name] = trait
    needed_sets = sorted({p for exp, _ in located_experiments for p in exp.prompt_sets})
    for name in needed_sets:
        prompt_set = collect(load_prompt_set, root / INFERENCE_DIR / f"{name}.json", name)
        if prompt_set is not None:
            project.prompt_sets[name] = prompt_set
    for exp, _ in located_experiments:
        project.experiments[exp.name] = exp
    if experiments and not errors:  # (an experiment that failed to load has said why already)
        for name in sorted(set(experiments) - set(project.experiments)):
            errors.append(SpecError(root / EXPERIMENTS_DIR, f"no experiment named {name!r}", field="name"))
    if errors:
        raise SpecErrors(errors)
    return project


def _load_model_file(root: Path, path: Path) -> ModelSpec:
    located = load_yaml(path)
    spec = validate_located(ModelSpec, located)
    if not spec.name:
        spec = spec.model_copy(update={"name": path.stem})
    problem = _model_reference_error(root, spec, path, located.line_of(("model",)), "")
    if problem:
        raise problem
    return spec


def _resolve_experiment(
    project: Project, spec: ExperimentSpec, located: LocatedYaml, all_traits: list[str], all_prompt_sets: set[str]
) -> Experiment:
    path, root, errors = located.path, project.root, []

    def err(loc: tuple, message: str) -> None:
        errors.append(SpecError(path, message, line=located.line_of(loc), field=dotted(loc)))

    variants: dict[str, ModelSpec] = {}
    for key, value in spec.variants.items():
        if isinstance(value, str):
            if value not in project.models:
                known = ", ".join(sorted(project.models)) or "none"
                err(("variants", key), f"no model spec named {value!r} in specs/models/ (known: {known})")
                continue
            variants[key] = project.models[value].model_copy(update={"name": key})
        else:
            inline = value.model_copy(update={"name": key})
            problem = _model_reference_error(root, inline, path, located.line_of(("variants", key)), f"variants.{key}.")
            if problem:
                errors.append(problem)
                continue
            variants[key] = inline

    traits: set[str] = set()
    for index, pattern in enumerate(spec.traits):
        if pattern.startswith("/") or ".." in Path(pattern).parts:
            err(("traits", index), f"trait glob {pattern!r} must stay inside datasets/traits")
            continue
        matched = [t for t in all_traits if fnmatch.fnmatchcase(t, pattern)]
        if not matched:
            err(("traits", index), f"trait glob {pattern!r} matches no folder under datasets/traits")
        traits.update(matched)

    names = set(spec.variants)

    def check_variant(loc: tuple, name: str | None) -> None:
        if name is not None and name not in names:
            err(loc, f"unknown variant {name!r}; expected one of {sorted(names)}")

    check_variant(("extraction", "variant"), spec.extraction.variant)
    for i, v in enumerate(spec.steering.variants):
        check_variant(("steering", "variants", i), v)
    for i, v in enumerate(spec.inference.variants):
        check_variant(("inference", "variants", i), v)
    for i, comparison in enumerate(spec.comparisons):
        check_variant(("comparisons", i, "a"), comparison.a)
        check_variant(("comparisons", i, "b"), comparison.b)
    for i, bench in enumerate(spec.benchmarks):
        for j, v in enumerate(bench.variants):
            check_variant(("benchmarks", i, "variants", j), v)

    for variant, source in spec.inference.replay.items():
        check_variant(("inference", "replay", variant), variant)
        check_variant(("inference", "replay", variant), source)
        if source in spec.inference.replay:
            err(("inference", "replay", variant), f"{source!r} replays another variant itself; replay a generating variant")
    for variant, file in spec.inference.import_responses.items():
        check_variant(("inference", "import", variant), variant)
        try:
            if not safe_relative(root, file, path, located.line_of(("inference", "import", variant)), f"inference.import.{variant}").exists():
                err(("inference", "import", variant), f"file {file!r} does not exist")
        except SpecError as exc:
            errors.append(exc)

    prompt_sets: list[str] = []
    refs = [(("inference", "prompt_sets", i), p) for i, p in enumerate(spec.inference.prompt_sets)]
    refs += [(("comparisons", i, "prompt_set"), c.prompt_set) for i, c in enumerate(spec.comparisons)]
    for loc, name in refs:
        if name.startswith("/") or ".." in Path(name).parts:
            err(loc, f"prompt set {name!r} must stay inside datasets/inference")
        elif name not in all_prompt_sets:
            err(loc, f"no prompt set {name!r} (expected datasets/inference/{name}.json)")
        elif name not in prompt_sets:
            prompt_sets.append(name)

    errors.extend(_check_small_languages(spec, path, located))
    if errors:
        raise SpecErrors(errors)
    return Experiment(spec=spec, path=path, variants=variants, traits=sorted(traits), prompt_sets=sorted(prompt_sets))


def _check_small_languages(spec: ExperimentSpec, path: Path, located: LocatedYaml) -> list[SpecError]:
    from traitflow.extract.layers import check_layers_syntax
    from traitflow.extract.positions import parse_position

    errors = []
    checks: list[tuple[tuple, Any, Any]] = []
    for i, position in enumerate(spec.extraction.positions):
        loc = ("extraction", "position", i) if isinstance(spec.extraction.position, list) else ("extraction", "position")
        checks.append((loc, parse_position, position))
    checks.append((("extraction", "layers"), check_layers_syntax, spec.extraction.layers))
    for section in ("steering", "inference"):
        position = getattr(spec, section).position
        if position is not None:
            if position not in spec.extraction.positions:
                errors.append(SpecError(path, f"{position!r} is not among extraction.position {spec.extraction.positions}",
                                        line=located.line_of((section, "position")), field=f"{section}.position"))
            else:
                checks.append(((section, "position"), parse_position, position))
    checks.append((("steering", "layers"), check_layers_syntax, spec.steering.layers))
    checks.append((("inference", "layers"), check_layers_syntax, spec.inference.layers))
    for loc, check, value in checks:
        try:
            check(value)
        except TraitflowError as exc:
            errors.append(SpecError(path, str(exc), line=located.line_of(loc), field=dotted(loc)))
    return errors
