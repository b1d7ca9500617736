"""traitflow: trait vectors from contrasting scenarios, compiled into a Dagster asset graph.

The engine lives here and never imports Dagster; ``assets/`` and ``resources/`` wrap it.
"""

__version__ = "0.1.0"

from traitflow.errors import TraitflowError

__all__ = ["TraitflowError", "__version__"]
