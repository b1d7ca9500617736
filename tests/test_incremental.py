"""Incremental by default: `traitflow run` materializes only partitions that are missing or stale,
following a change down the whole chain; `--force` re-does everything."""

import os
import shutil

import dagster as dg
import pytest

from assets.runner import run_experiment
from traitflow.specs.loader import load_project


@pytest.fixture()
def copy_of_slice(project_root, materialized, tmp_path):
    """The materialized slice (experiment t) and the Dagster instance that recorded it, copied."""
    root, home = tmp_path / "proj", tmp_path / "home"
    shutil.copytree(project_root, root)
    shutil.copytree(materialized["home"], home)
    return root, dg.DagsterInstance.from_config(str(home))


def runs_by_asset(instance: dg.DagsterInstance, since: int) -> dict[str, set[str]]:
    """Asset name -> partition keys materialized by runs after the first `since` runs."""
    out: dict[str, set[str]] = {}
    for record in instance.get_run_records()[: max(0, len(instance.get_run_records()) - since)]:
        for event in instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            materialization = event.dagster_event.event_specific_data.materialization
            out.setdefault(materialization.asset_key.path[-1], set()).add(materialization.partition)
    return out


def test_a_second_run_with_nothing_changed_does_nothing(copy_of_slice, capsys):
    root, instance = copy_of_slice
    before = len(instance.get_run_records())
    summary = run_experiment(load_project(root), "t", stages=["all"], instance=instance)
    assert summary.startswith("materialized 0 run(s)") and "up-to-date partition(s) skipped" in summary
    assert runs_by_asset(instance, before) == {}
    assert "up to date for" in capsys.readouterr().out


def test_editing_one_trait_reruns_exactly_its_chain(copy_of_slice):
    root, instance = copy_of_slice
    path = root / "datasets/traits/starter/optimism/positive.jsonl"
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace('"prompt": "', '"prompt": "Honestly, ', 1)
    path.write_text("\n".join(lines) + "\n")
    before = len(instance.get_run_records())
    run_experiment(load_project(root), "t", stages=["all"], instance=instance)
    done = runs_by_asset(instance, before)
    chain = ("responses", "vetting", "activations", "vectors", "extraction_eval", "logit_lens", "steering")
    for name in chain:
        assert done[name] == {"starter/optimism|chat"}, name  # the formal trait's partitions stay as they were
    assert done["best_vector"] == {"starter/optimism"} and done["summary"] == {None}
    # Every trait's vectors feed projections and comparisons, so they re-run; the replies they read do not.
    assert done["projections"] == {"starter/general|chat", "starter/general|plain"}
    assert done["variant_diff"] == {"chat_vs_plain/starter/general"}
    assert "inference_responses" not in done and "calibration" not in done
    # And now everything is fresh again.
    again = len(instance.get_run_records())
    run_experiment(load_project(root), "t", stages=["all"], instance=instance)
    assert runs_by_asset(instance, again) == {}


def test_force_redoes_every_selected_partition(copy_of_slice):
    root, instance = copy_of_slice
    before = len(instance.get_run_records())
    run_experiment(load_project(root), "t", stages=["extraction"], instance=instance, force=True)
    done = runs_by_asset(instance, before)
    assert done["responses"] == {"starter/optimism|chat", "starter/formal|chat"}
    assert done["logit_lens"] == {"starter/optimism|chat", "starter/formal|chat"}


def test_gpu_pool_slots_from_the_environment(copy_of_slice, monkeypatch):
    from assets.runner import configure_gpu_pool
    from traitflow.errors import TraitflowError

    _, instance = copy_of_slice
    monkeypatch.delenv("TRAITFLOW_GPU_SLOTS", raising=False)
    assert configure_gpu_pool(instance) is None  # the instance's own dagster.yaml decides
    monkeypatch.setenv("TRAITFLOW_GPU_SLOTS", "1")
    assert configure_gpu_pool(instance) == 1
    assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 1
    monkeypatch.setenv("TRAITFLOW_GPU_SLOTS", "3")
    configure_gpu_pool(instance)
    assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 3
    monkeypatch.setenv("TRAITFLOW_GPU_SLOTS", "many")
    with pytest.raises(TraitflowError, match="TRAITFLOW_GPU_SLOTS"):
        configure_gpu_pool(instance)


def test_loading_definitions_prints_no_warnings():
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", "import definitions"], cwd=repo, capture_output=True, text=True,
                            env={**os.environ, "TRAITFLOW_ROOT": str(repo)}, timeout=120)
    assert result.returncode == 0 and "Warning" not in result.stderr, result.stderr[-2000:]


def test_dataset_sensor_runs_only_for_experiments_that_have_run(copy_of_slice, monkeypatch):
    from assets import build_defs

    monkeypatch.delenv("TRAITFLOW_STORAGE", raising=False)
    root, _ = copy_of_slice

    def status() -> dg.DefaultSensorStatus:
        return build_defs(load_project(root)).resolve_sensor_def("t_dataset_changes").default_status

    assert status() == dg.DefaultSensorStatus.RUNNING  # the slice has its artifacts
    shutil.rmtree(root / "experiments" / "t")
    assert status() == dg.DefaultSensorStatus.STOPPED


def test_bad_storage_fails_before_any_run(copy_of_slice, monkeypatch, capsys, tmp_path):
    from traitflow.cli import main

    root, instance = copy_of_slice
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TRAITFLOW_STORAGE", raising=False)
    before = len(instance.get_run_records())
    # An S3 endpoint nobody answers on (and credentials, so boto3 asks no metadata service).
    for key, value in {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    for storage, message in (("ftp://bucket/x", "error: storage 'ftp://bucket/x': expected a local folder or s3://bucket/prefix"),
                             ("s3://bucket/x", "error: storage s3://bucket/x: cannot open the bucket at http://127.0.0.1:9: ")):
        try:
            assert main(["run", "t", "--root", str(root), "--storage", storage]) == 2
        finally:
            os.environ.pop("TRAITFLOW_STORAGE", None)  # `run --storage` sets it for the process's resources
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(message), err
    assert len(instance.get_run_records()) == before  # nothing was observed or run


def test_editing_one_variant_reruns_only_its_partitions(copy_of_slice):
    """Each variant is a source versioned by its spec and weights: a change to `plain` re-runs what
    reads `plain` (its replies, calibration, projections, the chat-vs-plain comparison), not chat's."""
    root, instance = copy_of_slice
    spec = root / "specs" / "experiments" / "t.yaml"
    spec.write_text(spec.read_text().replace("plain: {model: models/llama, device: cpu, chat_template: false}",
                                             "plain: {model: models/llama, device: cpu, chat_template: false, dtype: float32}"))
    before = len(instance.get_run_records())
    run_experiment(load_project(root), "t", stages=["all"], instance=instance)
    assert runs_by_asset(instance, before) == {
        "inference_responses": {"starter/general|plain"}, "calibration": {"plain"},
        "projections": {"starter/general|plain"}, "variant_diff": {"chat_vs_plain/starter/general"},
        "summary": {None}}  # unpartitioned: it reads the comparison


def test_model_version_follows_the_weights(tmp_path):
    """A variant's version is its content: retraining an adapter in place (same file names and
    sizes, new bytes) changes it, so does a config edit; touching or copying the files (a fresh
    clone) does not; a hub id is versioned by its revision."""
    from traitflow.model.fingerprint import model_version
    from traitflow.specs.models import ModelSpec

    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(b"\0" * (2 << 20))
    spec = ModelSpec(model="some-org/base", lora="lora")
    first = model_version(spec, tmp_path)
    assert (tmp_path / ".traitflow" / "file_hashes.json").exists()  # the content hashes, by file stat
    os.utime(weights, ns=(1, 1))  # new times, same bytes: a copy or a fresh clone
    assert model_version(spec, tmp_path) == first
    copy = tmp_path / "copy"
    shutil.copytree(adapter, copy / "lora")
    assert model_version(spec, copy) == first  # another place, no cache yet: the same content
    weights.write_bytes(b"\1" * (2 << 20))  # retrained in place
    second = model_version(spec, tmp_path)
    assert second != first
    (adapter / "adapter_config.json").write_text('{"r": 16}')
    assert model_version(spec, tmp_path) != second
    assert model_version(spec.model_copy(update={"revision": "abc123"}), tmp_path) != model_version(spec, tmp_path)


def requested(result) -> dict[str, set[str]]:
    """Asset name -> partitions an automation evaluation requested."""
    out: dict[str, set[str]] = {}
    for request in result.results:
        key = request.key
        partitions = result.get_requested_partitions(key) if isinstance(key, dg.AssetKey) else set()
        if partitions:
            out[key.path[-1]] = set(partitions)
    return out


def edit_optimism(root) -> None:
    path = root / "datasets/traits/starter/optimism/positive.jsonl"
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace('"prompt": "', '"prompt": "Honestly, ', 1)
    path.write_text("\n".join(lines) + "\n")


def test_on_change_materialize_requests_exactly_the_edited_traits_chain(copy_of_slice):
    """`automation: {on_change: materialize}`: once the dataset sensor has observed an edited
    trait, Dagster's automation requests that trait's chain, and nothing of the other trait."""
    from assets import build_defs

    root, instance = copy_of_slice
    spec = root / "specs" / "experiments" / "t.yaml"
    spec.write_text(spec.read_text() + "automation: {on_change: materialize}\n")
    defs = build_defs(load_project(root))
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert requested(first) == {}  # everything is up to date: no GPU work starts
    edit_optimism(root)
    defs = build_defs(load_project(root))
    defs.resolve_job_def("t_observe_trait_datasets").execute_in_process(instance=instance)  # what the sensor does
    done = automate(defs, instance, first.cursor)
    chain = ("responses", "vetting", "activations", "vectors", "extraction_eval", "logit_lens", "steering")
    assert done == {**{name: {"starter/optimism|chat"} for name in chain}, "best_vector": {"starter/optimism"},
                    "projections": {"starter/general|chat", "starter/general|plain"},
                    "variant_diff": {"chat_vs_plain/starter/general"}, "summary": {None}}


def automate(defs, instance, cursor, experiment: str = "t") -> dict[str, set[str]]:
    """Tick by tick, run what each tick requests (one run per partition key, as the automation
    sensor launches them) until nothing more is requested; what ran."""
    done: dict[str, set[str]] = {}
    job = defs.resolve_implicit_global_asset_job_def()
    for _tick in range(8):
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        cursor, wanted = result.cursor, requested(result)
        if not wanted:
            break
        by_partition: dict[str, list[dg.AssetKey]] = {}
        for name, partitions in wanted.items():
            for partition in partitions:
                by_partition.setdefault(partition, []).append(dg.AssetKey([experiment, name]))
                done.setdefault(name, set()).add(partition)
        for partition, keys in by_partition.items():
            job.execute_in_process(asset_selection=keys, partition_key=partition, instance=instance)
    return done


def test_default_automation_keeps_gpu_work_manual(copy_of_slice):
    from assets import build_defs

    root, instance = copy_of_slice
    defs = build_defs(load_project(root))
    graph = defs.resolve_asset_graph()
    assert all(graph.get(key).automation_condition is None for key in graph.get_all_asset_keys())
    edit_optimism(root)
    defs.resolve_job_def("t_observe_trait_datasets").execute_in_process(instance=instance)
    assert requested(dg.evaluate_automation_conditions(defs=defs, instance=instance)) == {}


def test_schedule_reruns_what_went_stale_at_its_tick(copy_of_slice):
    """`automation: {schedule: "0 3 * * *"}`: nothing runs between ticks; at the tick, the
    partitions that went stale since they last ran do."""
    import datetime

    from assets import build_defs

    root, instance = copy_of_slice
    spec = root / "specs" / "experiments" / "t.yaml"
    spec.write_text(spec.read_text() + 'automation: {schedule: "0 3 * * *"}\n')
    defs = build_defs(load_project(root))
    day = datetime.datetime(2030, 1, 1, 1, 0, tzinfo=datetime.UTC)
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=day)
    edit_optimism(root)
    defs = build_defs(load_project(root))
    defs.resolve_job_def("t_observe_trait_datasets").execute_in_process(instance=instance)
    before_tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor,
                                                    evaluation_time=day + datetime.timedelta(hours=1))
    assert requested(before_tick) == {}
    at_tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before_tick.cursor,
                                                evaluation_time=day + datetime.timedelta(hours=2, minutes=1))
    assert requested(at_tick)["responses"] == {"starter/optimism|chat"}
    assert all("starter/formal" not in p for parts in requested(at_tick).values() for p in parts)


def test_a_bad_sensor_interval_is_logged_not_fatal():
    """TRAITFLOW_SENSOR_INTERVAL_S is read while the code location loads: a bad value must not
    take it down. It is named on stderr, and the default holds."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import assets.automation as a; print(a.SENSOR_INTERVAL_S)"],
                          env=dict(os.environ, TRAITFLOW_SENSOR_INTERVAL_S="ten"), capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0 and done.stdout.strip() == "30"
    assert "TRAITFLOW_SENSOR_INTERVAL_S must be a whole number" in done.stderr and "Traceback" not in done.stderr


def test_without_dagster_home_the_instance_lives_beside_the_artifacts(copy_of_slice, monkeypatch, tmp_path):
    """A plain `traitflow run` (no DAGSTER_HOME) records its runs in `<storage>/.dagster`, so the
    next run is incremental too, and another storage folder gets its own instance."""
    root, _ = copy_of_slice
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("TRAITFLOW_STORAGE", str(tmp_path / "store"))
    first = run_experiment(load_project(root), "t", stages=["generation"])
    assert first.startswith("materialized 1 run(s)")
    assert (tmp_path / "store" / ".dagster" / "dagster.yaml").exists()
    assert run_experiment(load_project(root), "t", stages=["generation"]).startswith("materialized 0 run(s)")
    monkeypatch.setenv("TRAITFLOW_STORAGE", str(tmp_path / "elsewhere"))
    assert run_experiment(load_project(root), "t", stages=["generation"]).startswith("materialized 1 run(s)")


def test_an_unreadable_model_file_is_one_line(tmp_path):
    """A broken link in a model folder stops versioning with a one-line error naming the file."""
    from traitflow.errors import TraitflowError
    from traitflow.model.fingerprint import model_version
    from traitflow.specs.models import ModelSpec

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "model" / "weights.safetensors").symlink_to(tmp_path / "gone")
    with pytest.raises(TraitflowError, match=r"variant chat: cannot read .*weights\.safetensors") as error:
        model_version(ModelSpec(name="chat", model="model"), tmp_path)
    assert "\n" not in str(error.value)
