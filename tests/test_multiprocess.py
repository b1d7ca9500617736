"""Steps share nothing but the artifacts in the store: `dagster asset materialize` (Dagster's
multiprocess executor: each step its own process, independent steps at the same time) runs one
trait's extraction chain of the toy demo against a moto S3 store over HTTP."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[1]
CHAIN = ("responses", "vetting", "activations", "vectors", "extraction_eval", "logit_lens")
PARTITION = "toy/optimism|chat"


def test_a_trait_chain_in_parallel_processes_on_s3(s3, tmp_path):
    s3["client"].create_bucket(Bucket="multiprocess")
    root, home = tmp_path / "proj", tmp_path / "home"
    shutil.copytree(REPO / "specs", root / "specs")
    shutil.copytree(REPO / "datasets", root / "datasets")
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "TRAITFLOW_ROOT": str(root), "DAGSTER_HOME": str(home), "TRAITFLOW_NO_SERVER": "1",
           "TRAITFLOW_STORAGE": "s3://multiprocess/run"}
    done = subprocess.run([str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "definitions",
                           "--select", ",".join(f"demo/{a}" for a in CHAIN), "--partition", PARTITION],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]

    instance = dg.DagsterInstance.from_config(str(home))
    (run,) = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.SUCCESS
    events = instance.all_logs(run.run_id)
    assert any("multiprocess" in (e.user_message or "") for e in events), "the run used the multiprocess executor"
    started = {e.step_key: (e.dagster_event.pid, e.timestamp) for e in events
               if e.dagster_event is not None and e.dagster_event.event_type == dg.DagsterEventType.STEP_START}
    finished = {e.step_key: e.timestamp for e in events
                if e.dagster_event is not None and e.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS}
    steps = {key: key.split("__")[-1] for key in started if key.startswith("demo__")}
    assert set(CHAIN) <= set(steps.values())
    pids = {started[key][0] for key in steps}
    assert len(pids) == len(steps) and os.getpid() not in pids, "every step ran in its own process"
    # Nothing passes between steps but the store: each read what the one before it wrote to the bucket.
    by_asset = {asset: key for key, asset in steps.items()}
    for earlier, later in zip(CHAIN, CHAIN[1:4], strict=False):
        assert finished[by_asset[earlier]] <= started[by_asset[later]][1]
    stored = {o["Key"] for o in s3["client"].list_objects_v2(Bucket="multiprocess")["Contents"]}
    for asset in CHAIN:
        assert any(k.startswith(f"run/demo/{asset}/toy/optimism/chat/") for k in stored), asset
    for record in (instance.fetch_materializations(dg.AssetKey(["demo", a]), limit=1).records[0] for a in CHAIN):
        assert record.partition_key == PARTITION
