"""Safe YAML loading that remembers the line of every key, so errors can point at it."""

from pathlib import Path
from typing import Any

import yaml

from traitflow.errors import SpecError

Loc = tuple[str | int, ...]


class LocatedYaml:
    """Parsed YAML plus the 1-based line of every mapping key / sequence item, by path."""

    def __init__(self, path: Path, data: Any, lines: dict[Loc, int]):
        self.path = path
        self.data = data
        self.lines = lines

    def line_of(self, loc: Loc) -> int | None:
        """Line of the deepest known prefix of `loc` (pydantic locations can go deeper than the YAML)."""
        for cut in range(len(loc), -1, -1):
            if loc[:cut] in self.lines:
                return self.lines[loc[:cut]]
        return None


def load_yaml(path: Path) -> LocatedYaml:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(path, f"cannot read file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise SpecError(path, "not UTF-8 text") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(path, f"YAML syntax error: {problem}", line=line) from None
    if node is None:
        raise SpecError(path, "file is empty; expected a mapping of keys", line=1)
    lines: dict[Loc, int] = {(): node.start_mark.line + 1}
    data = _construct(path, node, (), lines)
    return LocatedYaml(path, data, lines)


def _construct(path: Path, node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _construct(path, key_node, loc, {})
            if not isinstance(key, (str, int, float, bool)):
                raise SpecError(path, "mapping keys must be plain scalars", line=key_node.start_mark.line + 1)
            if key in out:
                raise SpecError(
                    path, "duplicate key", line=key_node.start_mark.line + 1, field=_dotted(loc + (str(key),))
                )
            lines[loc + (key,)] = key_node.start_mark.line + 1
            out[key] = _construct(path, value_node, loc + (key,), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            lines[loc + (index,)] = item.start_mark.line + 1
            items.append(_construct(path, item, loc + (index,), lines))
        return items
    # Scalars: let PyYAML's safe constructor resolve the tag (int, float, bool, null, str).
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


dotted = _dotted
