"""What `dagster dev` and `dagster asset materialize -m definitions` load.

The project root (specs/ and datasets/) is TRAITFLOW_ROOT, default: this folder.
"""

import os
from pathlib import Path

from assets import build_defs
from traitflow.specs.loader import load_project

ROOT = Path(os.environ.get("TRAITFLOW_ROOT", Path(__file__).resolve().parent))

defs = build_defs(load_project(ROOT))
