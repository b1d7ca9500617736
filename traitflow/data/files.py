"""Reading the user's files safely: trait folders and prompt sets are third-party data.

People copy trait folders from other repositories, so nothing in one may make traitflow read
outside the project root, block on a FIFO or a device, or load an unbounded file. Every data and
spec file is read through :func:`read_text` (or :func:`read_bytes`), which

- resolves the path (symlinks included) and refuses one that leaves the root, naming the link;
- refuses anything but a regular file (checked before opening, so a FIFO never blocks);
- refuses files over a size limit;
- decodes UTF-8, drops a leading BOM, and names the byte offset of invalid UTF-8;

and :func:`parse_json`, which turns every JSON failure (syntax, nesting too deep) into one line.
Each problem is a :class:`~traitflow.errors.SpecError` naming the file.
"""

import json
import os
import stat
from pathlib import Path
from typing import Any

from traitflow.errors import SpecError

__all__ = ["MAX_DATA_BYTES", "MAX_SPEC_BYTES", "check_inside", "parse_json", "read_bytes", "read_text"]

MAX_DATA_BYTES = 64 * 1024 * 1024  # a trait side or a prompt set; upstream's largest are well under 1 MB
MAX_SPEC_BYTES = 1024 * 1024  # a YAML spec or trait.yaml


def check_inside(path: Path, root: Path | None) -> Path:
    """`path` resolved; a SpecError naming the link when it leads outside `root`."""
    try:
        resolved = path.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on older Pythons
        raise SpecError(path, f"cannot resolve path ({exc})") from None
    if root is not None:
        top = root.resolve()
        if resolved != top and top not in resolved.parents:
            raise SpecError(path, f"leads outside the project root (to {resolved}); files must stay inside it")
    return resolved


def read_bytes(path: Path, root: Path | None = None, limit: int = MAX_DATA_BYTES) -> bytes:
    """The bytes of a regular file inside `root`, at most `limit` of them."""
    check_inside(path, root)
    try:
        info = os.stat(path)  # follows symlinks: the target's type and size
    except FileNotFoundError:
        raise SpecError(path, "file does not exist") from None
    except OSError as exc:
        raise SpecError(path, f"cannot read file ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) else "not a regular file"
        raise SpecError(path, f"is {kind}; expected a regular file")
    if info.st_size > limit:
        raise SpecError(path, f"is {info.st_size:,} bytes; the limit is {limit:,}")
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise SpecError(path, f"cannot read file ({exc.strerror})") from None
    if len(data) > limit:  # it grew after the stat
        raise SpecError(path, f"is over the limit of {limit:,} bytes")
    return data


def read_text(path: Path, root: Path | None = None, limit: int = MAX_DATA_BYTES) -> str:
    """The UTF-8 text of a regular file inside `root` (a leading BOM dropped)."""
    data = read_bytes(path, root, limit)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(path, f"not UTF-8 text (invalid byte at offset {exc.start})", line=line) from None


def parse_json(text: str, path: Path, line: int | None = None) -> Any:
    """`json.loads`, with syntax errors and runaway nesting as one-line SpecErrors."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(path, f"invalid JSON ({exc.msg})", line=line or exc.lineno) from None
    except RecursionError:
        raise SpecError(path, "JSON nested too deeply", line=line) from None
