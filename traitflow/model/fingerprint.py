"""A model variant's version: what its results depend on, cheap enough to check every 30 s.

It hashes the variant's spec (how it is loaded: dtype, quantization, chat template…) and the
weights it points at:
- a local model or LoRA folder: every file's relative path, size and modification time, and the
  full content of files under 1 MiB (configs, tokenizers, chat templates). Weights are not read
  byte by byte (gigabytes, every sensor tick); retraining a LoRA in place rewrites its files, which
  changes their size or time;
- a hub id: the id and `revision` (pin a commit for a version that means the same weights).
"""

import hashlib
import json
import os
from pathlib import Path

from traitflow.specs.models import ModelSpec

SMALL_FILE = 1 << 20


def _folder_entries(path: Path) -> list:
    if path.is_file():
        stat = path.stat()
        return [[path.name, stat.st_size, stat.st_mtime_ns]]
    entries = []
    for folder, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            file = Path(folder) / name
            stat = file.stat()
            entry = [str(file.relative_to(path)), stat.st_size, stat.st_mtime_ns]
            if stat.st_size <= SMALL_FILE:
                entry.append(hashlib.sha256(file.read_bytes()).hexdigest())
            entries.append(entry)
    return entries


def _weights(ref: str, revision: str | None, root: Path) -> dict:
    candidate = Path(ref).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    if candidate.exists():
        return {"local": _folder_entries(candidate)}
    return {"hub": ref, "revision": revision}


def model_version(spec: ModelSpec, root: Path) -> str:
    """Content version of one variant (spec + weights), 16 hex digits."""
    payload = {"spec": spec.model_dump(mode="json", exclude={"name"}),
               "model": _weights(spec.model, spec.revision, Path(root))}
    if spec.lora:
        payload["lora"] = _weights(spec.lora, None, Path(root))
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
