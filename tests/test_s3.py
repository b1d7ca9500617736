"""s3:// storage against a real S3 API: moto's server, over HTTP on localhost.

The toy demo runs end to end into a bucket and `traitflow report` reads it back from a fresh
mirror; a server that stops answering mid-run is a one-line error that leaves nothing that looks
complete, and the run after it is back resumes; credentials never reach output or artifacts.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SECRET, start_moto
from traitflow.errors import TraitflowError
from traitflow.store import open_store

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def bucket(s3, name: str) -> str:
    s3["client"].create_bucket(Bucket=name)
    return name


def keys(s3, name: str) -> dict[str, int]:
    pages = s3["client"].get_paginator("list_objects_v2").paginate(Bucket=name)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def project(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "proj"
    shutil.copytree(REPO / "specs", root / "specs")
    shutil.copytree(REPO / "datasets", root / "datasets")
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return root, {"DAGSTER_HOME": str(home), "TRAITFLOW_NO_SERVER": "1"}


def traitflow(root: Path, env: dict, *args: str, timeout: int = 600, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "traitflow"), *args, "--root", str(root)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout, **popen)


# ---------------------------------------------------------------------------------- the store itself
def test_store_round_trip_through_the_bucket(s3, tmp_path):
    import torch

    name = bucket(s3, "store-round-trip")
    writer = open_store(f"s3://{name}/exp", tmp_path / "a")
    path = writer.path("demo", "vectors", ("toy", "optimism", "chat"), "vectors.safetensors")
    writer.write_tensors(path, {"v": torch.arange(6.0).reshape(2, 3)}, {"layers": [1, 2]})
    log = writer.path("demo", "steering", ("toy", "optimism", "chat"), "results.jsonl")
    writer.append_text(log, '{"a": 1}\n')
    writer.append_text(log, '{"b": 2}\n')
    assert set(keys(s3, name)) == {"exp/demo/vectors/toy/optimism/chat/vectors.safetensors",
                                   "exp/demo/steering/toy/optimism/chat/results.jsonl"}
    # Another machine (another project root: an empty mirror) reads what was written.
    reader = open_store(f"s3://{name}/exp", tmp_path / "b")
    other = reader.path("demo", "vectors", ("toy", "optimism", "chat"), "vectors.safetensors")
    tensors, meta = reader.read_tensors(other)
    assert torch.equal(tensors["v"], torch.arange(6.0).reshape(2, 3)) and meta["layers"] == [1, 2]
    assert reader.read_text_optional(reader.path("demo", "steering", ("toy", "optimism", "chat"), "results.jsonl")) == '{"a": 1}\n{"b": 2}\n'
    # The bucket is the truth: an object deleted there is gone for readers, whatever the mirror holds.
    s3["client"].delete_object(Bucket=name, Key="exp/demo/vectors/toy/optimism/chat/vectors.safetensors")
    assert other.exists() and not reader.exists(other)
    with pytest.raises(TraitflowError, match=r"s3://store-round-trip/exp/demo/vectors/toy/optimism/chat/vectors.safetensors: artifact missing"):
        reader.read_tensors(other)
    assert not other.exists()


@pytest.mark.parametrize("checksums", ["when_supported", "when_required"])
def test_checksum_settings_both_work(s3, tmp_path, checksums):
    """R2 rejected boto3's default CRC checksums for a while; `storage.checksums: when_required` sends only required ones."""
    name = bucket(s3, f"checksums-{checksums.replace('_', '-')}")
    store = open_store(f"s3://{name}/x", tmp_path, checksums=checksums)
    path = store.path("demo", "best_vector", ("toy", "optimism"), "best_vector.json")
    store.write_json(path, {"layer": 3})
    fresh = open_store(f"s3://{name}/x", tmp_path / "fresh", checksums=checksums)
    assert fresh.read_json(fresh.path("demo", "best_vector", ("toy", "optimism"), "best_vector.json")) == {"layer": 3}


def test_a_missing_bucket_or_endpoint_is_one_line(s3, tmp_path):
    with pytest.raises(TraitflowError, match=r"^storage s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist"):
        store = open_store("s3://no-such-bucket/x", tmp_path)
        store.exists(store.path("demo", "responses", ("a",), "responses.json"))
    store = open_store("s3://any-bucket/x", tmp_path, endpoint_url="http://127.0.0.1:9")
    with pytest.raises(TraitflowError, match=r"^storage s3://any-bucket/x: cannot open the bucket at http://127.0.0.1:9"):
        store.exists(store.path("demo", "responses", ("a",), "responses.json"))
    with pytest.raises(TraitflowError, match="'Bad_Bucket' is not a bucket name"):
        open_store("s3://Bad_Bucket/x", tmp_path)


# ---------------------------------------------------------------------------------- the demo on S3
def test_the_demo_runs_on_s3_and_report_reads_it_back(s3, tmp_path):
    root, env = project(tmp_path)
    name = bucket(s3, "demo-run")
    done = traitflow(root, env, "run", "demo", "--storage", f"s3://{name}/runs/one")
    assert done.returncode == 0, done.stderr[-3000:]
    stored = keys(s3, name)
    for asset, file in (("responses", "responses.json"), ("activations", "activations.safetensors"),
                        ("vectors", "vectors.safetensors"), ("steering", "summary.json"), ("steering", "results.jsonl"),
                        ("best_vector", "best_vector.json"), ("extraction_eval", "eval_heatmap.html")):
        assert any(k.startswith(f"runs/one/demo/{asset}/") and k.endswith(file) for k in stored), (asset, file)
    assert not any(k.endswith((".part", ".tmp", ".etag")) or "/.dagster/" in k or "/.locks/" in k for k in stored)
    # Each object is byte for byte the mirror's file.
    mirror = root / ".traitflow/s3" / name / "runs/one"
    for key in stored:
        body = s3["client"].get_object(Bucket=name, Key=key)["Body"].read()
        assert body == (mirror / key.removeprefix("runs/one/")).read_bytes(), key
    local_report = traitflow(root, env, "report", "demo", "--json", "--storage", f"s3://{name}/runs/one")
    # A machine that ran nothing: a fresh project copy, no mirror, no Dagster instance.
    other, other_env = project(tmp_path / "laptop")
    report = traitflow(other, other_env, "report", "demo", "--json", "--storage", f"s3://{name}/runs/one")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout) == json.loads(local_report.stdout)
    assert json.loads(report.stdout)["traits"], "the report lists the demo's traits"
    # Credentials never reach output, logs, metadata or artifacts.
    for text in (done.stdout, done.stderr, report.stdout, report.stderr):
        assert SECRET not in text
    for folder in (root, tmp_path / "home"):
        for file in folder.rglob("*"):
            if file.is_file() and file.stat().st_size < 50_000_000:
                assert SECRET.encode() not in file.read_bytes(), file


def test_an_unresponsive_server_mid_run_is_one_line_and_the_rerun_resumes(s3, tmp_path):
    """SIGSTOP the S3 server while extraction runs: the run fails in one line naming the storage;
    nothing in the bucket or the mirror looks complete that is not; after SIGCONT the next run
    re-does only what did not finish."""
    proc, url = start_moto()
    try:
        import boto3

        client = boto3.client("s3", endpoint_url=url)
        client.create_bucket(Bucket="outage")
        root, env = project(tmp_path)
        env.update(AWS_ENDPOINT_URL=url, TRAITFLOW_S3_TIMEOUT_S="2", TRAITFLOW_STEP_RETRIES="0")  # retries: tests/test_deploy.py
        run = subprocess.Popen([str(BIN / "traitflow"), "run", "demo", "--root", str(root), "--storage", "s3://outage/x",
                                "--stages", "extraction"], env={**os.environ, **env}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        for line in run.stdout:
            if "demo: activations" in line:
                os.killpg(proc.pid, signal.SIGSTOP)  # the storage stops answering
                break
        out, err = run.communicate(timeout=300)
        os.killpg(proc.pid, signal.SIGCONT)
        assert run.returncode == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: run ") and "storage s3://outage/x: cannot " in lines[0], err
        assert SECRET not in err
        mirror = root / ".traitflow/s3/outage/x"
        assert not [p for p in mirror.rglob("*") if p.name.endswith((".part", ".tmp"))]
        before = {k for page in client.get_paginator("list_objects_v2").paginate(Bucket="outage") for k in
                  (o["Key"] for o in page.get("Contents", []))}
        assert any("/responses/" in k for k in before) and not any("/extraction_eval/" in k for k in before)
        # Back: the next run resumes, skipping the partitions that finished before the outage.
        again = traitflow(root, {**env, "TRAITFLOW_S3_TIMEOUT_S": "60"}, "run", "demo", "--storage", "s3://outage/x",
                          "--stages", "extraction")
        assert again.returncode == 0, again.stderr[-3000:]
        assert "responses up to date for 3 partition(s), skipped" in again.stdout
        after = {k for page in client.get_paginator("list_objects_v2").paginate(Bucket="outage") for k in
                 (o["Key"] for o in page.get("Contents", []))}
        assert sum(k.endswith("extraction_eval.json") for k in after) == 3
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
