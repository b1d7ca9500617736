"""ArtifactStoreResource: where artifacts are written (the experiment's `storage.uri`, or an override)."""

from pathlib import Path

import dagster as dg

from traitflow.store import ArtifactStore, open_store


class ArtifactStoreResource(dg.ConfigurableResource):
    root: str
    override_uri: str = ""  # TRAITFLOW_STORAGE, when set, replaces every experiment's storage.uri

    def for_uri(self, uri: str) -> ArtifactStore:
        return open_store(self.override_uri or uri, Path(self.root))
