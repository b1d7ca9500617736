"""`traitflow view` and `traitflow report --html`, driven in headless Chromium on the toy demo.

Every page renders without console errors; the response browser shows the stored steered
answers; hovering a token shows its stored scores; Live chat, through a real `traitflow serve`,
streams the same reply and scores as `traitflow monitor`; the static report opens from file://
with the network off.
"""

import json
import re
import threading

import pytest

from tests.test_server import start_server, stop
from tests.test_webserver import CHROMIUM, CHROMIUM_FLAGS, require_chromium
from traitflow.artifacts import Benchmark, Projections, Steering
from traitflow.specs.loader import load_project
from traitflow.stages.context import ReadContext
from traitflow.view import data
from traitflow.view.app import make_server
from traitflow.view.html import report_html
from traitflow.view.urls import page_path


@pytest.fixture(scope="module")
def browser():
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def viewer(toy_demo):
    httpd = make_server(toy_demo["root"], port=0, log=lambda line: None)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def ctx(toy_demo):
    return ReadContext.create(load_project(toy_demo["root"], experiments=["demo"]), "demo")


def open_page(browser, url: str, offline: bool = False):
    """A page at `url` whose console errors (and uncaught exceptions) collect in `page.errors`."""
    context = browser.new_context(offline=offline)
    page = context.new_page()
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url)
    return page


def get_json(url: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


PAGES = [
    ("experiment", {}, "table.experiment tbody tr", 3),
    ("extraction", {"trait": "toy/optimism"}, "#tf-main svg", 4),  # accuracy and d heatmaps at both positions
    ("steering", {"trait": "toy/optimism", "variant": "chat"}, "table.responses tbody tr", 1),
    ("dynamics", {"prompt_set": "toy/general", "variant": "chat"}, ".tokens .tok", 10),
    ("comparison", {"a": "chat", "b": "pessimist", "prompt_set": "toy/general"}, "table.clauses tbody tr", 5),
    ("benchmarks", {"benchmark": "arc_easy", "variant": "chat"}, "table.items tbody tr", 80),
    ("benchmarks", {"benchmark": "ce_loss", "variant": "chat"}, "table.conditions tbody tr", 6),  # both benchmarks' tables
    ("chat", {}, "#tf-main h1", 1),
]


@pytest.mark.parametrize(("name", "params", "selector", "at_least"), PAGES,
                         ids=[p[0] + (f"-{p[1]['benchmark']}" if "benchmark" in p[1] else "") for p in PAGES])
def test_every_page_renders_without_console_errors(browser, viewer, name, params, selector, at_least):
    page = open_page(browser, viewer + page_path("demo", name, **params))
    try:
        page.locator(selector).nth(at_least - 1).wait_for(timeout=20_000)
        assert page.locator(selector).count() >= at_least
        page.wait_for_timeout(300)  # charts draw asynchronously: let a failing one report
        assert page.errors == []
        assert "Not here" not in page.content()
    finally:
        page.context.close()


def test_the_experiment_table_links_every_trait_and_sorts(browser, viewer, toy_demo):
    page = open_page(browser, viewer + "/demo/")
    try:
        rows = page.locator("table.experiment tbody tr")
        rows.first.wait_for()
        assert [rows.nth(i).locator("td").first.inner_text() for i in range(3)] == ["toy/formality", "toy/optimism", "toy/refusal"]
        page.get_by_text("layer", exact=True).click()  # numeric columns sort descending first
        layers = [int(rows.nth(i).locator("td").nth(3).inner_text()) for i in range(3)]
        assert layers == sorted(layers, reverse=True)
        page.get_by_role("link", name="toy/refusal").click()
        page.wait_for_url("**/demo/extraction?trait=toy/refusal")
        assert page.locator("h1").inner_text() == "Extraction · toy/refusal"
    finally:
        page.context.close()
    best = toy_demo["report"]["traits"]["toy/refusal"]["steering"]
    row = next(r for r in data.experiment_rows(ReadContext.create(toy_demo["project"], "demo")) if r["trait"] == "toy/refusal")
    assert (row["layer"], row["delta"]) == (best["layer"], best["delta"])


def test_the_response_browser_shows_the_stored_steered_answers(browser, viewer, ctx):
    summary = ctx.artifacts.read(Steering, "toy/optimism", "chat")
    best = Steering.run_name(summary["best"]["layer"], summary["best"]["multiplier"])
    folder = Steering.folder(ctx.store, "demo", "toy/optimism", "chat") / "responses"
    stored = json.loads((folder / f"{best}.json").read_text())
    baseline = {a["question"]: a["answer"] for a in json.loads((folder / "baseline.json").read_text())}
    page = open_page(browser, viewer + page_path("demo", "steering", trait="toy/optimism", variant="chat"))
    try:
        rows = page.locator("table.responses tbody tr")
        rows.first.wait_for()
        assert page.locator("#tf-run").input_value() == best
        shown = [(rows.nth(i).locator("td").nth(0).inner_text(), rows.nth(i).locator("td").nth(1).inner_text(),
                  rows.nth(i).locator("td").nth(4).inner_text()) for i in range(rows.count())]
        assert [(q, a) for q, a, _ in shown] == [(s["question"], s["answer"]) for s in stored]
        assert all(b.startswith(baseline[q]) for q, _, b in shown)  # the baseline's answer to the same question
        # Another run, then a coherence filter that nothing passes.
        other = next(r["run"] for r in data.steering_page(ctx, "toy/optimism", "chat")["runs"] if r["run"] != best)
        page.locator("#tf-run").select_option(other)
        page.wait_for_url(f"**run={other}*")
        first = json.loads((folder / f"{other}.json").read_text())[0]["answer"]
        assert rows.first.locator("td").nth(1).inner_text() == first
        page.locator("#tf-min-coherence").fill("101")
        page.locator("#tf-min-coherence").dispatch_event("change")
        page.wait_for_url("**min_coherence=101*")
        assert rows.count() == 0
        assert page.errors == []
    finally:
        page.context.close()


def test_the_benchmarks_table_shows_each_conditions_paired_change(browser, viewer, ctx):
    stored = ctx.artifacts.read(Benchmark, "arc_easy/chat")["conditions"]
    page = open_page(browser, viewer + page_path("demo", "benchmarks", benchmark="arc_easy", variant="chat"))
    try:
        table = page.locator("table.conditions").first
        table.locator("tbody tr").first.wait_for()
        heads = [h.inner_text().strip() for h in table.locator("thead th").all()]
        column = heads.index("vs baseline")
        cells = {r.locator("td").nth(0).inner_text(): r.locator("td").nth(column).inner_text() for r in table.locator("tbody tr").all()}
        assert cells["baseline"] == "—"
        row = stored["steer toy/optimism -best"]
        shown = [float(x) for x in re.findall(r"[-+]\d\.\d{3}", cells["steer toy/optimism -best"])]
        assert shown == pytest.approx([row["delta"], *row["delta_ci95"]], abs=6e-4)  # 3 decimals, as JS rounds them
    finally:
        page.context.close()


def test_hovering_a_token_shows_every_traits_score(browser, viewer, ctx):
    record = ctx.artifacts.read(Projections, "toy/general", "chat")
    item = record["items"][1]
    layer = str(record["layers"][0])
    i = item["prompt_len"] + 2  # the third response token
    page = open_page(browser, viewer + page_path("demo", "dynamics", prompt_set="toy/general", variant="chat", prompt=item["id"]))
    try:
        token = page.locator(f".tokens .tok[data-i='{i}']")
        token.hover()
        tip = page.locator(".tip")
        tip.wait_for(state="visible")
        for trait, scores in item["scores"].items():
            row = tip.locator("tr", has_text=trait)
            assert row.locator("td").nth(1).inner_text() == f"L{layer} {scores[layer][i]:.2f}"
        assert tip.locator("tr", has_text="‖h‖").locator("td").nth(1).inner_text() == f"L{layer} {item['norms'][layer][i]:.1f}"
        # Another prompt from the picker: the page now shows its tokens.
        other = record["items"][2]
        page.locator("#tf-prompt").select_option(other["id"])
        page.wait_for_url(f"**prompt={other['id']}*")
        page.locator(".tokens .tok").first.wait_for()
        assert page.locator(".tokens .tok").count() == len(other["tokens"])
        assert page.errors == []
    finally:
        page.context.close()


def test_a_bad_page_is_a_one_line_answer(viewer):
    status, body = get_json(viewer + "/api/demo/extraction?trait=toy/nope")
    assert status == 404 and body == {"error": "experiment demo has no trait 'toy/nope'"}
    status, body = get_json(viewer + "/api/demo/steering?trait=toy/optimism")
    assert status == 404 and body["error"] == "this page needs ?variant="
    status, body = get_json(viewer + "/api/demo/steering?trait=toy/optimism&variant=nope")
    assert status == 404 and body["error"] == "experiment demo has no steered variant 'nope' (it has chat)"
    status, body = get_json(viewer + "/api/demo/benchmarks?benchmark=mmlu&variant=chat")
    assert status == 404 and "no benchmark 'mmlu/chat'" in body["error"]
    status, body = get_json(viewer + "/api/nodemo/")
    assert status == 404 and "nodemo" in body["error"] and "\n" not in body["error"]
    status, body = get_json(viewer + "/api/demo/dynamics?prompt_set=toy/general&variant=chat")
    assert status == 200 and body["layers"] == [4] and len(body["items"]) == 1 and len(body["prompts"]) == 20


def test_live_chat_streams_what_traitflow_monitor_prints(browser, viewer, toy_demo, capsys):
    from traitflow.monitor.live import run_monitor

    root = toy_demo["root"]
    proc, _ = start_server(root, "chat")
    try:
        page = open_page(browser, viewer + "/demo/chat")
        slider = page.locator("input.steer[data-trait='toy/optimism']")
        slider.wait_for()
        low = float(slider.get_attribute("min"))
        slider.fill(str(low / 2))  # a step of the slider: its value is exactly this number
        coefficient = slider.input_value()
        page.locator("#tf-max-tokens").fill("12")
        page.locator("#tf-input").fill("Tell me about chess.")
        page.locator("#tf-send").click()
        page.locator("#tf-status", has_text="tokens/s").wait_for(timeout=60_000)
        reply = page.locator(".msg.assistant").first
        pieces = [reply.locator(".tok").nth(i).text_content() for i in range(reply.locator(".tok").count())]
        titles = [reply.locator(".tok").nth(i).get_attribute("title") for i in range(3)]
        text = reply.get_attribute("data-text")
        steering_note = reply.locator("small").inner_text()
        assert page.errors == []
        page.context.close()
    finally:
        stop(proc)
    local = run_monitor(root, "demo", "chat", "Tell me about chess.", steer=[f"toy/optimism:{coefficient}"],
                        max_new_tokens=12, colour=False)
    capsys.readouterr()
    assert float(coefficient) < 0 and "steer toy/optimism" in steering_note
    assert text == local.text and "".join(pieces) == local.text and len(pieces) == len(local.response_ids)
    optimism = local.scores[:, 1].tolist()  # monitors are the experiment's traits in order
    for title, score in zip(titles, optimism, strict=False):
        assert any(line.startswith("toy/optimism L") and line.endswith(f": {score:+.3f}") for line in title.splitlines())


def test_the_static_report_opens_offline(browser, toy_demo, tmp_path):
    from traitflow.cli import main

    out = tmp_path / "report.html"
    assert main(["report", "demo", "--root", str(toy_demo["root"]), "--html", str(out)]) == 0
    html = out.read_text()
    assert "http://" not in html.split("<script>", 1)[0] and "cdn." not in html  # nothing to fetch
    page = open_page(browser, out.as_uri(), offline=True)
    try:
        page.locator("table.experiment tbody tr").nth(2).wait_for(timeout=20_000)
        for name, params, selector, at_least in PAGES[1:-1]:
            page.goto(out.as_uri() + "#" + page_path("demo", name, **params))
            page.locator(selector).nth(at_least - 1).wait_for(timeout=20_000)
        # Every prompt travels in the report: the picker switches without a server.
        page.goto(out.as_uri() + "#" + page_path("demo", "dynamics", prompt_set="toy/general", variant="chat", prompt="3"))
        page.locator(".prompt", has_text="prompt:").wait_for()
        assert page.locator("#tf-prompt").input_value() == "3"
        page.goto(out.as_uri() + "#" + page_path("demo", "chat"))
        page.get_by_text("Live chat needs a running model").wait_for()
        page.wait_for_timeout(300)
        assert page.errors == []
    finally:
        page.context.close()


def test_model_text_is_shown_as_text_never_run(browser, tmp_path):
    hostile = "</script><img src=x onerror=\"window.pwned=1\"><!--<script>"
    steering = {"page": "steering", "experiment": "demo", "trait": "toy/optimism", "variant": "chat", "finished": True,
                "min_coherence": 50, "baseline": {"trait_mean": 10, "coherence_mean": 90}, "best_run": "L1_m1.0000",
                "direction": "positive", "variants": ["chat"], "extraction": "/demo/extraction?trait=toy/optimism",
                "runs": [{"run": "L1_m1.0000", "layer": 1, "multiplier": 1.0, "coefficient": 3.0, "method": "probe",
                          "trait_mean": 80, "coherence_mean": 90, "n": 1, "valid": True}],
                "answers": {"L1_m1.0000": [{"question": "q", "answer": hostile, "trait": 80, "coherence": 90}],
                            "baseline": [{"question": "q", "answer": "plain", "trait": 10, "coherence": 90}]}}
    key = page_path("demo", "steering", trait="toy/optimism", variant="chat")
    out = tmp_path / "hostile.html"
    out.write_text(report_html({key: steering}, start=key, title=hostile))
    page = open_page(browser, out.as_uri(), offline=True)
    try:
        cell = page.locator("table.responses tbody tr td").nth(1)
        cell.wait_for()
        assert cell.inner_text() == hostile
        assert page.evaluate("window.pwned") is None
    finally:
        page.context.close()


def test_only_the_viewers_own_pages_reach_it(viewer):
    """Another site's page cannot read the artifacts (DNS rebinding sends its own Host) nor start a
    chat turn (a form's content type, or a foreign Origin)."""
    import urllib.error
    import urllib.request

    def call(path: str, data: bytes | None = None, **headers: str) -> tuple[int, dict]:
        request = urllib.request.Request(viewer + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request) as response:
                return response.status, json.loads(response.readline())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    assert call("/api/demo/", Host="attacker.example")[0] == 403
    assert call("/api/demo/", Host="localhost")[0] == 200
    body = json.dumps({"variant": "chat", "messages": [{"role": "user", "content": "Hi"}]}).encode()
    assert call("/api/demo/chat", body, **{"Content-Type": "text/plain"})[0] == 415
    assert call("/api/demo/chat", body, **{"Content-Type": "application/json", "Origin": "https://evil.example"})[0] == 403
    huge = json.dumps({"variant": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": 10**9}).encode()
    status, event = call("/api/demo/chat", huge, **{"Content-Type": "application/json", "Origin": viewer})
    assert status == 200 and event == {"error": "max_new_tokens must be a whole number from 1 to 1024"}


def test_a_report_that_cannot_be_written_is_one_line(toy_demo, tmp_path, capsys):
    from traitflow.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["report", "demo", "--root", str(toy_demo["root"]), "--html", str(blocker / "report.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --html {blocker / 'report.html'}: cannot write it") and "\n" not in err
    assert not (tmp_path / "a-file.part").exists() and blocker.read_text() == "not a folder"
