"""What `dagster dev` and `dagster asset materialize -m definitions` load.

The project root (specs/ and datasets/) is TRAITFLOW_ROOT, default: this folder. Every experiment
that validates loads; one with errors is left out (each error is logged once, as `traitflow
validate` prints it), so one broken trait folder never takes the code location down.

TRAITFLOW_EXECUTOR picks how runs launched from here (the UI, sensors, schedules) execute their
steps: unset, Dagster's default (one process per step on this machine); `k8s`, dagster-k8s's
`k8s_job_executor`, one Kubernetes pod per step (docs/deploy.md). `traitflow run` executes in its
own process either way.
"""

import logging
import os
from pathlib import Path

import dagster as dg

from assets import build_defs
from traitflow.errors import TraitflowError
from traitflow.specs.loader import load_project


def executor_from_env() -> dg.ExecutorDefinition | None:
    """The executor TRAITFLOW_EXECUTOR names (None: Dagster's default); dagster_k8s is imported only
    when asked for, so a normal load does not pay for it."""
    name = os.environ.get("TRAITFLOW_EXECUTOR", "").strip()
    if name == "":
        return None
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise TraitflowError(f"TRAITFLOW_EXECUTOR must be k8s or unset, got {name!r}")


ROOT = Path(os.environ.get("TRAITFLOW_ROOT", Path(__file__).resolve().parent))
_executor = executor_from_env()

_project = load_project(ROOT, strict=False)
_log = logging.getLogger("traitflow")
for _warning in _project.warnings:
    _log.warning("warning: %s", _warning.format())
for _error in _project.errors:
    _log.error("error: %s", _error.format())
for _name in _project.left_out:
    _log.error("experiment %s left out: it has errors (run `traitflow validate`)", _name)

defs = build_defs(_project)
if _executor is not None:
    defs = dg.Definitions.merge(defs, dg.Definitions(executor=_executor))
