"""The layer language (DESIGN §4): which decoder layers a stage works on.

Layer ``L`` is the output of decoder block ``L`` (0-based): the residual stream after block L.

A spec is one or more comma-separated tokens:

==============  ===============================================================
``all``         every layer, ``0 .. n_layers-1``
``12``          one layer
``5-20``        an inclusive range
``0-30:5``      an inclusive range with a step (0, 5, 10, ...)
``30%-60%``     a range in percent of depth; ``50%`` alone is one layer
``best``        the best layer (needs ``best=``); also ``best+N`` and ``best-N``
==============  ===============================================================

Percent rounding rule: ``p%`` is layer ``floor(p / 100 * (n_layers - 1) + 0.5)`` — the
fraction of the *last* layer index, rounded half up. So ``0%`` is the first layer, ``100%``
the last, and with 24 layers ``30%-60%`` is layers 7..14 (6.9 -> 7, 13.8 -> 14).

The result is sorted and de-duplicated; every layer is bounds-checked and an error names the
token and the valid range.

Example:
    >>> parse_layers("0-10:5, 30%-40%, best+1", n_layers=24, best=20)
    [0, 5, 7, 8, 9, 10, 21]

This module must not import torch.
"""

import math
import re
from dataclasses import dataclass

from traitflow.errors import TraitflowError

__all__ = ["check_layers_syntax", "parse_layers", "percent_to_layer"]

_NUM = r"\d+(?:\.\d+)?%|\d+"
_RANGE = re.compile(rf"^(?P<a>{_NUM})(?:\s*-\s*(?P<b>{_NUM})(?:\s*:\s*(?P<step>\d+))?)?$")
_BEST = re.compile(r"^best(?:\s*(?P<sign>[+-])\s*(?P<n>\d+))?$")


@dataclass(frozen=True)
class _Bound:
    value: float
    percent: bool


@dataclass(frozen=True)
class _Token:
    text: str
    kind: str  # "all" | "best" | "range"
    a: _Bound | None = None
    b: _Bound | None = None
    step: int = 1
    offset: int = 0


def percent_to_layer(percent: float, n_layers: int) -> int:
    """``p%`` of depth as a layer index: ``floor(p/100 * (n_layers-1) + 0.5)`` (half up)."""
    return int(math.floor(percent / 100.0 * (n_layers - 1) + 0.5))


def _bound(text: str, token: str, spec: str) -> _Bound:
    if text.endswith("%"):
        value = float(text[:-1])
        if value > 100:
            raise TraitflowError(f"layer token {token!r} in {spec!r}: percent {text} is above 100%")
        return _Bound(value, True)
    return _Bound(int(text), False)


def _tokens(spec: str | int) -> tuple[str, list[_Token]]:
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        raise TraitflowError(f"layers must be a string or an integer, got {spec!r}")
    if isinstance(spec, int):
        if spec < 0:
            raise TraitflowError(f"layer {spec} is negative; layers are numbered from 0")
        return str(spec), [_Token(str(spec), "range", _Bound(spec, False), None)]
    text = spec.strip()
    if not text:
        raise TraitflowError("empty layer spec: expected e.g. 'all', '12', '5,10', '5-20', '0-30:5', '30%-60%'")
    out: list[_Token] = []
    for raw in text.split(","):
        tok = raw.strip().lower()
        if not tok:
            raise TraitflowError(f"empty item in layer spec {spec!r} (stray comma?)")
        if tok == "all":
            out.append(_Token(tok, "all"))
            continue
        m = _BEST.match(tok)
        if m:
            n = int(m.group("n") or 0)
            out.append(_Token(tok, "best", offset=-n if m.group("sign") == "-" else n))
            continue
        m = _RANGE.match(tok)
        if not m:
            raise TraitflowError(
                f"bad layer token {raw.strip()!r} in {spec!r}: expected all, N, A-B, A-B:S, P%-Q%, best, best+N or best-N"
            )
        a = _bound(m.group("a"), tok, spec)
        b = _bound(m.group("b"), tok, spec) if m.group("b") is not None else None
        step = int(m.group("step")) if m.group("step") is not None else 1
        if step < 1:
            raise TraitflowError(f"bad layer token {tok!r} in {spec!r}: step must be at least 1")
        if b is not None and a.percent == b.percent and b.value < a.value:
            raise TraitflowError(f"bad layer token {tok!r} in {spec!r}: range end is before its start")
        out.append(_Token(tok, "range", a, b, step))
    return text, out


def check_layers_syntax(spec: str | int) -> None:
    """Validate a layer spec without knowing the model's depth (spec validation before load).

    Raises TraitflowError on bad syntax; bounds are checked later by :func:`parse_layers`.
    """
    _tokens(spec)


def parse_layers(spec: str | int, n_layers: int, best: int | None = None) -> list[int]:
    """Resolve a layer spec against a model with ``n_layers`` decoder blocks.

    Args:
        spec: the layer DSL (see module docstring) or a single integer layer.
        n_layers: number of decoder blocks; valid layers are ``0 .. n_layers-1``.
        best: the best layer, needed when the spec uses ``best``/``best+N``/``best-N``.

    Returns:
        Sorted, de-duplicated layer indices.

    Raises:
        TraitflowError naming the offending token and the valid range.
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be positive, got {n_layers}")
    text, tokens = _tokens(spec)
    valid = f"valid layers are 0-{n_layers - 1} ({n_layers} layers)"

    def check(layer: int, tok: _Token) -> int:
        if not 0 <= layer < n_layers:
            raise TraitflowError(f"layer {layer} from {tok.text!r} in layer spec {text!r} is out of range: {valid}")
        return layer

    def resolve(b: _Bound) -> int:
        return percent_to_layer(b.value, n_layers) if b.percent else int(b.value)

    layers: set[int] = set()
    for tok in tokens:
        if tok.kind == "all":
            layers.update(range(n_layers))
        elif tok.kind == "best":
            if best is None:
                raise TraitflowError(f"layer spec {text!r} uses {tok.text!r} but no best layer is known here")
            layers.add(check(best + tok.offset, tok))
        else:
            assert tok.a is not None
            start = check(resolve(tok.a), tok)
            if tok.b is None:
                layers.add(start)
                continue
            stop = check(resolve(tok.b), tok)
            if stop < start:
                raise TraitflowError(
                    f"layer range {tok.text!r} in {text!r} resolves to {start}-{stop}: end before start ({valid})"
                )
            layers.update(range(start, stop + 1, tok.step))
    return sorted(layers)
