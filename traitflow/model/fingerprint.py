"""A model variant's version: what its results depend on, by content, cheap to check every 30 s.

It hashes the variant's spec (how it is loaded: dtype, quantization, chat template…) and the
weights it points at:
- a local model or LoRA folder: every file's relative path and the hash of its content. Hashing
  gigabytes of weights every sensor tick is out of the question, so each file's content hash is
  cached under the project root (`.traitflow/file_hashes.json`) by its path, size, modification
  time and inode: a file is read again only when one of those changed. A LoRA retrained in place
  is rehashed and gets a new version; a fresh clone or a copy (new times, same bytes) is read once
  and keeps its version, so nothing goes stale for it;
- a hub id: the id and `revision` (pin a commit for a version that means the same weights).
"""

import hashlib
import json
import os
from pathlib import Path

from traitflow.errors import TraitflowError
from traitflow.specs.models import ModelSpec
from traitflow.store.atomic import atomic_write_text

CACHE = Path(".traitflow") / "file_hashes.json"
CHUNK = 1 << 20
BIG_FILE = 64 << 20


def content_hash(file: Path) -> str:
    """blake2b-128 of a file's bytes, read in 1 MB chunks (model weights; synced artifacts)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(file, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _HashCache:
    """path -> (size, mtime_ns, inode, content hash); read once, written back only if it grew."""

    def __init__(self, root: Path):
        self.path = root / CACHE
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or unreadable: start over (it is only a cache)
            self.entries = {}
        self.changed = False

    def hash(self, file: Path) -> str:
        stat = file.stat()
        key, seen = str(file.resolve()), [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        entry = self.entries.get(key)
        if isinstance(entry, list) and len(entry) == 4 and entry[:3] == seen:
            return entry[3]
        value = content_hash(file)
        self.entries[key] = [*seen, value]
        self.changed = True
        if stat.st_size >= BIG_FILE:
            # Keep the work: the first hash of a model's weights can outlast a sensor tick's
            # timeout, and the next tick must not start over.
            self.save()
        return value

    def save(self) -> None:
        if self.changed:
            try:
                atomic_write_text(self.path, json.dumps(self.entries))
                self.changed = False
            except OSError:
                pass  # a read-only project still gets correct versions, recomputed next time


def _weights(ref: str, revision: str | None, root: Path, cache: _HashCache) -> dict:
    candidate = Path(ref).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    if not candidate.exists():
        return {"hub": ref, "revision": revision}
    if candidate.is_file():
        return {"local": [[candidate.name, cache.hash(candidate)]]}
    entries = []
    for folder, dirs, files in os.walk(candidate):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            file = Path(folder) / name
            entries.append([str(file.relative_to(candidate)), cache.hash(file)])
    return {"local": entries}


def model_version(spec: ModelSpec, root: Path) -> str:
    """Content version of one variant (spec + weights), 16 hex digits. A file of the model that
    cannot be read (a broken link, no permission) is a one-line TraitflowError naming it."""
    root = Path(root)
    cache = _HashCache(root)
    try:
        # Where the weights sit (`device_map`, and `device` under it) changes no result: not hashed.
        # (Versions from before `device_map` existed stay the same, so upgrading makes nothing stale.)
        placement = {"device_map", "device"} if spec.device_map is not None else {"device_map"}
        payload = {"spec": spec.model_dump(mode="json", exclude={"name", *placement}),
                   "model": _weights(spec.model, spec.revision, root, cache)}
        if spec.lora:
            payload["lora"] = _weights(spec.lora, None, root, cache)
    except OSError as exc:
        raise TraitflowError(f"variant {spec.name or spec.model}: cannot read {exc.filename} to version the model "
                             f"({exc.strerror or exc})") from None
    finally:
        cache.save()
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
