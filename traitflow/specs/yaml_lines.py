"""Safe YAML loading that remembers the line of every key, so errors can point at it."""

from pathlib import Path
from typing import Any

import yaml

from traitflow.data.files import MAX_SPEC_BYTES, read_text
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


MAX_DEPTH = 64  # far deeper than any spec; deeper is a mistake or an attack


def load_yaml(path: Path, root: Path | None = None) -> LocatedYaml:
    """Parse one YAML file (inside `root` when given). Anchors and aliases are refused (no alias
    bombs, no recursive structures), as are tags other than YAML's own scalars and nesting deeper
    than MAX_DEPTH; each is a one-line SpecError with the line."""
    text = read_text(path, root, limit=MAX_SPEC_BYTES)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(path, f"YAML syntax error: {problem}", line=line) from None
    except RecursionError:
        raise SpecError(path, f"YAML nested too deeply (more than {MAX_DEPTH} levels)") from None
    if node is None:
        raise SpecError(path, "file is empty; expected a mapping of keys", line=1)
    lines: dict[Loc, int] = {(): node.start_mark.line + 1}
    data = _construct(path, node, (), lines, set())
    return LocatedYaml(path, data, lines)


_SCALAR_TAGS = {"tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool",
                "tag:yaml.org,2002:null"}


def _construct(path: Path, node: yaml.Node, loc: Loc, lines: dict[Loc, int], seen: set[int]) -> Any:
    line = node.start_mark.line + 1
    if id(node) in seen:  # the composer hands an alias back as the anchored node itself
        raise SpecError(path, "YAML anchors and aliases are not supported; write the value out", line=line,
                        field=_dotted(loc) or None)
    seen.add(id(node))
    if len(loc) > MAX_DEPTH:
        raise SpecError(path, f"YAML nested too deeply (more than {MAX_DEPTH} levels)", line=line)
    if isinstance(node, yaml.MappingNode):
        if node.tag != "tag:yaml.org,2002:map":
            raise SpecError(path, f"unsupported YAML tag {node.tag!r}", line=line, field=_dotted(loc) or None)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _construct(path, key_node, loc, {}, seen)
            if not isinstance(key, (str, int, float, bool)):
                raise SpecError(path, "mapping keys must be plain scalars", line=key_node.start_mark.line + 1)
            if key in out:
                raise SpecError(
                    path, "duplicate key", line=key_node.start_mark.line + 1, field=_dotted(loc + (str(key),))
                )
            lines[loc + (key,)] = key_node.start_mark.line + 1
            out[key] = _construct(path, value_node, loc + (key,), lines, seen)
        return out
    if isinstance(node, yaml.SequenceNode):
        if node.tag != "tag:yaml.org,2002:seq":
            raise SpecError(path, f"unsupported YAML tag {node.tag!r}", line=line, field=_dotted(loc) or None)
        items = []
        for index, item in enumerate(node.value):
            lines[loc + (index,)] = item.start_mark.line + 1
            items.append(_construct(path, item, loc + (index,), lines, seen))
        return items
    # Scalars: PyYAML's safe constructor resolves the plain tags (int, float, bool, null, str).
    if node.tag == "tag:yaml.org,2002:timestamp":
        return node.value  # a date written plainly stays the text it is
    if node.tag not in _SCALAR_TAGS:
        raise SpecError(path, f"unsupported YAML tag {node.tag!r}", line=line, field=_dotted(loc) or None)
    try:
        return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(path, f"bad YAML value: {problem}", line=line, field=_dotted(loc) or None) from None


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


dotted = _dotted
