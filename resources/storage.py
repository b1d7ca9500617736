"""ArtifactStoreResource: where artifacts are written (the experiment's `storage.uri`, or an override)."""

from pathlib import Path
from typing import Any

import dagster as dg

from traitflow.store import ArtifactStore, experiment_store


class ArtifactStoreResource(dg.ConfigurableResource):
    """A local folder or an S3 bucket (traitflow.store.s3, through dagster-aws's S3Resource). S3
    credentials are never part of this config: boto3 reads them from the environment."""

    root: str
    override_uri: str = ""  # TRAITFLOW_STORAGE, when set, replaces every experiment's storage

    def for_experiment(self, exp: Any) -> ArtifactStore:
        return experiment_store(exp.spec.storage, Path(self.root), self.override_uri or None)
