"""trait-interp's layout as it is written today: adversarial prefixes, question objects, three-level
paths, both prompt-set forms, warnings (not errors) for keys we do not know, too little data."""

import json
from pathlib import Path

import pytest

from tests.traitinterp import (
    CURRENT_TRAITS,
    THANKFUL_PREFIX,
    nonblank_lines,
    write_bare_prompt_set,
    write_current_traits,
    write_prompt_set,
    write_starter_traits,
)
from traitflow.cli import main
from traitflow.data.prompts import load_prompt_set
from traitflow.data.traits import load_trait, min_scenarios
from traitflow.errors import SpecErrors
from traitflow.specs.loader import load_project

EXPERIMENT = """\
name: today
variants: {chat: {model: some-org/some-model}}
traits: ["base/*/*", "starter/*"]
inference: {prompt_sets: [archive/bare, starter/general]}
"""


def make_root(tmp_path: Path, experiment: str = EXPERIMENT) -> Path:
    root = tmp_path / "proj"
    traits = root / "datasets" / "traits"
    write_current_traits(traits)
    write_starter_traits(traits / "starter", ["optimism", "helpful"])
    write_bare_prompt_set(root / "datasets" / "inference" / "archive" / "bare.json")
    write_prompt_set(root / "datasets" / "inference" / "starter" / "general.json", system_prompt="You are terse.")
    (root / "specs" / "experiments").mkdir(parents=True)
    (root / "specs" / "experiments" / "today.yaml").write_text(experiment)
    return root


def test_adversarial_prefix_is_kept_and_strippable(tmp_path):
    root = make_root(tmp_path)
    trait = load_trait(root / "datasets" / "traits" / CURRENT_TRAITS[0], CURRENT_TRAITS[0])
    raw = json.loads((trait.folder / "steering.json").read_text())
    assert trait.steering.adversarial_prefix == THANKFUL_PREFIX
    assert trait.steering.questions == raw["questions"]  # upstream's questions, unchanged
    assert trait.direction == "negative"
    bare = trait.steering.bare_questions
    assert all(not q.startswith(THANKFUL_PREFIX) and q for q in bare)
    assert [f"{THANKFUL_PREFIX} {q}" for q in bare] == raw["questions"]
    assert trait.warnings == []


def test_question_objects_and_unknown_keys_are_warnings_with_lines(tmp_path):
    root = make_root(tmp_path)
    trait = load_trait(root / "datasets" / "traits" / CURRENT_TRAITS[1], CURRENT_TRAITS[1])
    raw = json.loads((trait.folder / "steering.json").read_text())
    assert trait.steering.questions == [q["question"] for q in raw["questions"]]
    assert [i.high_trait for i in trait.steering.items] == [q["high_trait"] for q in raw["questions"]]
    assert trait.steering.eval_prompt == raw["eval_prompt"] and trait.direction == "positive"
    text = (trait.folder / "steering.json").read_text().splitlines()
    by_field = {w.field: w for w in trait.warnings}
    assert set(by_field) == {"source", "questions[1].difficulty"}
    for name, warning in by_field.items():
        key = name.split(".")[-1]
        assert f'"{key}"' in text[warning.line - 1], (warning.format(), text[warning.line - 1])
        assert "unknown key" in warning.message


def test_both_prompt_set_forms(tmp_path):
    root = make_root(tmp_path)
    bare_path = root / "datasets" / "inference" / "archive" / "bare.json"
    bare = load_prompt_set(bare_path, "archive/bare")
    items = json.loads(bare_path.read_text())
    assert [(p.id, p.text) for p in bare.prompts] == [(i["id"], i["prompt"]) for i in items]
    general_path = root / "datasets" / "inference" / "starter" / "general.json"
    general = load_prompt_set(general_path, "starter/general")
    data = json.loads(general_path.read_text())
    assert [p.text for p in general.prompts] == [p["text"] for p in data["prompts"]]
    assert {p.system_prompt for p in general.prompts} == {"You are terse."}
    assert [p.note for p in general.prompts] == [p.get("note") for p in data["prompts"]]
    assert general.description == data["description"]


def test_unknown_prompt_set_key_is_a_warning_naming_the_line(tmp_path):
    path = tmp_path / "set.json"
    path.write_text('{\n  "prompts": [\n    {"id": 1, "text": "Hi?"},\n    {"id": 2, "text": "Yo?", "colour": "red"}\n  ],\n'
                    '  "version": 3\n}\n')
    prompt_set = load_prompt_set(path, "set")
    assert len(prompt_set.prompts) == 2
    assert sorted((w.field, w.line) for w in prompt_set.warnings) == [("prompts[1].colour", 4), ("version", 6)]


def test_unknown_jsonl_key_is_a_warning(tmp_path):
    folder = tmp_path / "t"
    write_starter_traits(tmp_path, ["optimism"])
    folder = tmp_path / "optimism"
    lines = nonblank_lines(folder / "positive.jsonl")
    row = json.loads(lines[2]) | {"label": 1}
    lines[2] = json.dumps(row)
    (folder / "positive.jsonl").write_text("\n".join(lines) + "\n")
    trait = load_trait(folder, "x/optimism")
    assert [(w.line, w.field) for w in trait.warnings] == [(3, "label")]
    assert trait.warnings[0].file.endswith("positive.jsonl")


def test_unequal_txt_counts_are_a_note(tmp_path):
    write_starter_traits(tmp_path, ["helpful"])
    trait = load_trait(tmp_path / "helpful", "x/helpful")
    assert not trait.paired
    assert len(trait.warnings) == 1 and "unpaired" in trait.warnings[0].message


def test_today_folders_validate(tmp_path, capsys):
    root = make_root(tmp_path)
    project = load_project(root)
    assert project.experiments["today"].traits == sorted([*CURRENT_TRAITS, "starter/helpful", "starter/optimism"])
    assert main(["validate", "--root", str(root)]) == 0
    captured = capsys.readouterr()
    assert "with adversarial prefix" in captured.out
    assert "warning:" in captured.err and "steering.json" in captured.err  # fibbing's unknown keys


@pytest.mark.parametrize("val_split, need", [(0.2, 3), (0.5, 2), (0.1, 6), (0.0, 1)])
def test_min_scenarios(val_split, need):
    assert min_scenarios(val_split) == need
    if val_split:
        held_out = round(need * val_split)
        assert held_out >= 1 and need - held_out >= 1
        fewer = need - 1
        assert fewer < 2 or round(fewer * val_split) < 1 or fewer - round(fewer * val_split) < 1


def test_too_little_data_is_an_error(tmp_path):
    experiment = EXPERIMENT.replace("traits:", "extraction: {val_split: 0.2}\ntraits:").replace('["base/*/*", "starter/*"]',
                                                                                               "[starter/optimism]")
    root = make_root(tmp_path, experiment)
    folder = root / "datasets" / "traits" / "starter" / "optimism"
    for side in ("positive", "negative"):
        (folder / f"{side}.jsonl").write_text("\n".join(nonblank_lines(folder / f"{side}.jsonl")[:2]) + "\n")
    with pytest.raises(SpecErrors) as info:
        load_project(root)
    messages = [e.format() for e in info.value.errors]
    assert any("positive.jsonl" in m and "2 scenario(s)" in m and "at least 3" in m for m in messages), messages


def test_symlinked_trait_folder_outside_the_root_is_an_error(tmp_path):
    root = make_root(tmp_path)
    outside = tmp_path / "elsewhere"
    write_starter_traits(outside, ["optimism"])
    (root / "datasets" / "traits" / "starter" / "linked").symlink_to(outside / "optimism", target_is_directory=True)
    with pytest.raises(SpecErrors) as info:
        load_project(root)
    messages = [e.format() for e in info.value.errors]
    assert any("starter/linked" in m and "outside the project root" in m for m in messages), messages
    # Inside the root a symlinked folder is fine.
    (root / "datasets" / "traits" / "starter" / "linked").unlink()
    (root / "datasets" / "traits" / "starter" / "linked").symlink_to(root / "datasets" / "traits" / "starter" / "optimism")
    traits = load_project(root).experiments["today"].traits
    assert {"starter/linked", "starter/optimism"} <= set(traits)
    # A link back up the tree is not followed forever.
    (root / "datasets" / "traits" / "starter" / "helpful" / "loop").symlink_to(root / "datasets" / "traits")
    assert load_project(root).experiments["today"].traits == traits


@pytest.mark.parametrize("strip", [False, True])
def test_prefix_in_steering_and_report(tmp_path, capsys, strip):
    from traitflow.stages.steering import steering_questions

    root = make_root(tmp_path, EXPERIMENT + f"steering: {{strip_prefix: {str(strip).lower()}}}\n")
    project = load_project(root)
    trait = project.traits[CURRENT_TRAITS[0]]
    steered = steering_questions(trait, project.experiments["today"].spec.steering.strip_prefix)
    assert all(q.startswith(THANKFUL_PREFIX) != strip for q in steered)
    assert main(["report", "today", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"{CURRENT_TRAITS[0]}: steering questions carry an adversarial prefix, {'stripped' if strip else 'kept'}" in out
    assert main(["report", "today", "--root", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["traits"][CURRENT_TRAITS[0]]["adversarial_prefix"] == {"text": THANKFUL_PREFIX, "stripped": strip}
    assert report["traits"][CURRENT_TRAITS[1]]["adversarial_prefix"] is None
