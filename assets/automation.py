"""`automation:` in an experiment's YAML, as Dagster declarative automation conditions.

- `on_change: mark_stale` (the default) attaches nothing: an edited trait shows as stale in the UI
  and waits for `traitflow run` or a click, so no GPU work starts by itself.
- `on_change: materialize`: a partition runs when something it reads changed (a dataset or model
  observation with a new version, an upstream materialization, an edit of the spec fields it
  reads), so the `<experiment>_dataset_changes` sensor's observation of an edited trait re-runs
  that trait's chain through Dagster's automation sensor, and only that trait's.
- `schedule: "<cron>"`: at each cron tick, the partitions that are missing, or stale since they
  last ran, run (e.g. `0 3 * * *` for a nightly monitoring run on a prompt set). Staleness counts
  changes the automation sensor has seen since the schedule was added.

Both wait for their upstream partitions to exist and not be running, and respect blocking checks
per partition (a trait whose vetting failed does not go on).
"""

import logging
import os

import dagster as dg

from traitflow.graph import row
from traitflow.specs.loader import Experiment

AC = dg.AutomationCondition


def _sensor_interval() -> int:
    """How often the dataset sensors observe and the automation sensors evaluate, in seconds
    (TRAITFLOW_SENSOR_INTERVAL_S; Dagster's default, 30). A bad value is logged, not fatal: it is
    read while the code location loads, and must not take it down."""
    text = os.environ.get("TRAITFLOW_SENSOR_INTERVAL_S", "30")
    if text.isdigit() and int(text) >= 1:
        return int(text)
    logging.getLogger("traitflow").error("TRAITFLOW_SENSOR_INTERVAL_S must be a whole number of seconds >= 1, "
                                         "got %r; using 30", text)
    return 30


SENSOR_INTERVAL_S = _sensor_interval()


def _ready(exp: Experiment, asset: str) -> dg.AutomationCondition:
    idle = ~AC.any_deps_in_progress() & ~AC.in_progress() & AC.all_deps_blocking_checks_passed()
    if row(asset).partitions == "experiment":
        # The summary reads whatever is there (a trait whose vetting failed is a row of None): a
        # missing partition upstream must not hold it back for good.
        return idle
    missing = AC.any_deps_missing()
    if row(asset).vector_stage == "inference":
        # Projections and comparisons read every trait's vectors and leave out a trait without
        # any (its vetting failed): one such trait must not hold them back for the others.
        source = exp.vector_source("inference").name
        missing = missing.ignore(dg.AssetSelection.assets(*(dg.AssetKey([source, name])
                                                             for name in ("vectors", "extraction_eval", "cma_es"))))
    return ~missing & idle


def _changed() -> dg.AutomationCondition:
    return AC.any_deps_updated() | AC.code_version_changed()


def automation_condition(exp: Experiment, asset: str) -> dg.AutomationCondition | None:
    spec = exp.spec.automation
    conditions = []
    if spec.on_change == "materialize":
        conditions.append((_changed().since_last_handled() & _ready(exp, asset)).with_label("on_change: materialize"))
    if spec.schedule is not None:
        stale = AC.missing() | _changed().since(AC.newly_requested() | AC.newly_updated())
        conditions.append((AC.cron_tick_passed(spec.schedule).since_last_handled() & stale & _ready(exp, asset))
                          .with_label(f"schedule: {spec.schedule}"))
    if not conditions:
        return None
    return conditions[0] if len(conditions) == 1 else (conditions[0] | conditions[1])


def reacts_to_changes(exp: Experiment) -> bool:
    """Whether `automation:` runs anything by itself (then edits must be observed from the start)."""
    return exp.spec.automation.on_change == "materialize" or exp.spec.automation.schedule is not None


def automation_sensor(exp: Experiment) -> dg.AutomationConditionSensorDefinition | None:
    """The sensor that evaluates this experiment's conditions (running from the start: `automation:`
    in the YAML is the switch), shown in the UI's Automation tab as `<experiment>_automation`."""
    if not reacts_to_changes(exp):
        return None
    return dg.AutomationConditionSensorDefinition(
        f"{exp.name}_automation", target=dg.AssetSelection.groups(exp.name), default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=SENSOR_INTERVAL_S,
        description=f"Runs what `automation:` in {exp.name}'s YAML asks for ({exp.spec.automation.on_change}"
                    + (f", schedule {exp.spec.automation.schedule}" if exp.spec.automation.schedule else "") + ").")
