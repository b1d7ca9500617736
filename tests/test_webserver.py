"""The Dagster webserver, for real: it loads `definitions`, shows the materialized partitions with
their metadata over GraphQL, and launches a run submitted through GraphQL."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.loads(response.read())
    assert "errors" not in payload, payload["errors"]
    return payload["data"]


@pytest.fixture(scope="module")
def webserver(project_root, materialized):
    port = free_port()
    env = dict(os.environ, TRAITFLOW_ROOT=str(project_root), DAGSTER_HOME=str(materialized["home"]))
    log = open(materialized["home"] / "webserver.log", "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-webserver"), "-m", "definitions", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((materialized["home"] / "webserver.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield port
    finally:
        stop_group(process, signal.SIGTERM)
        log.close()


def stop_group(process: subprocess.Popen, sig: int, timeout: float = 30) -> None:
    """Stop a server started with `start_new_session=True` and everything it started (only those)."""
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


MATERIALIZATIONS = """
query ($key: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(partitions: $partitions) {
        partition
        metadataEntries {
          label
          ... on FloatMetadataEntry { floatValue }
          ... on IntMetadataEntry { intValue }
          ... on PathMetadataEntry { path }
          ... on MarkdownMetadataEntry { mdStr }
        }
      }
    }
  }
}
"""


def test_webserver_shows_materialized_partitions_with_metadata(webserver):
    data = graphql(webserver, MATERIALIZATIONS, {"key": {"path": ["t", "extraction_eval"]},
                                                 "partitions": ["starter/optimism|chat"]})
    events = data["assetOrError"]["assetMaterializations"]
    assert events, "no materialization of t/extraction_eval for starter/optimism|chat"
    entries = {e["label"]: e for e in events[0]["metadataEntries"]}
    assert 0.0 <= entries["best_val_accuracy"]["floatValue"] <= 1.0
    assert entries["path"]["path"].endswith("extraction_eval.json")
    assert "best_method" in entries and "best_layer" in entries
    assert entries["chart"]["mdStr"].count("data:image/png;base64,") == 1
    assert entries["chart_html"]["path"].endswith("eval_heatmap.html")
    steering = graphql(webserver, MATERIALIZATIONS, {"key": {"path": ["t", "steering"]}, "partitions": ["starter/optimism|chat"]})
    entries = {e["label"]: e for e in steering["assetOrError"]["assetMaterializations"][0]["metadataEntries"]}
    assert entries["chart"]["mdStr"].count("data:image/png;base64,") == 1
    assert entries["results_log"]["path"].endswith("results.jsonl")
    for asset, partition in (("projections", "starter/general|chat"), ("variant_diff", "chat_vs_plain/starter/general")):
        data = graphql(webserver, MATERIALIZATIONS, {"key": {"path": ["t", asset]}, "partitions": [partition]})
        entries = {e["label"]: e for e in data["assetOrError"]["assetMaterializations"][0]["metadataEntries"]}
        assert entries["chart"]["mdStr"].count("data:image/png;base64,") == 1, asset


CHECKS = """
query ($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      assetChecksOrError {
        ... on AssetChecks { checks { name blocking executionForLatestMaterialization { status } } }
      }
    }
  }
}
"""


def test_webserver_shows_asset_check_results(webserver):
    for asset, names in (("extraction_eval", {"polarity", "min_val_accuracy"}), ("vetting", {"min_per_side"}),
                         ("best_vector", {"min_delta"})):
        data = graphql(webserver, CHECKS, {"key": {"path": ["t", asset]}})
        checks = {c["name"]: c for c in data["assetNodeOrError"]["assetChecksOrError"]["checks"]}
        assert set(checks) == names
        for check in checks.values():
            assert check["executionForLatestMaterialization"]["status"] in ("SUCCEEDED", "FAILED")
        if asset == "vetting":
            assert checks["min_per_side"]["blocking"] is True


def test_webserver_lists_the_asset_graph(webserver):
    data = graphql(webserver, "{ assetNodes { assetKey { path } groupName isPartitioned kinds } }")
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    for name in ("responses", "activations", "vectors", "extraction_eval", "inference_responses", "projections"):
        node = nodes[f"t/{name}"]
        assert node["groupName"] == "t" and node["isPartitioned"]
    assert "pytorch" in nodes["t/responses"]["kinds"]


def test_run_launched_through_graphql_succeeds(webserver, project_root):
    target = project_root / "experiments/t/vectors/starter/optimism/chat/vectors.safetensors"
    before = target.stat().st_mtime_ns
    mutation = """
    mutation ($params: ExecutionParams!) {
      launchRun(executionParams: $params) {
        __typename
        ... on LaunchRunSuccess { run { runId } }
        ... on PythonError { message }
        ... on InvalidSubsetError { message }
      }
    }"""
    params = {
        "selector": {"repositoryLocationName": "definitions", "repositoryName": "__repository__",
                     "jobName": "__ASSET_JOB", "assetSelection": [{"path": ["t", "vectors"]}]},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "starter/optimism|chat"}]},
    }
    launched = graphql(webserver, mutation, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    status_query = 'query ($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }'
    deadline = time.monotonic() + 180
    status = None
    while time.monotonic() < deadline:
        status = graphql(webserver, status_query, {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(1)
    assert status == "SUCCESS"
    assert target.stat().st_mtime_ns > before


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def require_chromium() -> None:
    """Skip without Debian's Chromium, except in CI, where .ci/run installs it and its absence fails."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("Chromium not installed (apt-get install chromium)")


def test_chart_is_visible_in_the_ui(webserver, tmp_path):
    """In a real browser: the extraction_eval partition page's "[Show Markdown]" opens the heatmap."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"http://127.0.0.1:{webserver}/assets/t/extraction_eval?view=partitions&partition=starter%2Foptimism%7Cchat")
            link = page.get_by_text("Show Markdown").first
            link.wait_for(timeout=30_000)
            for _ in range(10):
                # Dagster's first-visit newsletter dialog may pop up over the page at any moment.
                skip = page.get_by_role("button", name="Skip")
                if skip.count() and skip.first.is_visible():
                    skip.first.click()
                try:
                    link.click(timeout=3_000)
                    break
                except Exception:  # covered by the dialog: dismiss it and try again
                    page.keyboard.press("Escape")
            image = page.locator("img[src^='data:image/png']").first
            image.wait_for(state="visible", timeout=10_000)
            width, height, shown = image.evaluate("i => [i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width]")
            page.screenshot(path=str(tmp_path / "chart.png"))
        finally:
            browser.close()
    assert width > 200 and height > 100 and shown > 200
