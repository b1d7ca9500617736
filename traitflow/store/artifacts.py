"""Reading and writing artifacts in open formats (JSON, safetensors, PNG/HTML) under a storage URI."""

import json
import os
from pathlib import Path
from typing import Any

from traitflow.errors import TraitflowError
from traitflow.store.atomic import atomic_write_bytes, json_text

PartitionKey = tuple[str, ...]


class ArtifactStore:
    """Artifacts of experiments under one local root folder.

    `key(experiment, asset, partition, filename)` is the single source of truth for artifact paths.
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def uri(self) -> str:
        return str(self.root.resolve())

    def path(self, experiment: str, asset: str, partition: PartitionKey = (), filename: str = "") -> Path:
        parts = [experiment, asset, *partition] + ([filename] if filename else [])
        for part in parts:
            if not part or ".." in Path(part).parts or Path(part).is_absolute():
                raise TraitflowError(f"artifact path part {part!r} is not a safe relative name")
        return self.root.joinpath(*parts)

    # bytes --------------------------------------------------------------------------------
    def write_bytes(self, path: Path, data: bytes) -> str:
        atomic_write_bytes(path, data)
        return str(path)

    def read_bytes(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise TraitflowError(f"{path}: artifact missing; materialize its upstream asset first") from None

    def exists(self, path: Path) -> bool:
        return path.exists()

    def check(self) -> None:
        """Fail now, in one line, if the storage cannot be used (a local folder always can)."""

    def location(self, path: Path) -> str:
        """Where the file really is, for people: a local path, or an s3:// URI."""
        return str(path)

    # text -----------------------------------------------------------------------------------
    def write_text(self, path: Path, text: str) -> str:
        return self.write_bytes(path, text.encode("utf-8"))

    def read_text_optional(self, path: Path) -> str | None:
        """The file's text, or None when there is none."""
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def append_text(self, path: Path, text: str) -> None:
        """Append and fsync: a log that survives a kill line by line (a torn last line is its reader's to drop)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    # JSON ---------------------------------------------------------------------------------
    def write_json(self, path: Path, value: Any) -> str:
        """Strict JSON (non-finite floats written as null; see `atomic.json_text`)."""
        return self.write_bytes(path, json_text(value, indent=1, ensure_ascii=False).encode("utf-8"))

    def read_json(self, path: Path) -> Any:
        return json.loads(self.read_bytes(path))

    # tensors ------------------------------------------------------------------------------
    def write_tensors(self, path: Path, tensors: dict, metadata: dict[str, Any]) -> str:
        from safetensors.torch import save

        text_meta = {k: v if isinstance(v, str) else json_text(v) for k, v in metadata.items()}
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        return self.write_bytes(path, save(contiguous, metadata=text_meta))

    def read_tensors(self, path: Path) -> tuple[dict, dict[str, Any]]:
        """Tensors and metadata; JSON-looking metadata values are decoded."""
        from safetensors import safe_open

        if not path.exists():
            raise TraitflowError(f"{path}: artifact missing; materialize its upstream asset first")
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        return tensors, {k: _maybe_json(v) for k, v in raw.items()}


def _maybe_json(value: str) -> Any:
    if value[:1] in "[{\"" or value in ("true", "false", "null") or value[:1].isdigit() or value[:1] == "-":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def open_store(uri: str, project_root: Path, endpoint_url: str | None = None, region: str | None = None,
               checksums: str = "when_supported") -> ArtifactStore:
    """Open a storage URI: a local folder (relative paths are under the project root) or
    s3://bucket/prefix (traitflow.store.s3; endpoint and region default to boto3's environment)."""
    if uri.startswith("s3://"):
        from traitflow.store.s3 import S3ArtifactStore

        return S3ArtifactStore(uri, project_root, endpoint_url, region, checksums)  # type: ignore[arg-type]
    if "://" in uri:
        raise TraitflowError(f"storage {uri!r}: expected a local folder or s3://bucket/prefix")
    path = Path(uri)
    return ArtifactStore(path if path.is_absolute() else project_root / path)


def experiment_store(storage: Any, project_root: Path, override: str | None = None) -> ArtifactStore:
    """An experiment's store from its `storage:` spec. `override` (--storage, TRAITFLOW_STORAGE)
    replaces the whole spec: its endpoint and region then come from the environment."""
    if override:
        return open_store(override, project_root)
    return open_store(storage.uri, project_root, storage.endpoint_url, storage.region, storage.checksums)
