"""Spec loading: the YAML contract, one-line errors naming file/line/field, trait-interp data unchanged."""

import json
from pathlib import Path

import pytest

from tests.traitinterp import (
    HELPFUL_COUNTS,
    PAIRED_SCENARIOS,
    REFUSAL_JSONL,
    REFUSAL_TXT_COUNTS,
    STARTER_TRAITS,
    nonblank_lines,
    write_prompt_set,
    write_starter_traits,
)
from traitflow.cli import main
from traitflow.data.traits import load_trait
from traitflow.errors import SpecError, SpecErrors
from traitflow.specs.loader import load_project

REPO = Path(__file__).resolve().parents[1]


def make_project(tmp_path: Path, experiment: str, models: dict[str, str] | None = None) -> Path:
    """A project root with the trait-interp-layout starter traits (tests/traitinterp.py) and the
    prompt set `starter/general`, plus the given specs."""
    root = tmp_path / "proj"
    write_starter_traits(root / "datasets" / "traits" / "starter")
    write_prompt_set(root / "datasets" / "inference" / "starter" / "general.json")
    (root / "specs" / "experiments").mkdir(parents=True)
    (root / "specs" / "models").mkdir(parents=True)
    (root / "specs" / "experiments" / "exp.yaml").write_text(experiment)
    for name, text in (models or {}).items():
        (root / "specs" / "models" / f"{name}.yaml").write_text(text)
    return root


GOOD = """\
name: exp
variants:
  chat: small
  inline: {model: some-org/some-model, dtype: bfloat16}
traits: [starter/*]
extraction: {position: ["prompt[-1]", "response[:5]"], layers: "30%-60%"}
inference: {prompt_sets: [starter/general], layers: "best,best+2"}
comparisons: [{a: chat, b: inline, prompt_set: starter/general}]
"""


def errors_of(root: Path) -> list[SpecError]:
    with pytest.raises(SpecErrors) as info:
        load_project(root)
    return info.value.errors


@pytest.mark.parametrize("trait", sorted(STARTER_TRAITS))
def test_trait_interp_traits_load_unchanged(tmp_path, trait):
    write_starter_traits(tmp_path, [trait])
    folder = tmp_path / trait
    data = load_trait(folder, f"starter/{trait}")
    pos_file = folder / ("positive.jsonl" if (folder / "positive.jsonl").exists() else "positive.txt")
    expected = nonblank_lines(pos_file)
    assert len(data.positive) == len(expected)
    if pos_file.suffix == ".txt":
        assert [s.prompt for s in data.positive] == [line.strip() for line in expected]
    steering = json.loads((folder / "steering.json").read_text())
    assert data.steering.questions == steering["questions"]
    assert data.steering.eval_prompt == steering.get("eval_prompt")
    assert data.direction == steering.get("direction", "positive")
    if pos_file.suffix == ".jsonl":
        first = json.loads(expected[0])
        assert data.positive[0].prompt == first["prompt"]
        assert data.positive[0].system_prompt == first.get("system_prompt")
        assert data.paired


def test_unpaired_txt_trait_is_not_paired(tmp_path):
    write_starter_traits(tmp_path, ["helpful"])
    folder = tmp_path / "helpful"
    counts = (len(nonblank_lines(folder / "positive.txt")), len(nonblank_lines(folder / "negative.txt")))
    assert counts == HELPFUL_COUNTS and counts[0] != counts[1]
    data = load_trait(folder, "starter/helpful")
    assert (len(data.positive), len(data.negative)) == counts
    assert not data.paired
    assert all(s.system_prompt is None for s in data.positive + data.negative)


def test_jsonl_wins_over_txt(tmp_path):
    write_starter_traits(tmp_path, ["refusal"])
    folder = tmp_path / "refusal"
    txt_counts = (len(nonblank_lines(folder / "positive.txt")), len(nonblank_lines(folder / "negative.txt")))
    assert txt_counts == REFUSAL_TXT_COUNTS and REFUSAL_JSONL not in txt_counts  # reading the txt would show
    data = load_trait(folder, "starter/refusal")
    assert (len(data.positive), len(data.negative)) == (REFUSAL_JSONL, REFUSAL_JSONL)
    assert data.paired
    for side, scenarios in (("positive", data.positive), ("negative", data.negative)):
        rows = [json.loads(line) for line in nonblank_lines(folder / f"{side}.jsonl")]
        assert [(s.prompt, s.system_prompt) for s in scenarios] == [(r["prompt"], r["system_prompt"]) for r in rows]
    assert data.direction == "negative"
    assert {f.name for f in data.files} >= {"positive.jsonl", "negative.jsonl"}
    assert not {f.name for f in data.files} & {"positive.txt", "negative.txt"}


def test_good_project_resolves(tmp_path):
    root = make_project(tmp_path, GOOD, {"small": "model: other-org/small\nchat_template: false\n"})
    project = load_project(root)
    exp = project.experiments["exp"]
    assert exp.traits == sorted(f"starter/{p.name}" for p in (root / "datasets" / "traits" / "starter").iterdir())
    assert exp.traits == sorted(f"starter/{name}" for name in STARTER_TRAITS)
    assert exp.variants["chat"].model == "other-org/small" and exp.variants["chat"].name == "chat"
    assert exp.variants["inline"].dtype == "bfloat16"
    assert exp.extraction_variant == "chat"
    assert exp.prompt_sets == ["starter/general"]
    written = json.loads((root / "datasets" / "inference" / "starter" / "general.json").read_text())["prompts"]
    assert [p.text for p in project.prompt_sets["starter/general"].prompts] == [p["text"] for p in written]
    assert [p.id for p in project.prompt_sets["starter/general"].prompts] == [str(p["id"]) for p in written]
    # Defaults fill every key that was not given.
    assert exp.spec.extraction.methods == ["probe", "mean_diff"]
    assert exp.spec.storage.uri == "./experiments"


@pytest.mark.parametrize(
    "text, line, field, needle",
    [
        ("name: exp\nvariants: {a: {model: x/y}}\ntraits: [starter/*]\nbogus: 1\n", 4, "bogus", "unknown key"),
        ("name: exp\nvariants: {a: {model: x/y}}\ntraits: [starter/*]\nextraction:\n  layers: [1]\n", 5, "extraction.layers", "expected"),
        ("name: exp\nvariants:\n  a: {model: x/y, dtype: float64}\ntraits: [starter/*]\n", 3, "variants.a.dtype", "float64"),
        ("name: exp\nvariants: {a: {model: x/y}}\ntraits: [starter/*]\nextraction: {methods: [magic]}\n", 4, "extraction.methods[0]", "magic"),
        ("name: exp\nvariants: {a: {model: x/y}}\n", 1, "traits", "required"),
        ("name: exp\nvariants: {a: missing-spec}\ntraits: [starter/*]\n", 2, "variants.a", "no model spec named 'missing-spec'"),
        ("name: exp\nvariants: {a: {model: x/y}}\ntraits:\n  - nothing/*\n", 4, "traits[0]", "matches no folder"),
        ("name: exp\nvariants: {a: {model: x/y}}\ntraits: [../etc/*]\n", 3, "traits[0]", "inside datasets/traits"),
        ("name: exp\nvariants: {a: {model: x/y}}\ntraits: [starter/*]\ninference: {prompt_sets: [nope]}\n", 4, "inference.prompt_sets[0]", "no prompt set"),
        ("name: exp\nvariants: {a: {model: x/y}}\ntraits: [starter/*]\nextraction:\n  variant: b\n", 5, "extraction.variant", "unknown variant"),
        ("name: exp\nvariants: {a: {model: ../outside}}\ntraits: [starter/*]\n", 2, "variants.a.model", "without '..'"),
        ("name: exp\nvariants: {a: {model: x/y}}\ntraits: [starter/*]\nextraction: {position: 'middle[:3]'}\n", 4, "extraction.position", "middle"),
        ("name: exp\nvariants: {a: {model: x/y}}\ntraits: [starter/*]\nextraction: {layers: '5-x'}\n", 4, "extraction.layers", "5-x"),
        ("name: exp\nvariants: {a: {model: x/y}}\ntraits: [starter/*]\nextraction: {val_split: 2}\n", 4, "extraction.val_split", "less than 1"),
        ("name: exp\nvariants: {a: {model: x/y}\ntraits: [starter/*]\n", 3, None, "YAML syntax error"),
        ("", 1, None, "file is empty"),
        ("name: exp\nname: again\nvariants: {a: {model: x/y}}\ntraits: [starter/*]\n", 2, "name", "duplicate key"),
    ],
)
def test_user_mistakes_name_file_line_and_field(tmp_path, text, line, field, needle):
    root = make_project(tmp_path, text)
    errors = errors_of(root)
    assert any(e.line == line and e.field == field and needle in e.message for e in errors), [e.format() for e in errors]
    assert all(e.file.endswith("exp.yaml") for e in errors)


def test_every_error_is_reported_not_only_the_first(tmp_path):
    text = "name: exp\nvariants: {a: nope}\ntraits: [nothing/*]\ninference: {prompt_sets: [missing]}\n"
    errors = errors_of(make_project(tmp_path, text))
    assert {e.field for e in errors} >= {"variants.a", "traits[0]", "inference.prompt_sets[0]"}


def test_symlink_out_of_root_is_refused(tmp_path):
    root = make_project(tmp_path, "name: exp\nvariants: {a: {model: models/evil}}\ntraits: [starter/*]\n")
    (tmp_path / "elsewhere").mkdir()
    (root / "models").mkdir()
    (root / "models" / "evil").symlink_to(tmp_path / "elsewhere")
    errors = errors_of(root)
    assert any("outside the project root" in e.message and e.line == 2 for e in errors)


@pytest.mark.parametrize(
    "filename, content, needle",
    [
        ("positive.jsonl", '{"prompt": "a"}\nnot json\n', "positive.jsonl:2: invalid JSON"),
        ("positive.jsonl", '{"prompt": ""}\n', "positive.jsonl:1: prompt: expected a non-empty string"),
        ("negative.jsonl", '{"prompt": "a"}\n', f"positive has {PAIRED_SCENARIOS} scenarios but negative has 1"),
        ("steering.json", '{"questions": []}', "steering.json:1: questions: expected a non-empty list"),
        ("steering.json", '{\n "questions": ["q"],\n "direction": "up"\n}', "steering.json:3: direction: expected positive or negative"),
        ("steering.json", '{"questions": ["q"], "eval_prompt": "no placeholders"}', "must contain {question}"),
        ("trait.yaml", "paired: maybe\n", "trait.yaml:1: paired"),
    ],
)
def test_bad_trait_files(tmp_path, filename, content, needle):
    root = make_project(tmp_path, GOOD.replace("starter/*", "starter/optimism"), {"small": "model: o/s\n"})
    (root / "datasets" / "traits" / "starter" / "optimism" / filename).write_text(content)
    messages = [e.format() for e in errors_of(root)]
    assert any(needle in m for m in messages), messages


def test_bad_prompt_set(tmp_path):
    root = make_project(tmp_path, GOOD, {"small": "model: o/s\n"})
    (root / "datasets" / "inference" / "starter" / "general.json").write_text('{"prompts": [\n  {"id": 1}\n]}')
    messages = [e.format() for e in errors_of(root)]
    assert any("general.json:2: prompts[0].text: expected a non-empty string" in m for m in messages), messages


def test_cli_validate_ok_and_errors(tmp_path, capsys):
    root = make_project(tmp_path, GOOD, {"small": "model: o/s\n"})
    assert main(["validate", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    optimism = root / "datasets" / "traits" / "starter" / "optimism"
    n_pos, n_neg = (len(nonblank_lines(optimism / f"{side}.jsonl")) for side in ("positive", "negative"))
    n_questions = len(json.loads((optimism / "steering.json").read_text())["questions"])
    n_prompts = len(json.loads((root / "datasets" / "inference" / "starter" / "general.json").read_text())["prompts"])
    assert f"trait starter/optimism: {n_pos} positive / {n_neg} negative scenarios (paired), {n_questions} steering questions" in out
    assert f"prompt set starter/general: {n_prompts} prompts" in out
    (root / "specs" / "experiments" / "exp.yaml").write_text("name: exp\nvariants: {a: nope}\ntraits: [zzz]\n")
    assert main(["validate", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "exp.yaml:2: variants.a" in err and "exp.yaml:3: traits[0]" in err and "Traceback" not in err


def test_repo_specs_validate(capsys):
    """The shipped specs (toy demo and the real-model examples) validate without downloading."""
    assert main(["validate", "--root", str(REPO)]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "qwen_starter", "llama_organism"):
        assert f"experiment {name}" in out


def test_schema_written_and_matches_models(tmp_path):
    assert main(["schema", "--out", str(tmp_path)]) == 0
    schema = json.loads((tmp_path / "experiment.schema.json").read_text())
    assert set(schema["required"]) == {"name", "variants", "traits"}
    assert "extraction" in schema["properties"]
    model = json.loads((tmp_path / "model.schema.json").read_text())
    assert model["properties"]["quantization"]["enum"] == ["none", "8bit", "4bit"]


def test_experiment_name_must_be_a_dagster_group_name(tmp_path):
    errors = errors_of(make_project(tmp_path, "name: my-exp\nvariants: {a: {model: x/y}}\ntraits: [starter/*]\n"))
    assert any(e.field == "name" and e.line == 1 and "my-exp" in e.message for e in errors)


def test_a_folder_without_specs_is_not_a_project(tmp_path, capsys):
    assert main(["validate", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no specs/experiments/ or specs/models/" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "section, text, needle",
    [
        ("steering", "steering: {method: magic}", "expected 'mean_diff'"),
        ("inference", "inference: {position: 'response[:3]'}", "not among extraction.position"),
        ("steering", "steering: {position: 'prompt[-1]'}", "not among extraction.position"),
    ],
)
def test_stage_vector_choices_are_checked_up_front(tmp_path, section, text, needle):
    spec = "name: exp\nvariants: {a: {model: x/y}}\ntraits: [starter/*]\n" + text + "\n"
    errors = errors_of(make_project(tmp_path, spec))
    assert any(e.line == 4 and e.field.startswith(section) and needle in e.message for e in errors), [e.format() for e in errors]


TWO_POSITIONS = """\
name: exp
variants: {a: {model: x/y}, b: {model: x/z}}
traits: [starter/*]
extraction: {position: ["prompt[-1]", "response[:5]"]}
"""


@pytest.mark.parametrize(
    "text, line, field, needle",
    [
        # cma_es monitors with the refinement, made at the steering position (default: the first extraction position)
        ("steering: {position: 'prompt[-1]', cma_es: {enabled: true}}\ninference:\n  method: cma_es\n  position: 'response[:5]'\n",
         8, "inference.position", "made at the steering position 'prompt[-1]'; set inference.position to 'prompt[-1]'"),
        ("steering: {cma_es: {enabled: true}}\ninference:\n  method: cma_es\n  position: 'response[:5]'\n",
         8, "inference.position", "set inference.position to 'prompt[-1]'"),
        ("steering: {position: 'response[:5]', cma_es: {enabled: true}}\ninference:\n  method: cma_es\n",
         6, "inference.position", "set inference.position to 'response[:5]'"),
        ("inference:\n  method: cma_es\n", 6, "inference.method", "inference.method cma_es needs steering.cma_es.enabled"),
        # a variant replays or imports, and replays only when inference runs on it
        ("inference:\n  import: {b: b.json}\n  replay: {b: a}\n", 7, "inference.replay.b", "also in inference.import"),
        ("inference:\n  variants: [a]\n  replay: {b: a}\n", 7, "inference.replay.b", "not among inference.variants"),
    ],
)
def test_inference_choices_that_cannot_run_fail_validation(tmp_path, text, line, field, needle):
    root = make_project(tmp_path, TWO_POSITIONS + text)
    (root / "b.json").write_text('[{"id": "1", "response": "hi"}]')
    errors = errors_of(root)
    assert any(e.line == line and e.field == field and needle in e.message for e in errors), [e.format() for e in errors]


def test_inference_method_cma_es_at_the_steering_position_loads(tmp_path):
    text = "steering: {position: 'response[:5]', cma_es: {enabled: true}}\ninference: {method: cma_es, position: 'response[:5]'}\n"
    assert load_project(make_project(tmp_path, TWO_POSITIONS + text)).experiments["exp"]


def test_inference_method_cma_es_from_another_experiment_needs_its_refinement(tmp_path):
    """With inference.vectors_from, the refinement is the source's: its cma_es switch and steering position."""
    root = make_project(tmp_path, TWO_POSITIONS.replace("name: exp", "name: src"))
    (root / "specs" / "experiments" / "exp.yaml").rename(root / "specs" / "experiments" / "src.yaml")
    (root / "specs" / "experiments" / "exp.yaml").write_text(
        "name: exp\nvariants: {a: {model: x/y}}\ntraits: [starter/*]\nsteering: {cma_es: {enabled: true}}\n"
        "inference: {vectors_from: src, method: cma_es}\n")
    errors = errors_of(root)
    assert [(e.field, e.line) for e in errors] == [("inference.method", 5)], [e.format() for e in errors]
    assert "needs steering.cma_es.enabled of experiment 'src'" in errors[0].message
