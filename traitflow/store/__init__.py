"""Artifact storage: one place that knows where every artifact lives and how it is written.

Paths mirror the asset graph: `<storage>/<experiment>/<asset>/<partition…>/<file>`. Every write is
atomic (temp file + rename; on S3, an object appears only once uploaded), so a killed run never
leaves a file that looks complete. Storage is a local folder or s3://bucket/prefix (`s3.py`).
"""

from traitflow.store.artifacts import ArtifactStore, experiment_store, open_store
from traitflow.store.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["ArtifactStore", "atomic_write_bytes", "atomic_write_text", "experiment_store", "open_store"]
