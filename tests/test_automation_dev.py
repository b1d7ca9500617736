"""`automation: {on_change: materialize}` in a real `dagster dev` (webserver + daemon): editing one
trait file makes the dataset sensor observe it, and the experiment's automation sensor re-runs
exactly that trait's chain, tick by tick, through runs the daemon launches."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
from dagster._core.storage.event_log.base import EventRecordsFilter

from tests.test_incremental import copy_of_slice, edit_optimism  # noqa: F401 - the fixture
from tests.test_webserver import free_port, stop_group

REPO = Path(__file__).resolve().parents[1]
CHAIN = ("responses", "vetting", "activations", "vectors", "extraction_eval", "logit_lens", "steering")
EXPECTED = {*((name, "starter/optimism|chat") for name in CHAIN), ("best_vector", "starter/optimism"),
            ("projections", "starter/general|chat"), ("projections", "starter/general|plain"),
            ("variant_diff", "chat_vs_plain/starter/general"), ("summary", None)}


def materialized_since(instance: dg.DagsterInstance, after: int) -> set[tuple[str, str]]:
    records = instance.get_event_records(EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_MATERIALIZATION,
                                                            after_cursor=after))
    return {(r.asset_key.path[-1], r.partition_key) for r in records}


def test_dagster_dev_reruns_the_edited_traits_chain(copy_of_slice, tmp_path):  # noqa: F811
    root, instance = copy_of_slice
    spec = root / "specs" / "experiments" / "t.yaml"
    spec.write_text(spec.read_text() + "automation: {on_change: materialize}\n")
    home = Path(instance.root_directory)
    port = free_port()
    env = dict(os.environ, TRAITFLOW_ROOT=str(root), DAGSTER_HOME=str(home), TRAITFLOW_SENSOR_INTERVAL_S="5")
    env.pop("TRAITFLOW_STORAGE", None)
    log = open(tmp_path / "dev.log", "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-m", "definitions", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # `dagster dev` stops on SIGINT
    try:
        # Let the daemon settle: the first dataset observation records today's versions, and the
        # automation sensor's first tick sees nothing to do.
        start = instance.event_log_storage.get_maximum_record_id() or 0
        time.sleep(25)
        assert process.poll() is None, (tmp_path / "dev.log").read_text()[-3000:]
        assert materialized_since(instance, start) == set()  # nothing changed: no GPU work started
        after = instance.event_log_storage.get_maximum_record_id() or 0
        edit_optimism(root)
        deadline = time.monotonic() + 300
        seen: set[tuple[str, str]] = set()
        while time.monotonic() < deadline and not EXPECTED <= seen:
            time.sleep(3)
            seen = materialized_since(instance, after)
        time.sleep(8)  # one more tick: nothing else may follow
        seen = materialized_since(instance, after)
        failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        assert not failed, [r.run_id for r in failed]
        assert seen == EXPECTED, (tmp_path / "dev.log").read_text()[-3000:]
    finally:
        stop_group(process, signal.SIGINT)
        log.close()
