"""`traitflow sync push|pull` between the toy demo's local artifacts and a moto bucket over HTTP."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from traitflow.errors import TraitflowError
from traitflow.sync import sync

REPO = Path(__file__).resolve().parents[1]


def files(folder: Path, include_activations: bool = False) -> dict[str, bytes]:
    from traitflow.sync import synced

    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and synced(p.relative_to(folder).as_posix(), include_activations)}


@pytest.fixture()
def laptop(tmp_path):
    """A project copy that ran nothing: specs and datasets, no artifacts."""
    root = tmp_path / "laptop"
    shutil.copytree(REPO / "specs", root / "specs")
    shutil.copytree(REPO / "datasets", root / "datasets")
    return root


def test_push_then_pull_round_trips_byte_for_byte(s3, toy_demo, laptop, tmp_path):
    s3["client"].create_bucket(Bucket="sync-round-trip")
    here = toy_demo["root"] / "experiments"
    remote = "s3://sync-round-trip/team"
    first = sync("push", here, "demo", remote, out=(log := open(tmp_path / "log", "w"))).summary
    wanted = files(here / "demo")
    assert first.startswith(f"pushed {len(wanted)} file(s)") and "0 unchanged" in first
    keys = {o["Key"] for o in s3["client"].list_objects_v2(Bucket="sync-round-trip")["Contents"]}
    assert keys == {f"team/demo/{r}" for r in wanted}
    assert not any("/activations/" in k or "/." in k for k in keys)  # raw activations and local files stay behind
    # Nothing changed: nothing moves.
    assert sync("push", here, "demo", remote, out=log).summary.startswith("pushed 0 file(s), 0 B, in ")
    # A machine that ran nothing pulls, and has the same bytes.
    pulled = sync("pull", laptop / "experiments", "demo", remote, out=log).summary
    assert pulled.startswith(f"pulled {len(wanted)} file(s)")
    assert files(laptop / "experiments" / "demo") == wanted
    assert sync("pull", laptop / "experiments", "demo", remote, out=log).summary.startswith("pulled 0 file(s)")
    # …and reads the results there without any model.
    report = subprocess.run([str(Path(sys.executable).parent / "traitflow"), "report", "demo", "--json", "--root", str(laptop)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "TRAITFLOW_NO_SERVER": "1"})
    assert report.returncode == 0, report.stderr
    there, original = json.loads(report.stdout)["traits"], toy_demo["report"]["traits"]
    assert set(there) == set(original)
    for trait, entry in there.items():  # the same results; only the raw activations were left behind
        assert entry["materialized"] == [a for a in original[trait]["materialized"] if a != "activations"]
        assert {k: v for k, v in entry.items() if k != "materialized"} == {k: v for k, v in original[trait].items() if k != "materialized"}


def test_only_changes_move_and_full_propagates_deletions(s3, toy_demo, laptop, tmp_path, capsys):
    s3["client"].create_bucket(Bucket="sync-changes")
    remote = "s3://sync-changes/x"
    mine = laptop / "experiments"
    shutil.copytree(toy_demo["root"] / "experiments" / "demo", mine / "demo")
    out = open(tmp_path / "log", "w")
    total = len(files(mine / "demo"))
    sync("push", mine, "demo", remote, out=out)
    best = mine / "demo/best_vector/toy/optimism/best_vector.json"
    best.write_text(best.read_text().replace('"layer"', '"layer" ', 1))  # same meaning, other bytes
    gone = mine / "demo/logit_lens/toy/refusal/chat/logit_lens.json"
    gone.unlink()
    dry = sync("push", mine, "demo", remote, dry_run=True, full=True, out=sys.stdout).summary
    printed = capsys.readouterr().out
    assert "would push demo/best_vector/toy/optimism/best_vector.json" in printed
    assert "would delete s3 demo/logit_lens/toy/refusal/chat/logit_lens.json" in printed
    assert dry.startswith("would have pushed 1 file(s)") and dry.endswith("; 1 deleted")
    key = "x/demo/logit_lens/toy/refusal/chat/logit_lens.json"
    assert s3["client"].head_object(Bucket="sync-changes", Key=key)  # a dry run moves nothing
    assert sync("push", mine, "demo", remote, out=out).summary.startswith("pushed 1 file(s)")  # without --full: no deletion
    assert s3["client"].head_object(Bucket="sync-changes", Key=key)
    full = sync("push", mine, "demo", remote, full=True, out=out).summary
    assert full.startswith("pushed 0 file(s)") and full.endswith(f"{total - 1} unchanged; 1 deleted")
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="404"):
        s3["client"].head_object(Bucket="sync-changes", Key=key)


@pytest.mark.parametrize("checksums", ["when_supported", "when_required"])
def test_activations_on_request_and_both_checksum_settings(s3, toy_demo, laptop, tmp_path, checksums):
    name = f"sync-acts-{checksums.replace('_', '-')}"
    s3["client"].create_bucket(Bucket=name)
    here = toy_demo["root"] / "experiments"
    out = open(tmp_path / "log", "w")
    sync("push", here, "demo", f"s3://{name}", include_activations=True, checksums=checksums, jobs=2, out=out)
    sync("pull", laptop / "experiments", "demo", f"s3://{name}", include_activations=True, checksums=checksums, out=out)
    mirrored = files(laptop / "experiments" / "demo", include_activations=True)
    assert any(r.startswith("activations/") for r in mirrored)
    assert mirrored == files(here / "demo", include_activations=True)


def test_sync_mistakes_are_one_line(s3, laptop):
    traitflow = str(Path(sys.executable).parent / "traitflow")
    for args, message in ((["push", "demo"], "sync needs --remote s3://bucket/prefix"),
                          (["push", "demo", "--remote", "s3://no-such-bucket/x"], "bucket 'no-such-bucket' does not exist"),
                          (["push", "demo", "--remote", "gs://b/x"], "expected s3://bucket/prefix"),
                          (["push", "demo", "--remote", "s3://bkt/x", "--storage", "s3://bkt/y"], "storage is s3://bkt/y already")):
        done = subprocess.run([traitflow, "sync", *args, "--root", str(laptop)], capture_output=True, text=True, timeout=120,
                              env={k: v for k, v in os.environ.items() if k != "TRAITFLOW_REMOTE"})
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, (args, done.stderr)
    with pytest.raises(TraitflowError, match="--jobs must be at least 1"):
        sync("push", laptop, "demo", "s3://b/x", jobs=0)


def test_after_a_pull_the_pulled_partitions_are_up_to_date_here(s3, toy_demo, tmp_path):
    """Dagster's instance is not synced: `sync pull` records what it pulled (raw activations left in
    the bucket included), so `traitflow run` on the laptop has nothing to do."""
    s3["client"].create_bucket(Bucket="sync-records")
    sync("push", toy_demo["root"] / "experiments", "demo", "s3://sync-records/x", include_activations=True,
         out=open(tmp_path / "log", "w"))
    laptop = tmp_path / "laptop2"
    for folder in ("specs", "datasets"):
        shutil.copytree(toy_demo["root"] / folder, laptop / folder)
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "TRAITFLOW_STORAGE")}
    env["TRAITFLOW_NO_SERVER"] = "1"
    traitflow = str(Path(sys.executable).parent / "traitflow")
    pulled = subprocess.run([traitflow, "sync", "pull", "demo", "--remote", "s3://sync-records/x", "--root", str(laptop)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert "recorded " in pulled.stdout and "materialization(s) of demo in the Dagster instance at" in pulled.stdout
    again = subprocess.run([traitflow, "run", "demo", "--root", str(laptop)], capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr
    assert "materialized 0 run(s)" in again.stdout and "(everything selected is up to date)" in again.stdout, again.stdout
    assert not (laptop / "experiments/demo/activations").exists()  # left in the bucket, yet counted as made
