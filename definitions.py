"""What `dagster dev` and `dagster asset materialize -m definitions` load.

The project root (specs/ and datasets/) is TRAITFLOW_ROOT, default: this folder. Every experiment
that validates loads; one with errors is left out (each error is logged once, as `traitflow
validate` prints it), so one broken trait folder never takes the code location down.
"""

import logging
import os
from pathlib import Path

from assets import build_defs
from traitflow.specs.loader import load_project

ROOT = Path(os.environ.get("TRAITFLOW_ROOT", Path(__file__).resolve().parent))

_project = load_project(ROOT, strict=False)
_log = logging.getLogger("traitflow")
for _warning in _project.warnings:
    _log.warning("warning: %s", _warning.format())
for _error in _project.errors:
    _log.error("error: %s", _error.format())
for _name in _project.left_out:
    _log.error("experiment %s left out: it has errors (run `traitflow validate`)", _name)

defs = build_defs(_project)
