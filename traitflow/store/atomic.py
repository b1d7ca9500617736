"""Atomic file writes: write a temp file in the same folder, fsync, then rename over the target.

JSON is written strictly: Python's ``json`` writes ``NaN``/``Infinity`` by default, which are not
JSON, so :func:`json_text` turns every non-finite float into ``null`` first and then encodes with
``allow_nan=False``. Where a metric is undefined on purpose, its producer writes ``null`` and a
sibling ``<name>_reason``; this is the net under everything else.
"""

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

_UMASK_AT_IMPORT = os.umask(0)
os.umask(_UMASK_AT_IMPORT)


def _umask() -> int:
    """The process umask, read without setting it (os.umask would, for a moment: a race between
    threads writing at once could leave the whole process at 0)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _UMASK_AT_IMPORT


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; artifacts are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or ±Infinity float (in dicts, lists and tuples, at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    return value


def json_text(value: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``value``: non-finite floats become ``null``; never a ``NaN``/``Infinity`` token."""
    return json.dumps(finite_or_null(value), allow_nan=False, **kwargs)
