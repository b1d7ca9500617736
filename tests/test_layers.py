import pytest

from traitflow.errors import TraitflowError
from traitflow.extract.layers import check_layers_syntax, parse_layers, percent_to_layer


@pytest.mark.parametrize(
    "spec, n, expected",
    [
        ("all", 4, [0, 1, 2, 3]),
        ("12", 24, [12]),
        (12, 24, [12]),
        (0, 1, [0]),
        ("5,10,15", 24, [5, 10, 15]),
        ("15, 5,10 ,5", 24, [5, 10, 15]),
        ("5-8", 24, [5, 6, 7, 8]),
        ("5-5", 24, [5]),
        ("0-20:5", 24, [0, 5, 10, 15, 20]),
        ("0-22:5", 24, [0, 5, 10, 15, 20]),
        ("30%-60%", 24, [7, 8, 9, 10, 11, 12, 13, 14]),  # 6.9 -> 7, 13.8 -> 14
        ("0%-100%", 5, [0, 1, 2, 3, 4]),
        ("50%", 5, [2]),
        ("50%", 4, [2]),  # 1.5 rounds half up to 2
        ("25%", 3, [1]),  # 0.5 -> 1 (half up, not banker's)
        ("30%-60%:3", 24, [7, 10, 13]),
        ("2-50%", 11, [2, 3, 4, 5]),
        ("all,3", 4, [0, 1, 2, 3]),
        ("1, 3-4, 100%", 8, [1, 3, 4, 7]),
        ("ALL", 2, [0, 1]),
    ],
)
def test_parse(spec, n, expected):
    assert parse_layers(spec, n) == expected


def test_percent_rounding_rule():
    # p% -> floor(p/100 * (n-1) + 0.5)
    assert percent_to_layer(0, 32) == 0
    assert percent_to_layer(100, 32) == 31
    assert percent_to_layer(30, 32) == 9  # 9.3
    assert percent_to_layer(60, 32) == 19  # 18.6
    assert percent_to_layer(50, 3) == 1
    assert percent_to_layer(12.5, 5) == 1  # 0.5 -> 1
    assert parse_layers("30%-60%", 32) == list(range(9, 20))
    assert parse_layers("33.3%", 10) == [3]


def test_best():
    assert parse_layers("best", 24, best=10) == [10]
    assert parse_layers("best,best+2", 24, best=10) == [10, 12]
    assert parse_layers("best-1, best + 1, best", 24, best=10) == [9, 10, 11]
    assert parse_layers("best,0", 24, best=0) == [0]
    with pytest.raises(TraitflowError, match="no best layer"):
        parse_layers("best", 24)
    with pytest.raises(TraitflowError, match=r"'best\+2'.*0-23"):
        parse_layers("best+2", 24, best=22)
    with pytest.raises(TraitflowError, match="best-1"):
        parse_layers("best-1", 24, best=0)


@pytest.mark.parametrize(
    "spec, n, needle",
    [
        ("24", 24, "'24'"),
        ("0-30:5", 24, "'0-30:5'"),
        ("5,99", 24, "'99'"),
        (24, 24, "24"),
    ],
)
def test_out_of_range(spec, n, needle):
    with pytest.raises(TraitflowError) as info:
        parse_layers(spec, n)
    message = str(info.value)
    assert needle in message
    assert f"0-{n - 1}" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "spec",
    [
        "",
        " ",
        "5,",
        ",5",
        "a",
        "5-",
        "-5",
        "5--6",
        "20-5",
        "60%-30%",
        "5-10:0",
        "5:2",
        "150%",
        "best+",
        "best*2",
        "1.5",
        True,
        None,
        3.0,
        -1,
        "5 6",
    ],
)
def test_bad_syntax(spec):
    with pytest.raises(TraitflowError) as info:
        check_layers_syntax(spec)
    assert "\n" not in str(info.value)
    with pytest.raises(TraitflowError):
        parse_layers(spec, 24)


@pytest.mark.parametrize(
    "spec", ["all", "12", 12, "5,10,15", "5-20", "0-30:5", "30%-60%", "best", "best+2, best-1", "0-30:5,best"]
)
def test_syntax_ok_without_depth(spec):
    check_layers_syntax(spec)  # no n_layers needed, bounds unchecked


def test_mixed_percent_range_resolving_backwards():
    # syntactically fine (kinds differ), but resolves to end-before-start on a small model
    check_layers_syntax("10-20%")
    with pytest.raises(TraitflowError, match="end before start"):
        parse_layers("10-20%", 24)
