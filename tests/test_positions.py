import pytest

from traitflow.errors import TraitflowError
from traitflow.extract.positions import Position, parse_position

P, R = 10, 6  # prompt [0, 10), response [10, 16)


@pytest.mark.parametrize(
    "text, window",
    [
        ("response[:5]", (10, 15)),
        ("response[:50]", (10, 16)),  # clamped to the frame
        ("prompt[-1]", (9, 10)),
        ("prompt[0]", (0, 1)),
        ("response[0]", (10, 11)),
        ("response[-1]", (15, 16)),
        ("response[-5:]", (11, 16)),
        ("response[2:7]", (12, 16)),
        ("prompt[-3:-1]", (7, 9)),
        ("prompt[:]", (0, 10)),
        ("all[:]", (0, 16)),
        ("all[-1]", (15, 16)),
        ("all[8:12]", (8, 12)),
        ("prompt[-100:]", (0, 10)),
        (" response [ 1 : 3 ] ", (11, 13)),
    ],
)
def test_windows(text, window):
    assert parse_position(text).window(P, R) == window


@pytest.mark.parametrize(
    "text",
    ["response[6]", "response[-7]", "prompt[5:2]", "response[10:]", "prompt[-1:-1]", "response[:0]"],
)
def test_empty_windows(text):
    start, stop = parse_position(text).window(P, R)
    assert start == stop


def test_empty_response_frame():
    assert parse_position("response[:5]").window(4, 0) == (4, 4)
    assert parse_position("response[-1]").window(4, 0)[0] == parse_position("response[-1]").window(4, 0)[1]
    assert parse_position("all[:]").window(0, 0) == (0, 0)


def test_window_matches_python_slicing():
    seq = list(range(P + R))
    frames = {"prompt": seq[:P], "response": seq[P:], "all": seq}
    for frame, items in frames.items():
        for a in (None, -20, -5, -1, 0, 1, 3, 20):
            for b in (None, -20, -5, -1, 0, 1, 3, 20):
                text = f"{frame}[{'' if a is None else a}:{'' if b is None else b}]"
                start, stop = parse_position(text).window(P, R)
                assert seq[start:stop] == items[slice(a, b)], text


def test_fields_and_slug():
    p = parse_position("response[:5]")
    assert p == Position(frame="response", start=None, stop=5, index=None, text="response[:5]")
    assert p.slug == "response_0_5"
    assert parse_position("prompt[-1]").slug == "prompt_-1"
    assert parse_position("prompt[-1]").index == -1
    assert parse_position("response[-5:]").slug == "response_-5_end"
    assert parse_position("all[:]").slug == "all_0_end"
    assert parse_position("prompt[-3:-1]").slug == "prompt_-3_-1"
    assert str(p) == "response[:5]"
    with pytest.raises(AttributeError):
        p.frame = "prompt"  # frozen


@pytest.mark.parametrize(
    "text",
    [
        "",
        "response",
        "response[]",
        "resp[:5]",
        "response[::2]",
        "response[1:2:3]",
        "response[a]",
        "[:5]",
        "response[:5",
        "response[1.5]",
        "response[:5]x",
    ],
)
def test_bad_syntax(text):
    with pytest.raises(TraitflowError) as info:
        parse_position(text)
    assert "\n" not in str(info.value)
    assert "position" in str(info.value)


def test_non_string():
    with pytest.raises(TraitflowError):
        parse_position(5)  # type: ignore[arg-type]


def test_no_torch_import():
    import subprocess
    import sys

    code = "import sys, traitflow.extract.positions, traitflow.extract.layers; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
