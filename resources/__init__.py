"""Dagster resources: the model loader and the artifact store, defined in one place."""

from resources.model import ModelResource
from resources.storage import ArtifactStoreResource

__all__ = ["ArtifactStoreResource", "ModelResource"]
