"""ModelResource: where a stage's models come from.

When `traitflow serve` runs for this project root, a stage that needs a model runs inside that
warm server (`server()`; traitflow.server), so no step loads a model at all. Otherwise models load
here, lazily, once per process (traitflow.model.loading.MODEL_CACHE): a run that materializes many
trait partitions, or `traitflow run`, which launches several runs in one process, loads each model
once. torch and transformers are imported only when a model is first needed.
"""

from pathlib import Path
from typing import Any

import dagster as dg


class ModelResource(dg.ConfigurableResource):
    root: str

    def load(self, spec: Any) -> Any:
        from traitflow.model.loading import MODEL_CACHE

        return MODEL_CACHE.get(spec, Path(self.root))

    def server(self) -> Any:
        """The project's running model server (a ServerClient), or None: none runs, it stopped,
        or TRAITFLOW_NO_SERVER=1. Whether it holds the models a stage needs is its to answer."""
        from traitflow.server.client import find_server

        return find_server(Path(self.root))
