"""Running on a cluster (docs/deploy.md), checked without one, and the steps' retry policy.

- deploy/k8s/dagster.yaml passes Dagster's instance schema and the run launcher's and log
  manager's own; deploy/k8s/workspace.yaml loads the code location it names;
- with TRAITFLOW_EXECUTOR=k8s, definitions.py runs its jobs on dagster-k8s's k8s_job_executor,
  and the Kubernetes Job a GPU step would get asks for one GPU (a CPU step's for none);
- every asset step of the asset table has a RetryPolicy (TRAITFLOW_STEP_RETRIES): a judge that
  fails the first time is retried and succeeds, under `traitflow run` (in-process) and under the
  multiprocess executor of `dagster dev`; a user error fails at once, without retries; Ctrl-C on
  `traitflow run` stops instead of retrying.
"""

import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from assets import build_defs
from assets.common import table_args
from assets.runner import TAG_PID, run_experiment
from tests.judge_server import Behaviour, JudgeServer, judge_server_fixture  # noqa: F401 - provides `judge_server`
from traitflow.errors import TraitflowError, TransientError
from traitflow.graph import ASSETS, row
from traitflow.specs.loader import load_project
from traitflow.stages.context import StageOutput

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEPLOY = REPO / "deploy" / "k8s"
RETRY = dg.RetryPolicy(max_retries=2, delay=1, backoff=dg.Backoff.EXPONENTIAL)
K8S_TAG = "dagster-k8s/config"
# What the pods of deploy/k8s/dagster.yaml get from the ConfigMap `traitflow-env` and the Secrets.
POD_ENV = {"DAGSTER_PG_HOST": "postgres", "DAGSTER_PG_USER": "dagster", "DAGSTER_PG_PASSWORD": "not-a-password",
           "DAGSTER_PG_DB": "dagster", "TRAITFLOW_IMAGE": "registry.example/traitflow:1", "TRAITFLOW_NAMESPACE": "traitflow",
           "TRAITFLOW_LOG_BUCKET": "traitflow-logs"}


LIFECYCLE = {"STEP_START", "STEP_UP_FOR_RETRY", "STEP_RESTARTED", "STEP_SUCCESS", "STEP_FAILURE"}


def _events(instance: dg.DagsterInstance, run_id: str, step: str) -> list[str]:
    """The step's start, retries and end, in order."""
    return [e.dagster_event.event_type_value for e in instance.all_logs(run_id)
            if e.dagster_event is not None and e.step_key == step and e.dagster_event.event_type_value in LIFECYCLE]


# --------------------------------------------------------------------------- the retry policy
def test_retry_policy_and_gpu_request_on_exactly_the_asset_table_steps():
    """Every step built from the asset table (all of them read or write the store) retries; the
    source assets (dataset hashes) do not. GPU rows, and only they, ask dagster-k8s for a GPU."""
    defs = build_defs(load_project(REPO, strict=False))
    table = {r.name for r in ASSETS}
    built = set()
    for asset in defs.assets:
        if not isinstance(asset, dg.AssetsDefinition) or not asset.is_executable or asset.is_observable:
            continue
        name = asset.key.path[-1]
        assert name in table, asset.key
        built.add(name)
        assert asset.op.retry_policy == RETRY, asset.key
        tag = asset.op.tags.get(K8S_TAG)
        assert (tag is not None) == row(name).gpu, asset.key
        if tag is not None:
            assert yaml.safe_load(tag) == {"container_config": {"resources": {"limits": {"nvidia.com/gpu": 1}}}}
    assert {"responses", "vetting", "activations", "vectors", "steering", "best_vector", "projections"} <= built
    sources = [a for a in defs.assets if isinstance(a, dg.SourceAsset) or getattr(a, "is_observable", False)]
    assert sources and all(getattr(getattr(s, "op", None), "retry_policy", None) is None for s in sources
                           if isinstance(s, dg.AssetsDefinition))


@pytest.mark.parametrize("text, retries", [("0", None), ("5", 5), (" 1 ", 1)])
def test_step_retries_from_the_environment(monkeypatch, text, retries):
    exp = load_project(REPO, strict=False).experiments["demo"]
    monkeypatch.setenv("TRAITFLOW_STEP_RETRIES", text)
    policy = table_args(exp, "vetting").get("retry_policy")
    assert (policy and policy.max_retries) == retries


@pytest.mark.parametrize("text", ["", "-1", "1.5", "two", "²"])
def test_a_bad_step_retries_value_is_one_line_naming_the_variable(monkeypatch, text):
    exp = load_project(REPO, strict=False).experiments["demo"]
    monkeypatch.setenv("TRAITFLOW_STEP_RETRIES", text)
    with pytest.raises(TraitflowError, match=r"^TRAITFLOW_STEP_RETRIES must be a whole number") as caught:
        table_args(exp, "vetting")
    assert "\n" not in str(caught.value)


def test_which_store_errors_are_transient(tmp_path, monkeypatch):
    """Real errors of the store: an S3 endpoint that does not answer is retried; missing
    credentials and a missing artifact are the user's to fix. (The judge's: end to end below.)"""
    from traitflow.store import experiment_store

    monkeypatch.setenv("TRAITFLOW_S3_TIMEOUT_S", "1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with pytest.raises(TraitflowError) as down:
        experiment_store(None, tmp_path, "s3://results/x").check()
    assert isinstance(down.value, TransientError), str(down.value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:10")  # a client of its own, without credentials
    with pytest.raises(TraitflowError, match="no S3 credentials") as refused:
        experiment_store(None, tmp_path, "s3://results/x").check()
    assert not isinstance(refused.value, TransientError)
    with pytest.raises(TraitflowError, match="artifact missing") as missing:
        experiment_store(None, tmp_path, str(tmp_path / "store")).read_bytes(tmp_path / "store" / "responses.json")
    assert not isinstance(missing.value, TransientError)


EXPERIMENT = """\
name: llmjudge
variants:
  chat: toy-chat
traits: [toy/optimism]
judge: {{model: openai/test-judge, api_base: "{url}", max_retries: 0, max_failure_rate: 0, timeout_s: 10}}
extraction:
  position: "prompt[-1]"
  methods: [mean_diff]
  max_new_tokens: 8
  vetting: {{enabled: true, min_per_side: 1}}
"""
PARTITION = "toy/optimism|chat"


@pytest.fixture()
def llm_project(tmp_path, judge_server, monkeypatch) -> Path:
    """The toy model with an LLM judge on the test server; no request retries of the judge's own,
    and any failed request fails the batch, so one HTTP 500 fails the vetting step."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.delenv("TRAITFLOW_STEP_RETRIES", raising=False)
    monkeypatch.delenv("TRAITFLOW_STORAGE", raising=False)
    root = tmp_path / "proj"
    shutil.copytree(REPO / "specs" / "models", root / "specs" / "models")
    shutil.copytree(REPO / "datasets" / "models", root / "datasets" / "models")
    shutil.copytree(REPO / "datasets" / "traits" / "toy" / "optimism", root / "datasets" / "traits" / "toy" / "optimism")
    (root / "specs" / "experiments").mkdir(parents=True)
    (root / "specs" / "experiments" / "llmjudge.yaml").write_text(EXPERIMENT.format(url=judge_server.url))
    return root


def _instance(home: Path) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.from_config(str(home))


def test_a_judge_that_fails_once_is_retried_and_the_step_succeeds(llm_project, judge_server, tmp_path):
    """The judge answers HTTP 500 to its first request: the partition is tried again within its
    step (a transient error; the step itself does not fail, so a backfill's other partitions are
    not redone), and the second try succeeds; under `traitflow run` (in-process execution) and
    under `dagster asset materialize` (the multiprocess executor, as `dagster dev` runs)."""
    home = tmp_path / "home"
    instance = _instance(home)
    vetting = llm_project / "experiments/llmjudge/vetting/toy/optimism/chat/vetting.json"
    try:
        judge_server.default = Behaviour(distribution={"50": 1.0}, fail_first=1)
        run_experiment(load_project(llm_project), "llmjudge", stages=["generation"], instance=instance)
        assert vetting.exists()
        run = next(r for r in instance.get_runs() if dg.AssetKey(["llmjudge", "vetting"]) in (r.asset_selection or ()))
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert _events(instance, run.run_id, "llmjudge__vetting") == ["STEP_START", "STEP_SUCCESS"]
        warned = [e.user_message for e in instance.all_logs(run.run_id) if "trying again in 1 s (1/2" in (e.user_message or "")]
        assert len(warned) == 1 and "requests failed (HTTP 500" in warned[0]
        assert judge_server.default.served > 1  # the 500, then the answers of the second try

        # Again through `dagster asset materialize` (the multiprocess executor), from another judge
        # server: its endpoint is part of the cache key, so no cached reply hides the failure.
        vetting.unlink()
        spec = llm_project / "specs" / "experiments" / "llmjudge.yaml"
        with JudgeServer() as other:
            other.default = Behaviour(distribution={"50": 1.0}, fail_first=1)
            spec.write_text(spec.read_text().replace(judge_server.url, other.url))
            env = {**os.environ, "TRAITFLOW_ROOT": str(llm_project), "DAGSTER_HOME": str(home)}
            env.pop("TRAITFLOW_EXECUTOR", None)
            done = subprocess.run([str(BIN / "dagster"), "asset", "materialize", "-m", "definitions", "--select",
                                   "llmjudge/vetting", "--partition", PARTITION], cwd=REPO, env=env, capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-3000:]
            assert other.default.served > 1
        assert vetting.exists()
        cli = instance.get_runs(limit=1)[0]
        assert cli.run_id != run.run_id and cli.status == dg.DagsterRunStatus.SUCCESS
        messages = " ".join(e.user_message for e in instance.all_logs(cli.run_id))
        assert "multiprocess executor" in messages
        assert _events(instance, cli.run_id, "llmjudge__vetting") == ["STEP_START", "STEP_SUCCESS"]
        assert "trying again in 1 s (1/2, TRAITFLOW_STEP_RETRIES)" in messages
    finally:
        instance.dispose()


def test_a_user_error_fails_at_once_without_retries(llm_project):
    """Vetting without its upstream responses: a missing artifact is the user's to fix; the step
    fails on its first try, with the one-line message, and is not retried."""
    instance = dg.DagsterInstance.ephemeral()
    with pytest.raises(TraitflowError, match=r"failed at generation .*llmjudge__vetting: .*responses.json: artifact missing"):
        run_experiment(load_project(llm_project), "llmjudge", stages=["vetting"], instance=instance)
    run = instance.get_runs(limit=1)[0]
    assert _events(instance, run.run_id, "llmjudge__vetting") == ["STEP_START", "STEP_FAILURE"]
    # Not tried again within the step either (that is how a transient error is retried).
    assert not [e for e in instance.all_logs(run.run_id) if "trying again" in (e.user_message or "")]


def test_ctrl_c_stops_traitflow_run_but_an_interrupted_step_elsewhere_is_retried(llm_project, monkeypatch):
    """A real SIGINT during a step. In the process of `traitflow run` (its runs carry our PID) the
    step fails without retries, as Ctrl-C did before there were any; in a run of no such process
    (a step pod told to stop: preemption) Dagster retries the step, and the retry succeeds."""
    import assets.common

    calls = []

    def interrupted_once(ctx, stage, asset, dims):
        calls.append(asset)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)  # the signal interrupts this
            raise AssertionError("SIGINT did not interrupt the step")
        path = llm_project / "done.json"
        path.write_text("{}")
        return StageOutput(path=path), None

    monkeypatch.setattr(assets.common, "run_stage", interrupted_once)
    job = build_defs(load_project(llm_project)).resolve_implicit_global_asset_job_def()
    vectors = dg.AssetKey(["llmjudge", "vectors"])
    for ours in (True, False):
        calls.clear()
        instance = dg.DagsterInstance.ephemeral()
        tags = {TAG_PID: str(os.getpid())} if ours else {}
        result = job.execute_in_process(asset_selection=[vectors], partition_key=PARTITION, instance=instance,
                                        raise_on_error=False, tags=tags)
        events = _events(instance, result.run_id, "llmjudge__vectors")
        if ours:
            assert not result.success and events == ["STEP_START", "STEP_FAILURE"] and len(calls) == 1
        else:
            assert result.success and events == ["STEP_START", "STEP_UP_FOR_RETRY", "STEP_RESTARTED", "STEP_SUCCESS"]
            assert len(calls) == 2


# --------------------------------------------------------------------------- the cluster's config
def test_the_instance_config_is_valid(monkeypatch):
    """deploy/k8s/dagster.yaml passes Dagster's instance schema (Postgres storage, pools, run
    monitoring), the K8sRunLauncher's and the S3 log manager's own schemas, with the pods'
    environment; the `gpu` pool has a limit."""
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
    from dagster_k8s import K8sRunLauncher

    for name, value in POD_ENV.items():
        monkeypatch.setenv(name, value)
    config, custom_class = dagster_instance_config(str(DEPLOY), "dagster.yaml")
    assert custom_class is None
    assert set(config["storage"]) == {"postgres"}
    assert config["concurrency"]["pools"]["default_limit"] >= 1
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    processed = process_config(K8sRunLauncher.config_type(), launcher["config"])
    assert processed.success, processed.errors
    assert processed.value["job_image"] == POD_ENV["TRAITFLOW_IMAGE"]
    logs = config["compute_logs"]
    assert (logs["module"], logs["class"]) == ("dagster_aws.s3.compute_log_manager", "S3ComputeLogManager")
    assert process_config(S3ComputeLogManager.config_type(), logs["config"]).success


def test_the_workspace_loads_the_code_location(monkeypatch):
    """deploy/k8s/workspace.yaml names definitions.py at the repo root, and Dagster loads the code
    location from it (in a code server of its own, as the webserver and the daemon do)."""
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    [entry] = workspace["load_from"]
    assert (DEPLOY / entry["python_file"]["relative_path"]).resolve() == REPO / "definitions.py"
    assert (DEPLOY / entry["python_file"]["working_directory"]).resolve() == REPO
    env = {**os.environ, "TRAITFLOW_EXECUTOR": "k8s"}
    for name in ("DAGSTER_HOME", "TRAITFLOW_ROOT", "TRAITFLOW_STORAGE"):
        env.pop(name, None)
    done = subprocess.run([str(BIN / "dagster"), "definitions", "validate", "-w", str(DEPLOY / "workspace.yaml")],
                          cwd="/", env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Validation successful for code location traitflow" in done.stdout + done.stderr


def test_definitions_on_the_k8s_executor_give_gpu_steps_a_gpu(monkeypatch, tmp_path):
    """TRAITFLOW_EXECUTOR=k8s: definitions.py's jobs run on dagster-k8s's k8s_job_executor; the
    Kubernetes Job the executor would create for a GPU step (from the run launcher of
    deploy/k8s/dagster.yaml and the step's tags, merged as dagster-k8s merges them) asks for one
    GPU on top of the launcher's requests and gets the secrets as environment; a CPU step's Job
    asks for no GPU. No cluster: the launcher reads a kubeconfig that points nowhere."""
    from dagster._config import process_config
    from dagster._core.execution.api import create_execution_plan
    from dagster_k8s import K8sRunLauncher, k8s_job_executor
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import construct_dagster_k8s_job, get_user_defined_k8s_config

    for name, value in POD_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TRAITFLOW_EXECUTOR", "k8s")
    monkeypatch.delenv("TRAITFLOW_ROOT", raising=False)
    namespace = runpy.run_path(str(REPO / "definitions.py"))
    job = namespace["defs"].resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == k8s_job_executor.name == "k8s"

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "nowhere",
        "clusters": [{"name": "nowhere", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "nobody", "user": {"token": "none"}}],
        "contexts": [{"name": "nowhere", "context": {"cluster": "nowhere", "user": "nobody"}}]}))
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]["config"]
    launcher = K8sRunLauncher(**{**process_config(K8sRunLauncher.config_type(), config).value,
                                 "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)})
    plan = create_execution_plan(job)
    run = dg.DagsterRun(job_name=job.name, run_id="a-run")

    def step_pod(step_key: str):
        context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False).merge(
            K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(plan.get_step_by_key(step_key).tags)))
        k8s_job = construct_dagster_k8s_job(context.get_k8s_job_config(None, launcher), ["dagster", "api", "execute_step"],
                                            f"dagster-step-{step_key.replace('_', '-')}", component="step_worker",
                                            user_defined_k8s_config=context.run_k8s_config)
        return k8s_job.spec.template.spec.containers[0]

    steps = {s.key for s in plan.steps}
    for r in ASSETS:
        if f"demo__{r.name}" not in steps:
            continue
        container = step_pod(f"demo__{r.name}")
        assert container.image == POD_ENV["TRAITFLOW_IMAGE"]
        assert container.resources.requests == {"cpu": "500m", "memory": "2Gi"}
        assert (container.resources.limits or {}) == ({"nvidia.com/gpu": "1"} if r.gpu else {}), r.name
        sources = {(e.config_map_ref and e.config_map_ref.name) or e.secret_ref.name for e in container.env_from}
        assert sources == {"traitflow-env", "traitflow-storage", "traitflow-judge"}
        assert "DAGSTER_PG_PASSWORD" in {e.name for e in container.env}
    assert {"demo__steering", "demo__vetting"} <= steps

    monkeypatch.setenv("TRAITFLOW_EXECUTOR", "kubernetes")
    with pytest.raises(TraitflowError, match=r"^TRAITFLOW_EXECUTOR must be k8s or unset, got 'kubernetes'$"):
        namespace["executor_from_env"]()


def test_a_normal_load_does_not_import_dagster_k8s():
    env = {k: v for k, v in os.environ.items() if k not in ("TRAITFLOW_EXECUTOR", "TRAITFLOW_ROOT")}
    code = ("import sys, definitions; assert 'dagster_k8s' not in sys.modules; "
            "assert definitions.defs.resolve_implicit_global_asset_job_def().executor_def.name == 'multi_or_in_process_executor'")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
