"""Reading and writing artifacts in open formats (JSON, safetensors, PNG/HTML) under a storage URI."""

import json
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


def open_store(uri: str, project_root: Path) -> ArtifactStore:
    """Open the storage named by an experiment's `storage.uri` (relative paths are under the root)."""
    if uri.startswith("s3://"):
        raise TraitflowError(f"storage {uri!r}: s3:// storage is not supported yet; use a local folder")
    if "://" in uri:
        raise TraitflowError(f"storage {uri!r}: expected a local folder or s3://bucket/prefix")
    path = Path(uri)
    return ArtifactStore(path if path.is_absolute() else project_root / path)
