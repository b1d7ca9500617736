"""Load a project root (specs/ and datasets/) into typed, cross-checked objects.

Every user mistake becomes a SpecError naming file, line and field; `load_project` collects all
of them (raising SpecErrors) so `traitflow validate` can show every problem at once.
"""

import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from traitflow.data.prompts import PromptSet, load_prompt_set
from traitflow.data.traits import TraitDataset, load_trait
from traitflow.errors import SpecError, SpecErrors, SpecWarning, TraitflowError
from traitflow.specs.models import ExperimentSpec, ExtractionSpec, ModelSpec, TraitConfig
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
    trait_configs: dict[str, TraitConfig] = field(default_factory=dict)  # each trait's trait.yaml overrides
    # stage ("steering" | "inference") -> the experiment whose vectors it uses (`<stage>.vectors_from`)
    vector_sources: dict[str, "Experiment"] = field(default_factory=dict)
    _code_versions: dict[str, str] = field(default_factory=dict, init=False, compare=False, repr=False)  # a cache

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def extraction_variant(self) -> str:
        return self.spec.extraction.variant or next(iter(self.variants))

    @property
    def inference_variants(self) -> list[str]:
        return list(self.spec.inference.variants) or list(self.variants)

    @property
    def generating_variants(self) -> list[str]:
        """Inference variants with responses of their own (generated or imported): the others replay one."""
        return [v for v in self.inference_variants if v not in self.spec.inference.replay]

    @property
    def replaying_variants(self) -> list[str]:
        return [v for v in self.inference_variants if v in self.spec.inference.replay]

    @property
    def extracts(self) -> bool:
        """Whether any stage uses this experiment's own vectors (else extraction is left out)."""
        return not ({"steering", "inference"} <= set(self.vector_sources))

    def extraction_for(self, trait: str) -> ExtractionSpec:
        """The extraction settings of one trait: the experiment's, with its trait.yaml overrides."""
        config = self.trait_configs.get(trait)
        if config is None:
            return self.spec.extraction
        update = {key: getattr(config, key) for key in ("position", "methods", "layers") if getattr(config, key) is not None}
        return self.spec.extraction.model_copy(update=update) if update else self.spec.extraction

    def steering_layers_for(self, trait: str) -> str | int:
        """The layers a trait is steered at: its trait.yaml `layers`, else `steering.layers`."""
        config = self.trait_configs.get(trait)
        return config.layers if config is not None and config.layers is not None else self.spec.steering.layers

    def vector_source(self, stage: str) -> "Experiment":
        """The experiment whose vectors a stage (steering, inference) uses: `vectors_from`, else this one."""
        return self.vector_sources.get(stage, self)

    def _benchmark_files(self) -> dict[str, str | None]:
        """Content hash of each local benchmark source (None: not readable; validation says why)."""
        from traitflow.model.fingerprint import content_hash

        root = self.path.parents[len(EXPERIMENTS_DIR.parts)]
        out: dict[str, str | None] = {}
        for bench in self.spec.benchmarks:
            if bench.source != "hf":
                try:
                    out[bench.source] = content_hash(root / bench.source)
                except OSError:
                    out[bench.source] = None
        return out

    def code_version(self, asset: str) -> str:
        """Content hash of the spec fields an asset reads (its row in `traitflow.graph`), chained
        through its upstream assets, so a change shows as stale exactly where it matters (e.g. a
        new vetting threshold re-filters and re-extracts, but does not regenerate responses).
        Per-trait overrides in trait.yaml count as the fields they override; vectors from another
        experiment chain through its versions. Model variants are not here: each is a source
        asset versioned per variant (assets/sources.py), so one variant's change marks only its
        own partitions stale."""
        if asset in self._code_versions:  # each asset's version chains through all its upstream ones
            return self._code_versions[asset]
        from traitflow.graph import EXTRACTION_ASSETS, row

        spec_row = row(asset)
        payload: dict[str, Any] = {}
        for dotted_path in spec_row.reads:
            value: Any = self.spec
            for part in dotted_path.split("."):
                value = getattr(value, part)
            payload[dotted_path] = _dump(value)
            keys = TRAIT_OVERRIDES.get(dotted_path, ())
            overrides = {trait: _dump(getattr(config, key)) for trait, config in sorted(self.trait_configs.items())
                         for key in keys if getattr(config, key) is not None} if keys else {}
            if overrides:
                payload[f"{dotted_path}@traits"] = overrides
            if dotted_path == "benchmarks":  # a local source's items count as the spec does: editing them re-scores
                payload["benchmarks@files"] = self._benchmark_files()
        source = self.vector_sources.get(spec_row.vector_stage) if spec_row.vector_stage else None
        payload["upstream"] = [
            (source.code_version(up) if source is not None and up in EXTRACTION_ASSETS else self.code_version(up))
            for up in spec_row.upstream
        ]
        if source is not None:
            payload["vectors_from"] = source.name
        version = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
        self._code_versions[asset] = version
        return version


# trait.yaml keys that override experiment fields for that trait: spec field -> the trait.yaml keys.
TRAIT_OVERRIDES: dict[str, tuple[str, ...]] = {
    "extraction.position": ("position",),
    "extraction.methods": ("methods",),
    "extraction.layers": ("layers",),
    "steering.layers": ("layers",),
    "judge.model": ("judge",),
}


@dataclass
class Project:
    """Everything under a project root that loaded. With `strict=False` an experiment with errors
    is left out (its errors are in `errors` and `left_out`) and the others still load."""

    root: Path
    models: dict[str, ModelSpec] = field(default_factory=dict)
    experiments: dict[str, Experiment] = field(default_factory=dict)
    traits: dict[str, TraitDataset] = field(default_factory=dict)
    prompt_sets: dict[str, PromptSet] = field(default_factory=dict)
    errors: list[SpecError] = field(default_factory=list)  # every error, each once, as `traitflow validate` lists them
    warnings: list[SpecWarning] = field(default_factory=list)
    left_out: dict[str, list[SpecError]] = field(default_factory=dict)  # experiment (or its file) -> why

    def require(self, experiment: str) -> Experiment:
        """The named experiment, or the errors that left it out (SpecErrors), or 'no experiment named'."""
        if experiment in self.experiments:
            return self.experiments[experiment]
        if experiment in self.left_out:
            raise SpecErrors(self.left_out[experiment])
        known = sorted(p.stem for p in (self.root / EXPERIMENTS_DIR).glob("*.y*ml"))
        raise TraitflowError(f"{self.root / EXPERIMENTS_DIR}: no experiment named {experiment!r} "
                             f"(files there: {', '.join(known) or 'none'})")


def _dump(value: Any) -> Any:
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
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
    if candidate.is_absolute() or ".." in candidate.parts or text.startswith("~"):
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
        looks_local = value.startswith((".", "/", "~")) or ".." in Path(value).parts or (root / value).exists()
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
GLOB_CHARS = set("*?[")
# Dagster refuses these in partition keys ("|" also joins multi-partition keys); a trait folder or
# prompt-set name becomes a partition key, so they are validation errors naming the folder.
PARTITION_KEY_CHARS = set("|,[]")


def partition_key_problem(name: str) -> str | None:
    """Why `name` cannot be a Dagster partition key (and so a trait or prompt-set name), or None."""
    bad = sorted(PARTITION_KEY_CHARS & set(name))
    if bad:
        return f"name {name!r} contains {' '.join(bad)}, which a Dagster partition key cannot; rename the folder"
    if "..." in name or any(ord(c) < 32 or c == "\x7f" for c in name):
        return f"name {name!r} contains '...' or a control character, which a Dagster partition key cannot"
    if name != name.strip() or any(part != part.strip() or not part for part in name.split("/")):
        return f"name {name!r} has a part that is empty or starts or ends with a space"
    return None


def discover_traits(root: Path) -> tuple[list[str], dict[str, SpecError]]:
    """Trait folders under datasets/traits (those holding positive.jsonl or positive.txt), and the
    folders that are symlinks leading outside the project root: errors naming the link."""
    base = root / TRAITS_DIR
    names: set[str] = set()
    broken: dict[str, SpecError] = {}
    if not base.is_dir():
        return [], broken
    top = root.resolve()

    def walk(folder: Path, ancestors: frozenset[Path]) -> None:
        real = folder.resolve()
        if real in ancestors:
            return  # a symlink back up the tree: a loop
        if any((folder / f"positive.{ext}").is_file() for ext in ("jsonl", "txt")):
            name = folder.relative_to(base).as_posix()
            names.add(name)
            problem = partition_key_problem(name)
            if problem:
                broken[name] = SpecError(folder, problem, field=name)
        for child in sorted(folder.iterdir()):
            if not child.is_dir():
                continue
            if child.is_symlink() and top not in child.resolve().parents:
                name = child.relative_to(base).as_posix()
                broken[name] = SpecError(child, f"symlink leads outside the project root (to {child.resolve()})", field=name)
                continue
            walk(child, ancestors | {real})

    walk(base, frozenset())
    return sorted(names | set(broken)), broken


def discover_prompt_sets(root: Path) -> list[str]:
    base = root / INFERENCE_DIR
    if not base.is_dir():
        return []
    return sorted(p.relative_to(base).with_suffix("").as_posix() for p in base.rglob("*.json"))


# --------------------------------------------------------------------------- main entry
def load_project(root: Path | str, experiments: list[str] | None = None, strict: bool = True) -> Project:
    """Load and cross-check everything under `root`.

    strict (the default): raise SpecErrors listing every problem. Otherwise return what loads:
    an experiment with errors is left out, a trait matched by a glob that fails validation is left
    out of that experiment (a warning), and `Project.errors` still lists every problem once.
    `experiments` restricts loading to those (plus the experiments their `vectors_from` name).
    """
    root = Path(root)
    if not root.is_dir():
        raise TraitflowError(f"{root}: project root is not a folder")
    if not (root / EXPERIMENTS_DIR).is_dir() and not (root / MODELS_DIR).is_dir():
        raise TraitflowError(f"{root}: no specs/experiments/ or specs/models/ here; is this the project root? (--root DIR)")
    project = Project(root=root)
    errors: list[SpecError] = []  # every problem, once

    def collect(sink: list[SpecError], fn, *args):
        try:
            return fn(*args)
        except SpecErrors as many:
            sink.extend(many.errors)
        except SpecError as one:
            sink.append(one)
        return None

    broken_models: set[str] = set()
    for path in sorted((root / MODELS_DIR).glob("*.y*ml")):
        model_errors: list[SpecError] = []
        spec = collect(model_errors, _load_model_file, root, path)
        if spec is not None:
            project.models[spec.name] = spec
        else:
            broken_models.add(path.stem)
            errors.extend(model_errors)

    all_traits, broken_folders = discover_traits(root)
    all_prompt_sets = set(discover_prompt_sets(root))

    # Parse every experiment file; keep those asked for and the experiments they take vectors from.
    parsed: list[tuple[ExperimentSpec, LocatedYaml]] = []
    for path in sorted((root / EXPERIMENTS_DIR).glob("*.y*ml")):
        file_errors: list[SpecError] = []
        located = collect(file_errors, load_yaml, path, root)
        spec = collect(file_errors, validate_located, ExperimentSpec, located) if located is not None else None
        if spec is None:
            if not experiments or path.stem in experiments:
                errors.extend(file_errors)
                project.left_out[path.stem] = file_errors
            continue
        if spec.name in {p.name for p, _ in parsed}:
            duplicate = SpecError(path, f"experiment name {spec.name!r} is used twice", line=located.line_of(("name",)), field="name")
            errors.append(duplicate)
            project.left_out[path.stem] = [duplicate]
            continue
        parsed.append((spec, located))
    wanted = set(experiments or [p.name for p, _ in parsed])
    for spec, _ in parsed:
        if spec.name in wanted:
            wanted |= {s for s in (spec.steering.vectors_from, spec.inference.vectors_from) if s}
    parsed = [(spec, located) for spec, located in parsed if spec.name in wanted]

    resolved: list[tuple[Experiment, LocatedYaml, dict[str, bool]]] = []
    for spec, located in parsed:
        exp_errors: list[SpecError] = []
        found = collect(exp_errors, _resolve_experiment, project, spec, located, all_traits, all_prompt_sets, broken_models)
        if found is None:
            errors.extend(exp_errors)
            project.left_out[spec.name] = exp_errors
            continue
        resolved.append((found[0], located, found[1]))

    # Traits and prompt sets: load each once; their errors are listed once, whoever uses them.
    trait_errors: dict[str, list[SpecError]] = {name: [error] for name, error in broken_folders.items()}
    for name in sorted({t for exp, _, _ in resolved for t in exp.traits} - set(broken_folders)):
        found_errors: list[SpecError] = []
        trait = collect(found_errors, load_trait, root / TRAITS_DIR / name, name, root)
        if trait is not None:
            project.traits[name] = trait
            project.warnings.extend(trait.warnings)
        else:
            trait_errors[name] = found_errors
    used = {t for exp, _, _ in resolved for t in exp.traits}
    errors.extend(e for name, errs in sorted(trait_errors.items()) if name in used for e in errs)
    set_errors: dict[str, list[SpecError]] = {}
    for name in sorted({p for exp, _, _ in resolved for p in exp.prompt_sets}):
        found_errors = []
        prompt_set = collect(found_errors, load_prompt_set, root / INFERENCE_DIR / f"{name}.json", name, root)
        if prompt_set is not None:
            project.prompt_sets[name] = prompt_set
            project.warnings.extend(prompt_set.warnings)
        else:
            set_errors[name] = found_errors
            errors.extend(found_errors)

    # Per experiment: leave out broken glob-matched traits; fail on broken explicit ones.
    kept: dict[str, Experiment] = {}
    for exp, located, explicit in resolved:
        exp_errors, traits, configs = [], [], {}
        for trait in exp.traits:
            problems = list(trait_errors.get(trait, []))
            if trait in project.traits:
                problems += _check_trait_for_experiment(project.traits[trait], exp.spec, exp.path)
                if problems and trait not in trait_errors:
                    errors.extend(problems)  # specific to this experiment: listed here, once
            if not problems:
                traits.append(trait)
                configs[trait] = project.traits[trait].config
            elif explicit.get(trait):
                exp_errors += problems
            else:
                first = problems[0]
                project.warnings.append(SpecWarning(
                    first.file, f"trait {trait} left out of experiment {exp.name}: {first.message}", line=first.line,
                    field=first.field))
        for name in exp.prompt_sets:
            exp_errors += set_errors.get(name, [])
        if not traits and not exp_errors:
            exp_errors.append(SpecError(exp.path, "every trait it matches has errors; nothing left to run", field="traits",
                                        line=located.line_of(("traits",))))
            errors.append(exp_errors[-1])
        if exp_errors:
            project.left_out[exp.name] = exp_errors
            continue
        kept[exp.name] = Experiment(spec=exp.spec, path=exp.path, variants=exp.variants, traits=traits,
                                    prompt_sets=exp.prompt_sets, trait_configs=configs)

    # vectors_from: the source must have loaded and hold every trait the stage uses.
    for name in list(kept):
        exp = kept[name]
        located = next(loc for e, loc, _ in resolved if e.name == name)
        sources, exp_errors = {}, []
        for stage in ("steering", "inference"):
            source = getattr(exp.spec, stage).vectors_from
            if source is None:
                continue
            loc = (stage, "vectors_from")
            if source == name:
                exp_errors.append(SpecError(exp.path, "names this experiment itself; leave it out to use its own vectors",
                                            line=located.line_of(loc), field=dotted(loc)))
            elif source not in kept:
                why = "has errors" if source in project.left_out else "does not exist"
                exp_errors.append(SpecError(exp.path, f"experiment {source!r} {why}", line=located.line_of(loc), field=dotted(loc)))
            elif kept[source].vector_sources:
                exp_errors.append(SpecError(exp.path, f"experiment {source!r} takes its own vectors from another experiment; "
                                            "name that one", line=located.line_of(loc), field=dotted(loc)))
            else:
                missing = sorted(set(exp.traits) - set(kept[source].traits))
                if missing:
                    exp_errors.append(SpecError(exp.path, f"experiment {source!r} has no trait {', '.join(missing)}",
                                                line=located.line_of(loc), field=dotted(loc)))
                position = getattr(exp.spec, stage).position
                theirs = kept[source].spec.extraction.positions
                if position is not None and position not in theirs:
                    exp_errors.append(SpecError(exp.path, f"{position!r} is not among extraction.position {theirs} of "
                                                f"experiment {source!r}", line=located.line_of((stage, "position")),
                                                field=f"{stage}.position"))
                problem = _cma_es_monitoring_problem(exp.spec, kept[source].spec) if stage == "inference" else None
                if problem:
                    exp_errors.append(SpecError(exp.path, problem[1], line=located.line_of(problem[0]), field=dotted(problem[0])))
                sources[stage] = kept[source]
        if exp_errors:
            errors.extend(exp_errors)
            project.left_out[name] = exp_errors
            del kept[name]
        elif sources:
            kept[name] = replace(exp, vector_sources=sources)

    if experiments:
        kept = {name: exp for name, exp in kept.items() if name in wanted}
    project.experiments = kept
    project.errors = errors
    if experiments and not errors:
        for name in sorted(set(experiments) - set(project.experiments)):
            errors.append(SpecError(root / EXPERIMENTS_DIR, f"no experiment named {name!r}", field="name"))
    if strict and errors:
        raise SpecErrors(errors)
    return project


def _check_trait_for_experiment(trait: TraitDataset, spec: ExperimentSpec, exp_path: Path) -> list[SpecError]:
    """What makes a valid trait unusable in one experiment: too few scenarios for its val_split, or
    trait.yaml overrides that contradict the experiment's steering/inference settings."""
    from traitflow.data.traits import min_scenarios
    from traitflow.extract.layers import check_layers_syntax
    from traitflow.extract.positions import parse_position

    problems: list[SpecError] = []
    need = min_scenarios(spec.extraction.val_split)
    for side, scenarios, file in (("positive", trait.positive, trait.files), ("negative", trait.negative, trait.files)):
        if len(scenarios) < need:
            path = next((f for f in file if f.stem == side), trait.folder)
            problems.append(SpecError(path, f"{len(scenarios)} scenario(s); at extraction.val_split {spec.extraction.val_split} "
                                            f"({exp_path.name}) a side needs at least {need}: one to train on and one held out",
                                      field=trait.name))
    config = trait.config
    config_path = trait.folder / "trait.yaml"
    located = load_yaml(config_path, trait.folder) if config_path.exists() and any(
        getattr(config, k) is not None for k in ("position", "methods", "layers", "judge")) else None

    def err(key: str, message: str) -> None:
        problems.append(SpecError(config_path, message, line=located.line_of((key,)) if located else None, field=key))

    if config.position is not None:
        positions = [config.position] if isinstance(config.position, str) else list(config.position)
        if not positions:
            err("position", "expected at least one position")
        for position in positions:
            try:
                parse_position(position)
            except TraitflowError as exc:
                err("position", str(exc))
                continue
            problem = empty_window_problem(position, spec.extraction.max_new_tokens)
            if problem:
                err("position", problem)
        for section in ("steering", "inference"):
            wanted = getattr(spec, section).position
            if wanted is not None and positions and wanted not in positions and getattr(spec, section).vectors_from is None:
                err("position", f"{section}.position {wanted!r} of {exp_path.name} is not among this trait's positions {positions}")
    if config.methods is not None:
        if not config.methods:
            err("methods", "expected at least one method")
        for section in ("steering", "inference"):
            wanted = getattr(spec, section).method
            if wanted not in (None, "cma_es") and config.methods and wanted not in config.methods \
                    and getattr(spec, section).vectors_from is None:
                err("methods", f"{section}.method {wanted!r} of {exp_path.name} is not among this trait's methods {config.methods}")
    if config.layers is not None:
        try:
            check_layers_syntax(config.layers)
        except TraitflowError as exc:
            err("layers", str(exc))
    if config.judge is not None and config.judge not in spec.judges:
        err("judge", f"no judge named {config.judge!r} in {exp_path.name}'s `judges` "
                     f"(allowed: {', '.join(sorted(spec.judges)) or 'none'})")
    return problems


def _load_model_file(root: Path, path: Path) -> ModelSpec:
    located = load_yaml(path, root)
    spec = validate_located(ModelSpec, located)
    if not spec.name:
        spec = spec.model_copy(update={"name": path.stem})
    problem = _model_reference_error(root, spec, path, located.line_of(("model",)), "")
    if problem:
        raise problem
    return spec


def _resolve_experiment(
    project: Project, spec: ExperimentSpec, located: LocatedYaml, all_traits: list[str], all_prompt_sets: set[str],
    broken_models: set[str],
) -> tuple[Experiment, dict[str, bool]]:
    """The experiment with its references resolved, and per matched trait whether it was named
    explicitly (a pattern without glob characters) rather than matched by a glob."""
    path, root, errors = located.path, project.root, []

    def err(loc: tuple, message: str) -> None:
        errors.append(SpecError(path, message, line=located.line_of(loc), field=dotted(loc)))

    variants: dict[str, ModelSpec] = {}
    for key, value in spec.variants.items():
        if isinstance(value, str):
            if value in broken_models:
                err(("variants", key), f"model spec {value!r} has errors (specs/models/{value}.yaml)")
                continue
            if value not in project.models:
                known = ", ".join(sorted(project.models)) or "none"
                err(("variants", key), f"no model spec named {value!r} in specs/models/ (known: {known})")
                continue
            variants[key] = project.models[value].model_copy(update={"name": key})
        else:
            if value.name and value.name != key:
                err(("variants", key, "name"), f"an inline variant's name is its key ({key!r}); remove `name`")
                continue
            inline = value.model_copy(update={"name": key})
            problem = _model_reference_error(root, inline, path, located.line_of(("variants", key)), f"variants.{key}.")
            if problem:
                errors.append(problem)
                continue
            variants[key] = inline

    traits: set[str] = set()
    explicit: dict[str, bool] = {}
    for index, pattern in enumerate(spec.traits):
        if pattern.startswith("/") or ".." in Path(pattern).parts:
            err(("traits", index), f"trait glob {pattern!r} must stay inside datasets/traits")
            continue
        matched = [t for t in all_traits if fnmatch.fnmatchcase(t, pattern)]
        if not matched:
            err(("traits", index), f"trait glob {pattern!r} matches no folder under datasets/traits")
        traits.update(matched)
        for trait in matched:
            explicit[trait] = explicit.get(trait, False) or not (GLOB_CHARS & set(pattern))

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
    seen_benchmarks: set[str] = set()
    for i, bench in enumerate(spec.benchmarks):
        for j, v in enumerate(bench.variants):
            check_variant(("benchmarks", i, "variants", j), v)
        if bench.name in seen_benchmarks:  # the name is the partition key
            err(("benchmarks", i, "name"), f"benchmark {bench.name!r} is listed twice; one entry per benchmark")
        seen_benchmarks.add(bench.name)
        from traitflow.capability.conditions import condition_name

        names = [condition_name(c) for c in bench.conditions]
        for j, name in enumerate(names):
            if name in names[:j]:  # results are keyed by the name
                err(("benchmarks", i, "conditions", j), f"condition {j + 1} repeats {name!r}")
        if bench.source != "hf":
            try:
                if not safe_relative(root, bench.source, path, located.line_of(("benchmarks", i, "source")),
                                     f"benchmarks[{i}].source").is_file():
                    err(("benchmarks", i, "source"), f"file {bench.source!r} does not exist (or hf for Hugging Face datasets)")
            except SpecError as exc:
                errors.append(exc)

    for variant, source in spec.inference.replay.items():
        check_variant(("inference", "replay", variant), variant)
        check_variant(("inference", "replay", variant), source)
        if variant in spec.inference.import_responses:
            err(("inference", "replay", variant), f"{variant!r} is also in inference.import; a variant either replays or imports")
        elif spec.inference.variants and variant in names and variant not in spec.inference.variants:
            err(("inference", "replay", variant), f"{variant!r} is not among inference.variants {spec.inference.variants}, "
                                                  "so nothing would run its replay")
        if source in spec.inference.replay:
            err(("inference", "replay", variant), f"{source!r} replays another variant itself; replay a generating variant")
        elif spec.inference.variants and source in variants and source not in spec.inference.variants:
            err(("inference", "replay", variant), f"{source!r} is not among inference.variants, so it has no responses to replay")
    for variant, file in spec.inference.import_responses.items():
        check_variant(("inference", "import", variant), variant)
        try:
            if not safe_relative(root, file, path, located.line_of(("inference", "import", variant)), f"inference.import.{variant}").exists():
                err(("inference", "import", variant), f"file {file!r} does not exist")
        except SpecError as exc:
            errors.append(exc)
    if spec.inference.vectors_from is None:  # else the source's refinement, checked once vectors_from resolves
        problem = _cma_es_monitoring_problem(spec, spec)
        if problem:
            err(*problem)

    prompt_sets: list[str] = []
    refs = [(("inference", "prompt_sets", i), p) for i, p in enumerate(spec.inference.prompt_sets)]
    refs += [(("comparisons", i, "prompt_set"), c.prompt_set) for i, c in enumerate(spec.comparisons)]
    for loc, name in refs:
        if name.startswith("/") or ".." in Path(name).parts:
            err(loc, f"prompt set {name!r} must stay inside datasets/inference")
        elif partition_key_problem(name):
            err(loc, partition_key_problem(name))
        elif name not in all_prompt_sets:
            err(loc, f"no prompt set {name!r} (expected datasets/inference/{name}.json)")
        elif name not in prompt_sets:
            prompt_sets.append(name)

    if "://" not in spec.storage.uri:
        try:  # a folder outside the project goes through --storage / TRAITFLOW_STORAGE, not a spec
            safe_relative(root, spec.storage.uri, path, located.line_of(("storage", "uri")), "storage.uri")
        except SpecError as exc:
            errors.append(exc)
    errors.extend(_check_small_languages(spec, path, located))
    errors.extend(_check_benchmark_traits(spec, traits, path, located))
    errors.extend(_check_storage(spec, path, located))
    if errors:
        raise SpecErrors(errors)
    return Experiment(spec=spec, path=path, variants=variants, traits=sorted(traits), prompt_sets=sorted(prompt_sets)), explicit


def _cma_es_monitoring_problem(spec: ExperimentSpec, source: ExperimentSpec) -> tuple[tuple, str] | None:
    """`inference.method: cma_es` monitors with the CMA-ES refinement that `source` (this experiment,
    or the one its inference.vectors_from names) makes at its steering position: (location, message)
    when that refinement is off or made at another position than inference's."""
    if spec.inference.method != "cma_es":
        return None
    theirs = "" if source is spec else f" of experiment {source.name!r}"
    if not source.steering.cma_es.enabled:
        return ("inference", "method"), f"inference.method cma_es needs steering.cma_es.enabled{theirs}"
    steering = source.steering.position or source.extraction.positions[0]
    if (spec.inference.position or source.extraction.positions[0]) != steering:
        return ("inference", "position"), (f"inference.method cma_es monitors with the CMA-ES refinement, made at the "
                                           f"steering position {steering!r}{theirs}; set inference.position to {steering!r}")
    return None


def _check_benchmark_traits(spec: ExperimentSpec, traits: set[str], path: Path, located: LocatedYaml) -> list[SpecError]:
    """A benchmark condition steers or ablates one of this experiment's traits."""
    errors = []
    for i, bench in enumerate(spec.benchmarks):
        for j, condition in enumerate(bench.conditions):
            trait = getattr(condition, "steer", None) or getattr(condition, "ablate", None)
            if trait is not None and trait not in traits:
                loc = ("benchmarks", i, "conditions", j)
                errors.append(SpecError(path, f"condition {j + 1} names trait {trait!r}, which this experiment does not have "
                                              f"({', '.join(sorted(traits)) or 'none'})",
                                        line=located.line_of(loc), field=dotted(loc)))
    return errors


def _check_storage(spec: ExperimentSpec, path: Path, located: LocatedYaml) -> list[SpecError]:
    """`storage.uri` is a local folder or s3://bucket/prefix; the S3 keys go with an s3:// URI."""
    storage, errors = spec.storage, []

    def error(key: str, message: str) -> None:
        errors.append(SpecError(path, message, line=located.line_of(("storage", key)), field=f"storage.{key}"))

    is_s3 = storage.uri.startswith("s3://")
    if is_s3:
        from traitflow.store.s3 import parse_s3_uri

        try:
            parse_s3_uri(storage.uri)
        except TraitflowError as exc:
            error("uri", str(exc))
    elif "://" in storage.uri:
        error("uri", f"{storage.uri!r}: expected a local folder (relative to the project root) or s3://bucket/prefix")
    for key, default in (("endpoint_url", None), ("region", None), ("checksums", "when_supported")):
        if not is_s3 and getattr(storage, key) != default:
            error(key, f"applies to s3:// storage only (storage.uri is {storage.uri!r}); remove the key")
    if storage.endpoint_url is not None and not re.match(r"^https?://[^/\s]+", storage.endpoint_url):
        error("endpoint_url", f"{storage.endpoint_url!r} is not an http(s):// URL")
    return errors


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
        if position is not None and getattr(spec, section).vectors_from is not None:
            checks.append(((section, "position"), parse_position, position))  # checked against the source's positions later
        elif position is not None:
            if position not in spec.extraction.positions:
                errors.append(SpecError(path, f"{position!r} is not among extraction.position {spec.extraction.positions}",
                                        line=located.line_of((section, "position")), field=f"{section}.position"))
            else:
                checks.append(((section, "position"), parse_position, position))
    checks.append((("steering", "layers"), check_layers_syntax, spec.steering.layers))
    checks.append((("inference", "layers"), check_layers_syntax, spec.inference.layers))
    checks.append((("inference", "save_layers"), _check_save_layers, spec.inference.save_layers))
    for loc, check, value in checks:
        try:
            check(value)
        except TraitflowError as exc:
            errors.append(SpecError(path, str(exc), line=located.line_of(loc), field=dotted(loc)))
    for i, position in enumerate(spec.extraction.positions):
        problem = empty_window_problem(position, spec.extraction.max_new_tokens)
        if problem:
            loc = ("extraction", "position", i) if isinstance(spec.extraction.position, list) else ("extraction", "position")
            errors.append(SpecError(path, problem, line=located.line_of(loc), field=dotted(loc)))
    # `local:<variant>` judges must name a variant of this experiment.
    judges = [(("judge", "model"), spec.judge)] + [(("judges", name, "model"), j) for name, j in spec.judges.items()]
    for loc, judge in judges:
        if judge.model.startswith("local:") and judge.model[len("local:"):] not in spec.variants:
            errors.append(SpecError(path, f"{judge.model!r} names no variant of this experiment "
                                          f"(variants: {', '.join(spec.variants)})", line=located.line_of(loc), field=dotted(loc)))
    return errors


def _check_save_layers(value: str | int) -> None:
    """`inference.save_layers`: the layer DSL without `best` (activations are saved before any trait's best layer is known)."""
    from traitflow.extract.layers import check_layers_syntax

    check_layers_syntax(value)
    if any(token.strip().lower().startswith("best") for token in str(value).split(",")):
        raise TraitflowError(f"{value!r}: `best` is a trait's layer, unknown when activations are saved; "
                             "use all, N, A-B, A-B:S or P%-Q% (projections read the saved layers that cover each trait)")


def empty_window_problem(position: str, max_new_tokens: int) -> str | None:
    """Why a position can never hold a token (at this generation budget), or None."""
    from traitflow.extract.positions import parse_position

    try:
        parsed = parse_position(position)
    except TraitflowError:
        return None  # the syntax error is reported by itself
    if parsed.can_hold_a_token(max_new_tokens):
        return None
    return f"position {position!r} selects no token for any prompt and any reply of up to {max_new_tokens} tokens"
