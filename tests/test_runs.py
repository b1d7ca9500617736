"""`traitflow run` against a real Dagster instance on disk, with real processes and signals:
a SIGKILLed run does not stay STARTED (the next `traitflow run` marks it FAILURE), and a second
run of a partition that another process is materializing refuses at once, naming the holder,
without touching that partition's files."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from traitflow.errors import TraitflowError
from traitflow.store.locks import partition_lock, process_alive, process_start

REPO = Path(__file__).resolve().parents[1]
TRAITFLOW = str(Path(sys.executable).parent / "traitflow")
PARTITION = "toy/optimism|chat"
STEERING = dg.AssetKey(["demo", "steering"])
ACTIVE = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> Path:
    """The demo on the toy model, extracted for toy/optimism only (into `<root>/extracted`), with
    CMA-ES off so `--stages steering` is the steering search alone."""
    root = tmp_path_factory.mktemp("runs_toy")
    shutil.copytree(REPO / "specs", root / "specs")
    shutil.copytree(REPO / "datasets", root / "datasets")
    spec = root / "specs/experiments/demo.yaml"
    text = spec.read_text()
    assert "cma_es: {enabled: true," in text
    spec.write_text(text.replace("cma_es: {enabled: true,", "cma_es: {enabled: false,"))
    done = subprocess.run([TRAITFLOW, "run", "demo", "--root", str(root), "--stages", "extraction", "--traits", "toy/optimism"],
                          env=_env(root / "extracted", None), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def _env(storage: Path, home: Path | None) -> dict[str, str]:
    env = dict(os.environ, TRAITFLOW_STORAGE=str(storage))
    env.pop("DAGSTER_HOME", None)
    if home is not None:
        env["DAGSTER_HOME"] = str(home)
    return env


def _steering(root: Path) -> list[str]:
    return [TRAITFLOW, "run", "demo", "--root", str(root), "--stages", "steering", "--traits", "toy/optimism"]


def _lines(results: Path) -> list[str]:
    """The complete lines of a results log, read without rewriting it (a writer may be mid-line)."""
    if not results.exists():
        return []
    text = results.read_text(encoding="utf-8")
    return text.splitlines()[: text.count("\n")]


def _configs(results: Path) -> list[dict]:
    return [entry for entry in map(json.loads, _lines(results)) if "config" in entry]


def _key(entry: dict) -> tuple[int, float]:
    vector = entry["config"]["vectors"][0]
    return vector["layer"], round(vector["multiplier"], 4)


def _wait_until_searching(process: subprocess.Popen, results: Path, stderr: Path) -> None:
    """Until the run has logged a steering configuration: its steering run is STARTED, mid-search."""
    deadline = time.monotonic() + 300  # only so a broken run cannot hang the suite
    while not _configs(results):
        assert process.poll() is None, f"the run ended before searching: {stderr.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no steering configuration logged in 300 s"
        time.sleep(0.1)


def _own_runs(instance: dg.DagsterInstance, pid: int) -> list:
    return [r for r in instance.get_runs() if r.tags.get("traitflow/pid") == str(pid) and STEERING in (r.asset_selection or ())]


def _check_log(results: Path) -> list[dict]:
    """Every line whole JSON, one header, one baseline, no configuration twice."""
    text = results.read_text(encoding="utf-8")
    assert text.endswith("\n")
    entries = [json.loads(line) for line in text.splitlines()]  # a torn line fails here
    assert [e.get("type") for e in entries[:2]] == ["header", "baseline"]
    assert sum(e.get("type") == "header" for e in entries) == 1 and sum(e.get("type") == "baseline" for e in entries) == 1
    keys = [_key(e) for e in entries if "config" in e]
    assert len(keys) == len(set(keys)), keys
    return entries


def _start_steering(extracted: Path, tmp_path: Path, name: str):
    """A `traitflow run --stages steering` on a copy of the extracted store, with its own
    DAGSTER_HOME, started in its own session: (process, home, env, cmd, results.jsonl, stderr file)."""
    storage, home = tmp_path / "store", tmp_path / "dagster_home"
    shutil.copytree(extracted / "extracted", storage)
    env, cmd = _env(storage, home), _steering(extracted)
    results = storage / "demo/steering/toy/optimism/chat/results.jsonl"
    stderr = tmp_path / f"{name}.stderr"
    with open(stderr, "w") as err:
        process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    return process, home, env, cmd, results, stderr


def test_killed_run_is_marked_failed_by_the_next_run(extracted, tmp_path):
    process, home, env, cmd, results, stderr = _start_steering(extracted, tmp_path, "killed")
    try:
        _wait_until_searching(process, results, stderr)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        stuck = _own_runs(instance, process.pid)
        assert [r.status for r in stuck] == [dg.DagsterRunStatus.STARTED]  # what a SIGKILL leaves behind
        run = stuck[0]
        host = socket.gethostname()
        assert run.tags["traitflow/host"] == host and run.tags["dagster/partition"] == PARTITION
        before = _configs(results)

        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        marked = [line for line in again.stdout.splitlines() if "FAILURE" in line]
        assert marked == [f"  marked run {run.run_id} FAILURE: its process {process.pid} on {host} is gone (demo/steering, {PARTITION})"]
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert not instance.get_runs(filters=dg.RunsFilter(statuses=list(ACTIVE)))
        rerun = [r for r in instance.get_runs() if STEERING in (r.asset_selection or ()) and r.run_id != run.run_id]
        assert [r.status for r in rerun] == [dg.DagsterRunStatus.SUCCESS]
        assert rerun[0].tags["traitflow/pid"] != str(process.pid)
    finally:
        instance.dispose()
    entries = _check_log(results)
    after = [e for e in entries if "config" in e]
    assert after[: len(before)] == before and len(after) > len(before)  # resumed, nothing evaluated twice
    assert (results.parent / "summary.json").exists()


def test_second_run_of_a_busy_partition_refuses_at_once(extracted, tmp_path):
    """The first run is stopped (SIGSTOP) mid-search, so it surely holds the partition while the
    second one runs; the second fails at once with one line naming the first's PID, writes
    nothing, and leaves the first's run alone (its process exists). Continued, the first finishes."""
    first, home, env, cmd, results, stderr = _start_steering(extracted, tmp_path, "first")
    try:
        _wait_until_searching(first, results, stderr)
        os.killpg(first.pid, signal.SIGSTOP)
        try:
            holding = results.read_bytes()
            second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            assert results.read_bytes() == holding  # the second wrote nothing
        finally:
            os.killpg(first.pid, signal.SIGCONT)

        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        errors = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]

        instance = dg.DagsterInstance.from_config(str(home))
        try:
            holder = _own_runs(instance, first.pid)
            assert [r.status for r in holder] == [dg.DagsterRunStatus.STARTED]  # its process exists: not marked
            refused = [r for r in instance.get_runs() if STEERING in (r.asset_selection or ()) and r.tags.get("traitflow/pid") != str(first.pid)]
            assert [r.status for r in refused] == [dg.DagsterRunStatus.FAILURE]
            assert errors[0] == (f"error: run {refused[0].run_id} failed at steering ({PARTITION}): demo__steering: "
                                 f"demo/steering {PARTITION} is being materialized by PID {first.pid} on {socket.gethostname()} "
                                 f"(run {holder[0].run_id}); not running it twice at once: retry when that run has ended, or stop it")

            assert first.wait(timeout=600) == 0, stderr.read_text()[-3000:]
            assert [r.status for r in _own_runs(instance, first.pid)] == [dg.DagsterRunStatus.SUCCESS]
        finally:
            instance.dispose()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    _check_log(results)
    assert (results.parent / "summary.json").exists()


HOLD = """\
import sys
from traitflow.store.locks import partition_lock
with partition_lock(sys.argv[1], "demo", "steering", sys.argv[2], run_id="r1"):
    print("held", flush=True)
    sys.stdin.read()  # until killed
"""


def test_lock_of_a_killed_holder_is_free_at_once(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), PARTITION], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert process_alive(holder.pid, process_start(holder.pid))
        with pytest.raises(TraitflowError) as refused:
            with partition_lock(tmp_path, "demo", "steering", PARTITION):
                pytest.fail("entered a partition another process holds")
        message = str(refused.value)
        assert "\n" not in message
        assert f"demo/steering {PARTITION} is being materialized by PID {holder.pid} on {socket.gethostname()} (run r1)" in message
        # Other partitions, and the same partition of another asset, are free meanwhile.
        with partition_lock(tmp_path, "demo", "steering", "toy/formality|chat"), partition_lock(tmp_path, "demo", "cma_es", PARTITION):
            pass
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
        holder.stdin.close()
    assert not process_alive(holder.pid)
    assert not process_alive(os.getpid(), start="0")  # a PID whose process started at another time is another process
    with partition_lock(tmp_path, "demo", "steering", PARTITION) as path:  # the kernel released the killed holder's lock
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert path.read_text() == ""  # released: names nobody
    assert path == tmp_path / "demo/.locks/steering/toy%2Foptimism|chat.lock"
