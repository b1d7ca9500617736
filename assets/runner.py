"""`traitflow run`: materialize an experiment through Dagster, in this process.

Runs go to the instance of DAGSTER_HOME when set (so they show in `dagster dev`), else to one kept
beside the artifacts (`<storage>/.dagster`, see `open_instance`). Each stage's partitions go in as few runs as possible (a partition range per
run), and every run shares this process's model cache, so each model loads once.

A run executes in this process, so no run launcher or daemon watches it: if the process is killed
(SIGKILL, OOM, a closed laptop), its run would stay STARTED forever. Every run launched here is
therefore tagged with the host and PID of its process (`traitflow/host`, `traitflow/pid`, and
`traitflow/pid_start`, the process's start time, so a reused PID does not pass for it), and each
`traitflow run` first marks FAILURE every STARTING/STARTED run of the instance carrying those tags
whose process no longer exists on this host (one printed line per run). Runs launched by
`dagster dev` or the UI carry no such tags and are left to Dagster's own run monitoring
(`run_monitoring` in dagster.yaml); runs tagged with another host are left alone (their process
cannot be checked from here).

Two runs of one partition never interleave: the stage loop holds a per-partition lock
(`traitflow.store.locks`), and a run that finds its partition busy fails at once, naming the holder.
"""

import fnmatch
import os
import socket
import time

import dagster as dg

from assets import build_defs
from assets.checks import failed_blocking_traits
from assets.common import GPU_POOL, INTERRUPTED
from assets.freshness import Freshness
from assets.sources import current_versions, observe_jobs, observed_already, versions_of
from resources.progress import progress_logger
from traitflow.errors import TraitflowError
from traitflow.graph import STAGES  # stage -> assets, in order: the asset table's
from traitflow.specs.loader import Project
from traitflow.store import experiment_store
from traitflow.store.locks import process_alive, process_start

# `--stages extraction` means the whole extraction chain, generation included.
ALIASES = {"extraction": ["generation", "extraction"]}


PROGRESS = {"loggers": {"progress": {}}}  # the compact logger instead of Dagster's console logger


def _asset_names(stages: list[str]) -> list[str]:
    names: list[str] = []
    for stage in stages:
        if stage == "all":
            names += [a for group in STAGES.values() for a in group]
        elif stage in ALIASES:
            names += [a for group in ALIASES[stage] for a in STAGES[group]]
        elif stage in STAGES:
            names += STAGES[stage]
        elif any(stage in group for group in STAGES.values()):
            names.append(stage)
        else:
            known = sorted(set(STAGES) | {a for g in STAGES.values() for a in g})
            raise TraitflowError(f"--stages: unknown stage {stage!r}; expected all or one of {known}")
    return list(dict.fromkeys(names))


def _contiguous_ranges(all_keys: list[str], wanted: set[str]) -> list[tuple[str, str]]:
    ranges, start, prev = [], None, None
    for key in all_keys:
        if key in wanted:
            start = start or key
            prev = key
        elif start is not None:
            ranges.append((start, prev))
            start = None
    if start is not None:
        ranges.append((start, prev))
    return ranges


def run_experiment(project: Project, experiment: str, stages: list[str], trait_glob: str = "*",
                   instance: dg.DagsterInstance | None = None, force: bool = False) -> str:
    """Materialize the selected stages. Only partitions that are missing or stale (or downstream of
    one that re-runs) are materialized, unless `force`; what was skipped is printed."""
    exp = project.experiments[experiment]
    names = _asset_names(stages)
    # A bad --storage / TRAITFLOW_STORAGE fails here, in one line, before any Dagster run starts.
    store = experiment_store(exp.spec.storage, project.root, os.environ.get("TRAITFLOW_STORAGE"))
    store.check()  # an S3 bucket that is missing or unreachable, too
    defs = build_defs(project, loggers={"progress": progress_logger})
    all_assets = list(defs.assets or [])
    by_name = {a.key.path[-1]: a for a in all_assets if a.key.path[0] == experiment and isinstance(a, dg.AssetsDefinition)}
    traits = [t for t in exp.traits if fnmatch.fnmatchcase(t, trait_glob)]
    if not traits:
        raise TraitflowError(f"--traits {trait_glob!r} matches none of {exp.traits}")
    if instance is None:
        instance = open_instance(store.root)
    for line in fail_orphaned_runs(instance):
        print(line, flush=True)
    configure_gpu_pool(instance)
    process_tags = run_process_tags()
    asset_job = defs.resolve_implicit_global_asset_job_def()
    done: list[str] = []
    started = time.monotonic()
    observe_sources(project, exp, defs, instance, process_tags)
    freshness = None if force else Freshness(defs, instance)
    skipped: list[int] = []  # up-to-date partitions left alone, per asset
    for stage, members in STAGES.items():
        selected = [n for n in members if n in names and n in by_name]
        if not selected:
            continue
        # Traits whose blocking check failed (vetting left too few replies) stop at extraction, the
        # rest go on: the check results per partition say which (assets/checks.py).
        failed = {}
        if stage in ("extraction", "steering", "selection"):
            failed = failed_blocking_traits(instance, exp.vector_source("steering") if stage != "extraction" else exp)
        for trait in sorted(set(failed) & set(traits)) if stage == "extraction" else []:
            print(f"  skipping {trait}'s chain: {failed[trait]} (see the check in Dagster)", flush=True)
        # Per asset, the partitions to materialize; consecutive assets over the same partitions
        # wanting the same ones share a run.
        batches: list[tuple[list[str], list[str], set[str]]] = []
        for name in selected:
            partitions_def = by_name[name].partitions_def
            # An unpartitioned asset (one per experiment: summary) is the one key None.
            keys = partitions_def.get_partition_keys() if partitions_def is not None else [None]
            wanted = set(keys)
            if stage in ("generation", "extraction", "steering", "selection"):
                wanted = {k for k in keys if _trait_of(partitions_def, k) in traits and _trait_of(partitions_def, k) not in failed}
            todo = set(wanted)
            if freshness is not None:
                key = dg.AssetKey([experiment, name])
                todo = {k for k in wanted if freshness.reason(key, k)}
                for k in todo:
                    freshness.schedule(key, k)
                if len(todo) < len(wanted):
                    skipped.append(len(wanted) - len(todo))
                    print(f"[{time.monotonic() - started:6.1f}s] {experiment}: {name} up to date for "
                          f"{len(wanted) - len(todo)} partition(s), skipped (--force re-does them)", flush=True)
            if batches and batches[-1][1] == keys and batches[-1][2] == todo:
                batches[-1][0].append(name)
            else:
                batches.append(([name], keys, todo))
        for batch, keys, todo in batches:
            if keys == [None]:  # unpartitioned: one run of the asset, no partition
                if todo:
                    done.append(_materialize(asset_job, instance, experiment, stage, batch, None, None, process_tags, started))
                continue
            for start, end in _contiguous_ranges(keys, todo):
                done.append(_materialize(asset_job, instance, experiment, stage, batch, start, end, process_tags, started))
    summary = f"materialized {len(done)} run(s) in {time.monotonic() - started:.1f}s"
    summary += (": " + "; ".join(done)) if done else " (everything selected is up to date)"
    return summary + (f"; {sum(skipped)} up-to-date partition(s) skipped" if skipped else "")


def observe_sources(project: Project, exp, defs: dg.Definitions, instance: dg.DagsterInstance, tags: dict[str, str]) -> None:
    """Record the datasets' and models' content hashes (unless unchanged since the last
    observation), so later edits show as stale partitions."""
    versions = current_versions(project, exp)
    sources = [a for a in defs.assets or [] if isinstance(a, dg.SourceAsset) and a.key.path[0] == exp.name]
    for job in observe_jobs(exp, sources):
        source = defs.resolve_job_def(job.name).asset_layer.executable_asset_keys
        if all(observed_already(instance, key, versions_of(versions, key, defs.resolve_assets_def(key).partitions_def
                                                           .get_partition_keys()))
               for key in source):
            continue  # no dataset file changed since the last observation
        observed = defs.resolve_job_def(job.name).execute_in_process(instance=instance, raise_on_error=False,
                                                                     run_config=PROGRESS, tags=tags)
        if not observed.success:
            raise TraitflowError(f"observing the datasets of {exp.name} failed (run {observed.run_id})")


# No pool limit here: `traitflow run` runs one step at a time itself, and a second `traitflow run`
# of a busy partition must be refused at once by the partition lock, not wait on a pool slot.
# (`make demo`/`make ui` give their shared instance one slot per pool for runs from the UI.)
INSTANCE_CONFIG = "telemetry:\n  enabled: false\n"


def open_instance(store_root) -> dg.DagsterInstance:
    """The Dagster instance that records this store's materializations: DAGSTER_HOME's when set
    (`make demo` and `make ui` share `.dagster_home`), else one kept beside the artifacts,
    `<storage>/.dagster`. Either way what ran is remembered, so runs are incremental, and the
    instance never mixes up two stores' artifacts unless DAGSTER_HOME is shared between them."""
    home = os.environ.get("DAGSTER_HOME") or os.path.join(str(store_root), ".dagster")
    os.makedirs(home, exist_ok=True)
    config = os.path.join(home, "dagster.yaml")
    if not os.path.exists(config):  # Dagster insists the folder exists; no telemetry banner either
        with open(config, "w") as handle:
            handle.write(INSTANCE_CONFIG)
    return dg.DagsterInstance.from_config(home)


TAG_HOST, TAG_PID, TAG_PID_START = "traitflow/host", "traitflow/pid", "traitflow/pid_start"


def run_process_tags() -> dict[str, str]:
    """The tags that name this process on the runs it executes."""
    tags = {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}
    start = process_start(os.getpid())
    if start is not None:
        tags[TAG_PID_START] = start
    return tags


def fail_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark FAILURE the STARTING/STARTED runs that `traitflow run` executed on this host in a
    process that no longer exists (killed before it could record the run's end). Returns one line
    per run so marked. Runs without traitflow's process tags (`dagster dev`, the UI) are Dagster's
    own run monitoring's to handle; runs of another host are left alone."""
    host = socket.gethostname()
    lines = []
    active = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=active, tags={TAG_HOST: host})):
        pid = run.tags.get(TAG_PID, "")
        if not pid.isdigit() or process_alive(int(pid), run.tags.get(TAG_PID_START)):
            continue
        current = instance.get_run_by_id(run.run_id)  # it may have ended since the query
        if current is None or current.status not in active:
            continue
        instance.report_run_failed(current, message=f"process {pid} on {host} that executed this run no longer exists "
                                                     "(killed?); marked failed by the next `traitflow run`")
        # A killed step still holds its `gpu` pool slot; with one slot the next run would wait forever.
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        what = ", ".join(sorted(k.to_user_string() for k in run.asset_selection or ())) or run.job_name
        lines.append(f"  marked run {run.run_id} FAILURE: its process {pid} on {host} is gone ({what}{_partition_label(run.tags)})")
    return lines


def _partition_label(tags) -> str:
    if "dagster/partition" in tags:
        return f", {tags['dagster/partition']}"
    if "dagster/asset_partition_range_start" in tags:
        return f", {tags['dagster/asset_partition_range_start']} … {tags.get('dagster/asset_partition_range_end')}"
    return ""


USER_ERRORS = ("TraitflowError", "TransientError", "SpecError", "PartitionBusy")  # one line each, shown without the class path


def configure_gpu_pool(instance: dg.DagsterInstance) -> int | None:
    """With TRAITFLOW_GPU_SLOTS set, give the instance's `gpu` pool that many slots (model steps at
    once, for runs from the UI of this instance too). Unset, the instance's own configuration
    holds: `make demo`/`make ui` write `concurrency: pools: default_limit: 1` into theirs."""
    text = os.environ.get("TRAITFLOW_GPU_SLOTS")
    if text is None:
        return None
    try:
        slots = int(text)
    except ValueError:
        slots = 0
    if slots < 1:
        raise TraitflowError(f"TRAITFLOW_GPU_SLOTS must be a whole number of at least 1, got {text!r}")
    if instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count != slots:
        instance.event_log_storage.set_concurrency_slots(GPU_POOL, slots)
    return slots


def _materialize(asset_job, instance: dg.DagsterInstance, experiment: str, stage: str, names: list[str], start: str | None,
                 end: str | None, process_tags: dict[str, str], started: float) -> str:
    """One Dagster run of `names` over the partition range start … end (None: unpartitioned assets);
    a one-line error if it fails."""
    label = "the experiment" if start is None else start if start == end else f"{start} … {end}"
    print(f"[{time.monotonic() - started:6.1f}s] {experiment}: {', '.join(names)} for {label}", flush=True)
    tags = ({} if start is None else {"dagster/partition": start} if start == end else
            {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end})
    result = asset_job.execute_in_process(
        asset_selection=[dg.AssetKey([experiment, n]) for n in names],
        instance=instance,
        tags={**tags, **process_tags},
        raise_on_error=False,
        run_config=PROGRESS,
    )
    if not result.success:
        if _interrupted(result):
            raise KeyboardInterrupt  # Ctrl-C stopped a step: `traitflow run` stops, as interrupted (exit 130)
        raise TraitflowError(f"run {result.run_id} failed at {stage} ({label}): {_failure(result)}")
    return f"{stage}: {label}"


def _interrupted(result) -> bool:
    """Whether a step failed because the user pressed Ctrl-C (assets/common.py's INTERRUPTED)."""
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error is not None:
                if INTERRUPTED in (error.message or ""):
                    return True
                error = error.cause
    return False


def _failure(result) -> str:
    """The first step failure's message: a user error's one line, or the exception's last line."""
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error.cause is not None and error.cls_name not in USER_ERRORS:
                error = error.cause
            line = error.message.strip().splitlines()[-1]
            if error.cls_name in USER_ERRORS:
                line = line.split(f"{error.cls_name}: ", 1)[-1]  # the user's one line, without the class path
            return f"{event.step_key}: {line}"
    return "see the run's logs in Dagster"


def _trait_of(partitions_def, key: str) -> str:
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return partitions_def.get_partition_key_from_str(key).keys_by_dimension["trait"]
    return key
