"""ModelResource: loads model variants lazily and keeps them for the life of the process.

The cache is process-wide (traitflow.model.loading.MODEL_CACHE), so a run that materializes many
trait partitions — or `traitflow run`, which launches several runs in one process — loads each
model once. torch and transformers are imported only when a model is first needed.
"""

from pathlib import Path
from typing import Any

import dagster as dg


class ModelResource(dg.ConfigurableResource):
    root: str

    def load(self, spec: Any) -> Any:
        from traitflow.model.loading import MODEL_CACHE

        return MODEL_CACHE.get(spec, Path(self.root))
