"""Artifact storage: one place that knows where every artifact lives and how it is written.

Paths mirror the asset graph: `<storage>/<experiment>/<asset>/<partition…>/<file>`. Every write is
atomic (temp file + rename), so a killed run never leaves a file that looks complete.
"""

from traitflow.store.artifacts import ArtifactStore, open_store
from traitflow.store.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["ArtifactStore", "atomic_write_bytes", "atomic_write_text", "open_store"]
