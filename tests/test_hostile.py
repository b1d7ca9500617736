"""A corpus of hostile and careless inputs, each with its expected outcome.

Trait folders and prompt sets are third-party data, and specs are typed by hand: every case here
either validates (`ok`, perhaps with a warning) or gives `traitflow validate` exit 2 with one-line
errors naming the file, never a traceback, a hang, a read outside the project root or a setting
that picks an endpoint. Each case builds a small project, breaks one thing and checks the outcome.
The count of cases is printed by `test_corpus_size` (quoted in the closing note).
"""

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.traitinterp import write_prompt_set, write_starter_traits
from traitflow.cli import main

EXPERIMENT = """\
name: x
variants: {chat: {model: some-org/some-model}}
traits: ["starter/*"]
judges: {plain: {model: keywords}}
inference: {prompt_sets: [starter/general]}
"""
OPTIMISM = Path("datasets/traits/starter/optimism")


def base_project(root: Path) -> None:
    write_starter_traits(root / "datasets" / "traits" / "starter", ["optimism", "formal"])
    write_prompt_set(root / "datasets" / "inference" / "starter" / "general.json")
    (root / "specs" / "experiments").mkdir(parents=True)
    (root / "specs" / "experiments" / "x.yaml").write_text(EXPERIMENT)


def spec(text: str) -> Callable[[Path, Path], None]:
    return lambda root, outside: (root / "specs" / "experiments" / "x.yaml").write_text(text)


def spec_bytes(data: bytes) -> Callable[[Path, Path], None]:
    return lambda root, outside: (root / "specs" / "experiments" / "x.yaml").write_bytes(data)


def extra(text: str) -> Callable[[Path, Path], None]:
    return spec(EXPERIMENT + text)


def file(rel: str, data: str | bytes) -> Callable[[Path, Path], None]:
    def build(root: Path, outside: Path) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return build


def symlink_out(rel: str, content: str = "secret\n") -> Callable[[Path, Path], None]:
    def build(root: Path, outside: Path) -> None:
        target = outside / Path(rel).name
        target.write_text(content)
        (root / rel).unlink(missing_ok=True)
        (root / rel).symlink_to(target)
    return build


def fifo(rel: str) -> Callable[[Path, Path], None]:
    def build(root: Path, outside: Path) -> None:
        (root / rel).unlink(missing_ok=True)
        os.mkfifo(root / rel)
    return build


def sparse(rel: str, size: int) -> Callable[[Path, Path], None]:
    def build(root: Path, outside: Path) -> None:
        with open(root / rel, "wb") as handle:
            handle.truncate(size)  # no disk used; the size is what the reader sees
    return build


def folder_named(name: str) -> Callable[[Path, Path], None]:
    def build(root: Path, outside: Path) -> None:
        shutil.copytree(root / OPTIMISM, root / "datasets" / "traits" / "starter" / name)
    return build


def directory_at(rel: str) -> Callable[[Path, Path], None]:
    def build(root: Path, outside: Path) -> None:
        (root / rel).unlink()
        (root / rel).mkdir()
    return build


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(9))
DEEP_YAML = "name: x\nvariants: " + "[" * 5000 + "]" * 5000 + "\n"
DEEP_JSON = "[" * 100000 + "]" * 100000
JSONL_ROW = '{"prompt": "Tell me about rain.", "system_prompt": "Be bright."}'

# name -> (build, expected): "ok", or a fragment of the one-line error (and the file it names).
CASES: dict[str, tuple[Callable[[Path, Path], None], str, str]] = {
    # ---- our YAML
    "yaml alias bomb": (spec(EXPERIMENT + BOMB), "anchors and aliases", "x.yaml"),
    "yaml recursive alias": (extra("loop: &l [*l]\n"), "anchors and aliases", "x.yaml"),
    "yaml python tag": (extra("steering: !!python/object/apply:os.system [echo]\n"), "unsupported YAML tag", "x.yaml"),
    "yaml custom tag": (extra("storage: !vault secret\n"), "unsupported YAML tag", "x.yaml"),
    "yaml binary tag": (extra("storage: {uri: !!binary aGVsbG8=}\n"), "unsupported YAML tag", "x.yaml"),
    "yaml deep nesting": (spec(DEEP_YAML), "nested too deeply", "x.yaml"),
    "yaml invalid utf-8": (spec_bytes(EXPERIMENT.encode() + b"judge: {model: \xff\xfe}\n"), "not UTF-8", "x.yaml"),
    "yaml utf-8 BOM": (spec_bytes(b"\xef\xbb\xbf" + EXPERIMENT.encode()), "ok", ""),
    "yaml binary garbage": (spec_bytes(bytes(range(256)) * 4), "not UTF-8", "x.yaml"),
    "yaml over the size limit": (spec(EXPERIMENT + "# " + "x" * (1024 * 1024) + "\n"), "the limit is", "x.yaml"),
    "yaml empty": (spec(""), "file is empty", "x.yaml"),
    "yaml duplicate key": (extra("name: y\n"), "duplicate key", "x.yaml"),
    "yaml is a FIFO": (fifo("specs/experiments/x.yaml"), "a FIFO", "x.yaml"),
    "yaml symlinked outside": (symlink_out("specs/experiments/x.yaml", EXPERIMENT), "outside the project root", "x.yaml"),
    "yaml date stays text": (extra("steering: {system_prompt: 2024-05-01}\n"), "ok", ""),
    # ---- paths and names in specs
    "storage absolute": (extra("storage: {uri: /tmp/elsewhere}\n"), "relative to the project root", "x.yaml"),
    "storage parent": (extra("storage: {uri: ../elsewhere}\n"), "relative to the project root", "x.yaml"),
    "storage home": (extra("storage: {uri: ~/elsewhere}\n"), "relative to the project root", "x.yaml"),
    "model home path": (spec(EXPERIMENT.replace("some-org/some-model", "~/models/m")), "relative to the project root", "x.yaml"),
    "import outside": (spec(EXPERIMENT.replace("inference: {prompt_sets: [starter/general]}",
                                               "inference: {prompt_sets: [starter/general], import: {chat: ../r.json}}")),
                       "relative to the project root", "x.yaml"),
    "position never holds a token": (extra("extraction: {position: 'response[40]', max_new_tokens: 16}\n"),
                                     "selects no token", "x.yaml"),
    "empty slice position": (extra("extraction: {position: 'prompt[3:1]'}\n"), "selects no token", "x.yaml"),
    "unknown local judge": (spec(EXPERIMENT.replace("judges: {plain: {model: keywords}}", "judge: {model: 'local:nope'}")),
                            "names no variant", "x.yaml"),
    "empty methods": (extra("extraction: {methods: []}\n"), "at least 1 item", "x.yaml"),
    "prompt set name with bracket": (spec(EXPERIMENT.replace("starter/general", "'starter/gen[1]'")),
                                     "partition key", "x.yaml"),
    "trait folder with a pipe": (folder_named("opt|imism"), "partition key", "opt|imism"),
    "trait folder with a comma": (folder_named("opt,imism"), "partition key", "opt,imism"),
    "trait folder with an ellipsis": (folder_named("opt...imism"), "partition key", "opt...imism"),
    # ---- trait folders (third-party data)
    "trait.yaml sets an endpoint": (file(f"{OPTIMISM}/trait.yaml", "judge: {model: openai/gpt-4o, api_base: http://evil.example/v1}\n"),
                                    "may not set judge settings", "trait.yaml"),
    "trait.yaml unknown judge": (file(f"{OPTIMISM}/trait.yaml", "judge: nope\n"), "no judge named 'nope'", "trait.yaml"),
    "trait.yaml allowed judge": (file(f"{OPTIMISM}/trait.yaml", "judge: plain\n"), "ok", ""),
    "trait.yaml alias": (file(f"{OPTIMISM}/trait.yaml", "keywords: {positive: &p [a], negative: *p}\n"), "anchors and aliases",
                         "trait.yaml"),
    "jsonl symlinked outside": (symlink_out(f"{OPTIMISM}/positive.jsonl", JSONL_ROW + "\n"), "outside the project root",
                                "positive.jsonl"),
    "definition symlinked outside": (symlink_out(f"{OPTIMISM}/definition.txt"), "outside the project root", "definition.txt"),
    "steering.json symlinked outside": (symlink_out(f"{OPTIMISM}/steering.json", '{"questions": ["q"]}'),
                                        "outside the project root", "steering.json"),
    "jsonl is a FIFO": (fifo(f"{OPTIMISM}/negative.jsonl"), "a FIFO", "negative.jsonl"),
    "definition is a folder": (directory_at(f"{OPTIMISM}/definition.txt"), "a folder", "definition.txt"),
    "jsonl over the size limit": (sparse(f"{OPTIMISM}/positive.jsonl", 65 * 1024 * 1024), "the limit is", "positive.jsonl"),
    "jsonl deep nesting": (file(f"{OPTIMISM}/positive.jsonl", DEEP_JSON + "\n"), "nested too deeply", "positive.jsonl"),
    "jsonl row is a list": (file(f"{OPTIMISM}/positive.jsonl", "[1, 2]\n" * 20), "expected an object", "positive.jsonl"),
    "jsonl invalid utf-8": (file(f"{OPTIMISM}/negative.jsonl", b'{"prompt": "\xc3\x28"}\n' * 20), "not UTF-8", "negative.jsonl"),
    "txt with BOM": (file(f"{OPTIMISM}/positive.txt", "\ufeffTell me about rain.\n" * 5), "ok", ""),
    "steering.json deep nesting": (file(f"{OPTIMISM}/steering.json", '{"questions": ' + DEEP_JSON + "}"), "nested too deeply",
                                   "steering.json"),
    "steering.json invalid utf-8": (file(f"{OPTIMISM}/steering.json", b'{"questions": ["\xff"]}'), "not UTF-8", "steering.json"),
    "steering.json questions a string": (file(f"{OPTIMISM}/steering.json", '{"questions": "q"}'), "expected a non-empty list",
                                         "steering.json"),
    "steering.json unknown keys": (file(f"{OPTIMISM}/steering.json", '{"questions": ["q"], "version": 2}'), "ok", ""),
    "trait folder symlinked outside": (lambda root, outside: (
        write_starter_traits(outside, ["formal"]),
        (root / "datasets" / "traits" / "starter" / "linked").symlink_to(outside / "formal")), "outside the project root",
        "linked"),
    # ---- prompt sets (third-party data)
    "prompt set deep nesting": (file("datasets/inference/starter/general.json", DEEP_JSON), "nested too deeply", "general.json"),
    "prompt set item not an object": (file("datasets/inference/starter/general.json", '[{"id": 1, "prompt": "hi"}, 7]'),
                                      "expected an object", "general.json"),
    "prompt set symlinked outside": (symlink_out("datasets/inference/starter/general.json", '[{"id": 1, "prompt": "hi"}]'),
                                     "outside the project root", "general.json"),
    "prompt set NaN id": (file("datasets/inference/starter/general.json", '[{"id": NaN, "prompt": "hi"}]'),
                          "expected a number or a string", "general.json"),
    "prompt set bare list with BOM": (file("datasets/inference/starter/general.json", '\ufeff[{"id": 1, "prompt": "hi"}]'), "ok", ""),
}


def test_corpus_size():
    print(f"{len(CASES)} hostile cases")
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input(name, tmp_path, capsys):
    build, expected, names = CASES[name]
    root, outside = tmp_path / "proj", tmp_path / "outside"
    outside.mkdir()
    base_project(root)
    build(root, outside)
    code = main(["validate", "--root", str(root)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    if expected == "ok":
        assert code == 0, captured.err
        return
    assert code == 2, (captured.out, captured.err)
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert any(expected in line and names in line for line in errors), captured.err
    # Nothing read outside the root reached the output.
    assert "secret" not in captured.err


def test_bom_is_dropped(tmp_path):
    from traitflow.data.traits import load_trait

    root = tmp_path / "proj"
    base_project(root)
    (root / OPTIMISM / "positive.jsonl").unlink()
    (root / OPTIMISM / "positive.txt").write_text("\ufeffTell me about rain.\n")
    trait = load_trait(root / OPTIMISM, "starter/optimism", root)
    assert trait.positive[0].prompt == "Tell me about rain."


def test_alias_bomb_is_refused_quickly_not_expanded(tmp_path):
    """Expanding it would build 9**10 list items; refusing it touches each node once."""
    from traitflow.errors import SpecError
    from traitflow.specs.yaml_lines import load_yaml

    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    with pytest.raises(SpecError, match="anchors and aliases"):
        load_yaml(path)


