"""Property-based fuzzing of the spec loader and every data reader (hypothesis).

Whatever the bytes, each reader either loads or raises our one-line error (SpecError /
TraitflowError) — never another exception, never a hang. The budget is bounded
(`FUZZ_EXAMPLES` per property, default 150) so `make test` stays quick; raise it to fuzz longer:
`FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_fuzz.py`.
"""

import json
import os
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.traitinterp import write_prompt_set, write_starter_traits
from traitflow.errors import SpecError, SpecErrors, TraitflowError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                              HealthCheck.too_slow])
REPO = Path(__file__).resolve().parents[1]
OURS = (SpecError, SpecErrors, TraitflowError)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                            st.dictionaries(st.text(max_size=12), inner, max_size=5)),
                           max_leaves=30)
spec_keys = st.sampled_from(["name", "variants", "traits", "judge", "judges", "extraction", "steering", "inference",
                             "comparisons", "benchmarks", "storage", "model", "position", "layers", "methods", "questions",
                             "prompts", "id", "text", "prompt", "keywords", "positive", "negative"])
spec_like = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(spec_keys, inner, max_size=6)), max_leaves=25)
raw = st.one_of(st.binary(max_size=400), st.text(max_size=400).map(str.encode),
                st.text(alphabet=string.printable, max_size=400).map(str.encode))


def mutate(text: bytes, data) -> bytes:
    """A real file with a few bytes inserted, deleted or replaced."""
    buf = bytearray(text)
    for _ in range(data.draw(st.integers(1, 4))):
        if not buf:
            break
        at = data.draw(st.integers(0, len(buf) - 1))
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = data.draw(st.binary(min_size=1, max_size=4))
        if op == "insert":
            buf[at:at] = piece
        elif op == "delete":
            del buf[at:at + len(piece)]
        else:
            buf[at:at + len(piece)] = piece
    return bytes(buf)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "proj"
    write_starter_traits(root / "datasets" / "traits" / "starter", ["optimism", "helpful"])
    write_prompt_set(root / "datasets" / "inference" / "starter" / "general.json")
    (root / "specs" / "experiments").mkdir(parents=True)
    (root / "specs" / "models").mkdir()
    return root


def _load_project(root: Path):
    from traitflow.specs.loader import load_project

    try:
        load_project(root, strict=False)
    except OURS:
        pass


@FUZZ
@given(data=st.data())
def test_experiment_yaml(project, data):
    """Arbitrary bytes, arbitrary YAML structures, and mutations of the shipped demo spec."""
    kind = data.draw(st.sampled_from(["bytes", "structure", "mutated"]))
    if kind == "bytes":
        content = data.draw(raw)
    elif kind == "structure":
        content = yaml.safe_dump(data.draw(spec_like)).encode()
    else:
        content = mutate((REPO / "specs" / "experiments" / "demo.yaml").read_bytes(), data)
    (project / "specs" / "experiments" / "x.yaml").write_bytes(content)
    _load_project(project)


@FUZZ
@given(data=st.data())
def test_model_yaml(project, data):
    content = data.draw(st.one_of(raw, spec_like.map(lambda v: yaml.safe_dump(v).encode())))
    (project / "specs" / "models" / "m.yaml").write_bytes(content)
    _load_project(project)


TRAIT_FILES = ["positive.jsonl", "negative.jsonl", "steering.json", "trait.yaml", "definition.txt", "positive.txt"]


@FUZZ
@given(data=st.data())
def test_trait_files(project, data):
    from traitflow.data.traits import load_trait

    folder = project / "datasets" / "traits" / "starter" / "optimism"
    name = data.draw(st.sampled_from(TRAIT_FILES))
    path = folder / name
    original = path.read_bytes() if path.exists() else b""
    kind = data.draw(st.sampled_from(["bytes", "json", "mutated"]))
    if kind == "bytes":
        content = data.draw(raw)
    elif kind == "json":
        value = data.draw(json_values)
        content = ("\n".join(json.dumps(v) for v in (value if isinstance(value, list) else [value]))
                   if name.endswith("jsonl") else json.dumps(value)).encode()
    else:
        content = mutate(original or b'{"questions": ["q"]}', data)
    path.write_bytes(content)
    try:
        load_trait(folder, "starter/optimism", project)
    except OURS:
        pass
    finally:
        if original:
            path.write_bytes(original)
        else:
            path.unlink()


@FUZZ
@given(data=st.data())
def test_prompt_sets(project, data):
    from traitflow.data.prompts import load_prompt_set

    path = project / "datasets" / "inference" / "starter" / "fuzz.json"
    kind = data.draw(st.sampled_from(["bytes", "json", "mutated"]))
    if kind == "bytes":
        content = data.draw(raw)
    elif kind == "json":
        content = json.dumps(data.draw(json_values)).encode()
    else:
        content = mutate((project / "datasets" / "inference" / "starter" / "general.json").read_bytes(), data)
    path.write_bytes(content)
    try:
        load_prompt_set(path, "starter/fuzz", project)
    except OURS:
        pass


@FUZZ
@given(text=st.one_of(st.text(max_size=40), st.from_regex(r"(prompt|response|all|x)\[-?\d{0,3}(:-?\d{0,3})?\]", fullmatch=True)))
def test_small_languages(text):
    from traitflow.extract.layers import check_layers_syntax, parse_layers
    from traitflow.extract.positions import parse_position

    try:
        position = parse_position(text)
        position.window(5, 3)
        position.can_hold_a_token(8)
    except TraitflowError:
        pass
    try:
        check_layers_syntax(text)
        parse_layers(text, 12, best=4)
    except TraitflowError:
        pass
