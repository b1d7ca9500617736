"""`traitflow serve`: stages run in the warm server when it is up, with the same results as loading
the model locally; anything wrong with the server means loading locally, never a wrong result."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
import torch

from assets.runner import run_experiment
from traitflow.errors import TraitflowError
from traitflow.server.client import ServerClient, find_server
from traitflow.server.service import ModelServer, _handler
from traitflow.server.wire import DISCOVERY_FILE
from traitflow.specs.loader import load_project

REPO = Path(__file__).resolve().parents[1]
TRAITFLOW = str(Path(sys.executable).parent / "traitflow")
PARTITION = "toy/optimism|chat"


def start_server(root: Path, variants: str, *extra: str) -> tuple[subprocess.Popen, list[str]]:
    """A real `traitflow serve` process; returns once it serves. Its output lines collect in the list."""
    env = {k: v for k, v in os.environ.items() if k != "TRAITFLOW_NO_SERVER"}
    proc = subprocess.Popen([TRAITFLOW, "serve", "--root", str(root), "--variants", variants, "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("serving"):
            break
    else:
        raise AssertionError("traitflow serve exited:\n" + "\n".join(lines))
    threading.Thread(target=lambda: lines.extend(li.rstrip("\n") for li in proc.stdout), daemon=True).start()
    return proc, lines


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served(toy_demo):
    """The toy demo's root with `traitflow serve --variants chat` running on it."""
    root = toy_demo["root"]
    proc, lines = start_server(root, "chat")
    yield {"root": root, "proc": proc, "log": lines}
    stop(proc)
    assert not (root / DISCOVERY_FILE).exists(), "the server removes its discovery file when it stops"


def artifact(storage: Path, asset: str, trait: str, name: str) -> Path:
    return storage / "demo" / asset / trait / "chat" / name


def copy_store(root: Path, to: Path, *remove: tuple[str, str, str]) -> Path:
    """The toy demo's artifacts, copied, less the named ones (which a run must then write again)."""
    shutil.copytree(root / "experiments", to)
    for asset, trait, name in remove:
        target = artifact(to, asset, trait, name)
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return to


def get_health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=10) as answer:
        return json.loads(answer.read())


def materialize_into(root: Path, storage: Path, stages: list[str], **env: str) -> tuple[str, dg.DagsterInstance]:
    old = {k: os.environ.get(k) for k in ("TRAITFLOW_STORAGE", *env)}
    os.environ["TRAITFLOW_STORAGE"] = str(storage)
    os.environ.update(env)
    try:
        instance = dg.DagsterInstance.ephemeral()
        return run_experiment(load_project(root, experiments=["demo"]), "demo", stages=stages, trait_glob="toy/optimism",
                              instance=instance, force=True), instance
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def metadata_of(instance: dg.DagsterInstance, asset: str, partition: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(["demo", asset]))
    assert event is not None
    materialization = event.asset_materialization
    assert materialization.partition == partition
    return materialization.metadata


def test_stages_run_in_the_server_with_bit_identical_results(served, tmp_path):
    from traitflow.model.loading import MODEL_CACHE

    loads = MODEL_CACHE.loads
    # The toy demo fixture materialized these locally; now the same stages, forced, through the server.
    summary, instance = materialize_into(served["root"], tmp_path / "via_server", ["generation", "extraction"])
    assert "extraction" in summary
    assert MODEL_CACHE.loads == loads, "no model was loaded in this process: the server did the model work"
    meta = metadata_of(instance, "activations", PARTITION)
    assert meta["model_server"].value == find_server(served["root"]).url
    assert any("stage extraction.run_activations" in line for line in served["log"])
    here, there = served["root"] / "experiments", tmp_path / "via_server"
    name = "responses.json"
    assert artifact(there, "responses", "toy/optimism", name).read_bytes() == artifact(here, "responses", "toy/optimism", name).read_bytes()
    for asset in ("activations", "vectors"):
        assert_same_tensors(artifact(there, asset, "toy/optimism", f"{asset}.safetensors"),
                            artifact(here, asset, "toy/optimism", f"{asset}.safetensors"))


def assert_same_tensors(a: Path, b: Path) -> None:
    """Every tensor equal bit for bit, and the same metadata (safetensors orders its header per process)."""
    from safetensors import safe_open

    with safe_open(a, "pt") as fa, safe_open(b, "pt") as fb:
        assert fa.metadata() == fb.metadata() and sorted(fa.keys()) == sorted(fb.keys())
        for key in fa.keys():
            ta, tb = fa.get_tensor(key), fb.get_tensor(key)
            assert ta.dtype == tb.dtype and torch.equal(ta.view(torch.uint8), tb.view(torch.uint8)), key


def test_without_a_server_or_with_no_server_set_stages_load_locally(served, tmp_path, monkeypatch):
    assert find_server(served["root"]) is not None
    monkeypatch.setenv("TRAITFLOW_NO_SERVER", "1")
    assert find_server(served["root"]) is None
    store = copy_store(served["root"], tmp_path / "local", ("activations", "toy/optimism", "activations.safetensors"))
    summary, instance = materialize_into(served["root"], store, ["activations"], TRAITFLOW_NO_SERVER="1")
    assert "model_server" not in metadata_of(instance, "activations", PARTITION)
    assert artifact(store, "activations", "toy/optimism", "activations.safetensors").exists()
    assert find_server(tmp_path) is None  # no discovery file there


def test_a_variant_the_server_does_not_hold_loads_locally(served, tmp_path):
    """The server holds chat only: the pessimist's projections fall back here, chat's run there."""
    summary, instance = materialize_into(served["root"], copy_store(served["root"], tmp_path / "mixed"), ["projections"])
    records = instance.fetch_materializations(dg.AssetKey(["demo", "projections"]), limit=10).records
    by_partition = {r.partition_key: r.asset_materialization.metadata for r in records}
    assert "model_server" in by_partition["toy/general|chat"]
    assert "model_server" not in by_partition["toy/general|pessimist"]
    logs = [e.user_message for e in instance.all_logs(records[0].run_id)]
    assert any("pessimist" in m and "is not loaded here" in m and "running run_projections here" in m for m in logs)


def test_dagster_asset_materialize_uses_the_server(served, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    store = copy_store(served["root"], tmp_path / "cli", ("activations", "toy/optimism", "activations.safetensors"))
    served_before = sum("stage extraction.run_activations" in line for line in served["log"])
    env = dict(os.environ, TRAITFLOW_ROOT=str(served["root"]), DAGSTER_HOME=str(home), TRAITFLOW_STORAGE=str(store))
    env.pop("TRAITFLOW_NO_SERVER", None)
    done = subprocess.run([str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "definitions",
                           "--select", "demo/activations", "--partition", PARTITION], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_tensors(artifact(store, "activations", "toy/optimism", "activations.safetensors"),
                        artifact(served["root"] / "experiments", "activations", "toy/optimism", "activations.safetensors"))
    time.sleep(0.5)  # the server's "done" line is printed after the answer
    assert sum("stage extraction.run_activations" in line for line in served["log"]) == served_before + 2  # begun, done


def test_edited_specs_are_not_run_by_a_server_that_read_other_ones(served, tmp_path):
    """The client's experiment (as parsed) must equal the server's reading of the files now."""
    project = load_project(served["root"], experiments=["demo"])
    exp = project.experiments["demo"]
    edited = exp.spec.model_copy(update={"extraction": exp.spec.extraction.model_copy(update={"batch_size": 3})})
    from traitflow.server.client import run_stage
    from traitflow.stages.context import StageContext
    from traitflow.stages.extraction import run_activations

    said: list[str] = []
    ctx = StageContext.create(project, "demo", storage_uri=str(copy_store(served["root"], tmp_path / "edited")), log=said.append)
    ctx.experiment = dataclasses.replace(exp, spec=edited)
    ctx.server = find_server(served["root"])
    output, where = run_stage(ctx, run_activations, "activations", {"trait": "toy/optimism", "variant": "chat"})
    assert where is None and output.path.exists()
    assert any("specs on disk differ" in line for line in said)


# ---------------------------------------------------------------------------------- in-process server
@pytest.fixture(scope="module")
def inproc(toy_demo):
    """The same server code in a thread of this process (the queue can be held from the test)."""
    state = ModelServer.start(toy_demo["root"], ["chat"], max_queue=0, log=lambda line: None)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state, lambda line: None))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    client = ServerClient(f"http://127.0.0.1:{httpd.server_address[1]}", state.token, os.getpid(), state.variants)
    yield state, client, toy_demo["root"]
    httpd.shutdown()
    httpd.server_close()


def test_busy_server_answers_with_what_runs_and_how_many_wait(inproc):
    state, client, _ = inproc
    with state.queue.slot("stage extraction.run_responses toy/refusal|chat"):
        health = get_health(client.url)
        assert health["running"].startswith("stage extraction.run_responses") and health["max_queue"] == 0
        with pytest.raises(TraitflowError, match=r"busy: running stage extraction.run_responses toy/refusal\|chat, "
                                                 r"0 waiting \(the queue holds 0\); retry later, or set TRAITFLOW_NO_SERVER=1"):
            list(client.generate("demo", "chat", "Tell me about chess."))
    assert state.queue.running is None


def test_the_queue_runs_one_task_at_a_time_and_lets_the_others_wait():
    from traitflow.server.service import Busy, ModelQueue

    queue, order, inside = ModelQueue(max_queue=2), [], []

    def task(name: str) -> None:
        with queue.slot(name):
            inside.append(name)
            assert len(inside) == 1, "two model tasks at once"
            time.sleep(0.05)
            order.append(name)
            inside.remove(name)

    with queue.slot("first"):
        threads = [threading.Thread(target=task, args=(f"t{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        while queue.queued < 2:
            time.sleep(0.01)
        with pytest.raises(Busy):
            with queue.slot("one too many"):
                pass
    for t in threads:
        t.join()
    assert sorted(order) == ["t0", "t1"] and queue.queued == 0 and queue.running is None


def test_requests_without_the_token_are_refused(inproc):
    """A caller without the token gets nothing done (a client would then run its stage itself)."""
    from traitflow.server.client import ServerUnavailable

    _, client, _ = inproc
    intruder = ServerClient(client.url, "not-the-token", client.pid, client.variants)
    with pytest.raises(ServerUnavailable, match="wrong or missing token"):
        list(intruder.generate("demo", "chat", "hi"))


@pytest.mark.parametrize("headers,body,status", [
    ({"Content-Length": "abc"}, b"", 400),
    ({"Content-Length": "-1"}, b"", 400),
    ({}, b"[1, 2]", 400),
    ({}, b"not json", 400),
    ({"Authorization": "Bearer t\u00e9st"}, b"{}", 401),
])
def test_malformed_requests_get_an_answer_and_the_server_goes_on(inproc, headers, body, status):
    import http.client

    state, client, _ = inproc
    conn = client._connect()
    conn.putrequest("POST", "/generate")
    sent = {"Authorization": f"Bearer {state.token}", "Content-Length": str(len(body)), **headers}
    for key, value in sent.items():
        conn.putheader(key, value.encode("latin-1", "replace") if key == "Authorization" else value)
    conn.endheaders(body)
    try:
        assert conn.getresponse().status == status
    except http.client.HTTPException as exc:
        pytest.fail(f"no answer: {exc}")
    finally:
        conn.close()
    assert get_health(client.url)["ok"]


def test_unknown_variant_to_capture_is_a_400(inproc):
    _, client, _ = inproc
    with pytest.raises(TraitflowError, match="unknown variant 'nope'"):
        client.capture("demo", "nope", [[[1, 2], [3]]], [1])


def test_a_copied_project_does_not_use_the_original_server(served, tmp_path):
    """`cp -r` of a project while its server runs copies .traitflow/server.json too."""
    copy = tmp_path / "copy"
    (copy / DISCOVERY_FILE).parent.mkdir(parents=True)
    shutil.copy(served["root"] / DISCOVERY_FILE, copy / DISCOVERY_FILE)
    assert find_server(served["root"]) is not None and find_server(copy) is None


def test_a_second_server_on_the_same_root_is_refused_before_loading(served):
    done = subprocess.run([TRAITFLOW, "serve", "--root", str(served["root"]), "--variants", "chat", "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "loaded" not in done.stdout
    assert done.stderr.startswith(f"error: a model server already serves {served['root']}: PID {served['proc'].pid}")


def test_generate_streams_what_traitflow_monitor_prints(inproc, capsys):
    from traitflow.monitor.live import run_monitor

    _, client, root = inproc
    steer = ["toy/optimism:-100"]
    local = run_monitor(root, "demo", "chat", "Tell me about chess.", steer=steer, max_new_tokens=12, colour=False)
    capsys.readouterr()
    events = list(client.generate("demo", "chat", "Tell me about chess.", steer=steer, max_new_tokens=12))
    monitors, tokens, done = events[0]["monitors"], [e for e in events if "token" in e], events[-1]["done"]
    assert [m["trait"] for m in monitors] == ["toy/formality", "toy/optimism", "toy/refusal"]
    assert "steer toy/optimism" in events[0]["steering"][0]
    assert done["response_ids"] == local.response_ids and done["text"] == local.text
    assert "".join(t["token"] for t in tokens) == local.text
    assert torch.equal(torch.tensor([t["scores"] for t in tokens]), local.scores)


def test_capture_equals_capturing_here(inproc):
    from traitflow.model.hooks import capture_pooled
    from traitflow.model.loading import MODEL_CACHE

    _, client, root = inproc
    project = load_project(root, experiments=["demo"])
    loaded = MODEL_CACHE.get(project.experiments["demo"].variants["chat"], root)
    record = json.loads(artifact(root / "experiments", "responses", "toy/optimism", "responses.json").read_text())
    sequences = [[it["prompt_ids"], it["response_ids"]] for it in record["items"][:5]]
    remote = client.capture("demo", "chat", sequences, [1, 3], positions=["response[:]", "prompt[-1]"])
    here = capture_pooled(loaded, [tuple(s) for s in sequences], [1, 3], ["response[:]", "prompt[-1]"])
    assert set(remote) == {"response[:]", "prompt[-1]"}
    for position, tensor in here.items():
        assert torch.equal(remote[position], tensor), position


# ---------------------------------------------------------------------------------- faults
def test_a_server_killed_mid_stage_means_the_stage_runs_here(toy_demo, tmp_path):
    """SIGKILL while it runs a stage: the client sees the answer end early and runs the stage itself."""
    from traitflow.server.client import run_stage
    from traitflow.stages.context import StageContext
    from traitflow.stages.steering import run_steering_stage

    root = tmp_path / "proj"  # its own root: the discovery file of the module's server stays as it is
    for folder in ("specs", "datasets"):
        shutil.copytree(toy_demo["root"] / folder, root / folder)
    store = copy_store(toy_demo["root"], tmp_path / "store")
    shutil.rmtree(store / "demo/steering/toy/refusal")
    proc, lines = start_server(root, "chat")
    try:
        project = load_project(root, experiments=["demo"])
        said: list[str] = []

        def log(line: str) -> None:
            said.append(line)
            if line.startswith("baseline") and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the stage is under way in the server

        ctx = StageContext.create(project, "demo", storage_uri=str(store), log=log)
        ctx.server = find_server(root)
        assert ctx.server is not None
        output, where = run_stage(ctx, run_steering_stage, "steering", {"trait": "toy/refusal", "variant": "chat"})
    finally:
        stop(proc, signal.SIGKILL)
    assert where is None and output.path.exists()
    assert any("stopped" in line and "running run_steering_stage here" in line for line in said)
    # The killed server left its discovery file; the next client finds nobody behind it.
    assert (root / DISCOVERY_FILE).exists() and find_server(root) is None
    (root / DISCOVERY_FILE).unlink()


@pytest.mark.parametrize("args,message", [
    (["--variants", "nope"], "--variants: 'nope' is neither a model spec nor a variant"),
    (["--variants", "chat", "--port", "70000"], "--port must be between 0 and 65535"),
    (["--variants", "chat", "--max-queue", "-1"], "--max-queue must be 0 or more"),
])
def test_serve_user_mistakes_are_one_line(args, message):
    done = subprocess.run([TRAITFLOW, "serve", "--root", str(REPO), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr and "Traceback" not in done.stderr
