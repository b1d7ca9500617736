"""What the Dagster UI shows of each partition beyond its numbers: a link to its page in the viewer,
tables (extraction scores, steering runs, the cross-trait summary), and a few sample texts, escaped
so that a model's reply can neither break the markdown nor inject HTML.

The toy demo (tests/conftest.py, materialized once per session through `traitflow run`) is read
back from its Dagster instance; the escaping is checked on hostile text rendered by a real
CommonMark + GFM-tables renderer with raw HTML allowed, the most permissive setting a UI could use.
"""

import json
import math
import re

import dagster as dg
import pytest
from dagster._core.storage.event_log.base import AssetRecordsFilter
from markdown_it import MarkdownIt

from assets.common import _metadata_value
from tests.conftest import TOY_TRAITS
from traitflow.stages.comparison import clause_samples
from traitflow.stages.context import SAMPLE_CHARS, ReadContext, Table, markdown_table
from traitflow.stages.extraction import vetting_samples
from traitflow.view.urls import base_url

HOSTILE = "fine | really *fine* <script>alert(1)</script>\nsecond line `code` [link](javascript:x) & more"


def metadata(toy_demo, asset: str, partition: str | None) -> dict:
    """The latest materialization's metadata of one partition of a demo asset."""
    instance: dg.DagsterInstance = toy_demo["instance"]
    key = dg.AssetKey(["demo", asset])
    if partition is None:
        event = instance.get_latest_materialization_event(key)
        assert event is not None, f"demo/{asset} was never materialized"
        return event.asset_materialization.metadata
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records
    assert records, f"demo/{asset} {partition} was never materialized"
    return records[0].asset_materialization.metadata


def rows_of(value: dg.TableMetadataValue) -> list[dict]:
    return [dict(record.data) for record in value.records]


def render(markdown: str) -> str:
    return MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)


# --------------------------------------------------------------------------- viewer links
def test_each_partition_links_to_its_page_in_the_viewer(toy_demo):
    base = base_url()  # TRAITFLOW_VIEW_URL, else the viewer's default address
    steering = metadata(toy_demo, "steering", "toy/optimism|chat")
    assert steering["viewer"] == dg.MetadataValue.url(f"{base}/demo/steering?trait=toy/optimism&variant=chat")
    extraction = metadata(toy_demo, "extraction_eval", "toy/refusal|chat")
    assert extraction["viewer"].value == f"{base}/demo/extraction?trait=toy/refusal"
    diff = metadata(toy_demo, "variant_diff", "pessimist_vs_chat/toy/general")
    assert diff["viewer"].value == f"{base}/demo/comparison?a=pessimist&b=chat&prompt_set=toy/general"
    projections = metadata(toy_demo, "projections", "toy/contrast|pessimist")
    assert projections["viewer"].value == f"{base}/demo/dynamics?prompt_set=toy/contrast&variant=pessimist"
    assert metadata(toy_demo, "summary", None)["viewer"].value == f"{base}/demo/"


# --------------------------------------------------------------------------- tables
def test_extraction_eval_scores_table_has_every_method_by_layer(toy_demo):
    value = metadata(toy_demo, "extraction_eval", "toy/optimism|chat")["scores"]
    assert isinstance(value, dg.TableMetadataValue)
    assert [c.name for c in value.schema.columns] == ["position", "component", "method", "layer", "val_accuracy", "auroc",
                                                       "cohens_d"]
    rows = rows_of(value)
    spec = toy_demo["project"].experiments["demo"].spec.extraction
    evaluation = json.loads((toy_demo["root"] / "experiments/demo/extraction_eval/toy/optimism/chat/extraction_eval.json").read_text())
    layers = sorted({r["layer"] for r in evaluation["scores"]})
    assert len(layers) >= 6
    expected = {(p, m, layer) for p in spec.position for m in spec.methods for layer in layers}
    assert {(r["position"], r["method"], r["layer"]) for r in rows} == expected
    assert len(rows) == len(expected) == len(evaluation["scores"])
    stored = {(r["position"], r["method"], r["layer"]): r for r in evaluation["scores"]}
    for row in rows:
        assert row["val_accuracy"] == stored[(row["position"], row["method"], row["layer"])]["val_accuracy"]


def test_steering_runs_table_is_the_search_log(toy_demo):
    value = metadata(toy_demo, "steering", "toy/optimism|chat")["runs"]
    assert [c.name for c in value.schema.columns] == ["layer", "multiplier", "coefficient", "trait_mean", "coherence_mean", "valid"]
    folder = toy_demo["root"] / "experiments/demo/steering/toy/optimism/chat"
    log = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    runs = [e for e in log if "config" in e]
    summary = json.loads((folder / "summary.json").read_text())
    rows = rows_of(value)
    assert len(rows) == len(runs) == summary["runs"] > 1
    for row, entry in zip(rows, runs, strict=True):
        assert (row["layer"], row["multiplier"]) == (entry["config"]["vectors"][0]["layer"], entry["config"]["vectors"][0]["multiplier"])
        assert row["valid"] == (entry["result"]["coherence_mean"] >= summary["min_coherence"])
    best = summary["best"]
    assert {"layer": best["layer"], "multiplier": best["multiplier"], "valid": True}.items() <= next(
        r for r in rows if (r["layer"], r["multiplier"]) == (best["layer"], best["multiplier"])).items()


def test_summary_is_the_viewers_cross_trait_table(toy_demo):
    from traitflow.view.data import experiment_rows

    written = json.loads((toy_demo["root"] / "experiments/demo/summary/summary.json").read_text())
    rows = experiment_rows(ReadContext.create(toy_demo["project"], "demo"))
    assert written["experiment"] == "demo" and written["schema_version"] == 1
    assert written["traits"] == json.loads(json.dumps(rows))
    assert [r["trait"] for r in rows] == sorted(TOY_TRAITS) and all(r["layer"] is not None for r in rows)
    meta = metadata(toy_demo, "summary", None)
    table = rows_of(meta["table"])
    assert [r["trait"] for r in table] == [r["trait"] for r in rows]
    for shown, row in zip(table, rows, strict=True):
        assert (shown["method"], shown["layer"], shown["rule"]) == (row["method"], row["layer"], row["rule"])
    assert meta["n_traits"].value == 3 and meta["n_with_best_vector"].value == 3 and meta["n_comparisons"].value == 2


def test_a_table_cell_without_a_value_is_null_not_nan():
    """The UI parses each record as JSON: a NaN would fail the row; null shows as an empty cell.
    Every record keeps every column (Dagster refuses records with different fields)."""
    from dagster._serdes import deserialize_value, serialize_value

    table = Table({"method": "string", "layer": "int", "cohens_d": "float", "valid": "bool"},
                  [{"method": "probe", "layer": 3, "cohens_d": None, "valid": True},
                   {"method": "pca", "layer": 4.0, "cohens_d": float("nan"), "valid": False},
                   {"method": "mean_diff", "layer": 5, "cohens_d": 1.5}])
    value = _metadata_value("scores", table)
    assert rows_of(value) == [{"method": "probe", "layer": 3, "cohens_d": None, "valid": True},
                              {"method": "pca", "layer": 4, "cohens_d": None, "valid": False},
                              {"method": "mean_diff", "layer": 5, "cohens_d": 1.5, "valid": None}]
    for record in value.records:
        json.dumps(record.data, allow_nan=False)  # what the UI's JSON.parse gets
    assert deserialize_value(serialize_value(value)) == value  # what the event log stores
    with pytest.raises(ValueError, match="column types"):
        Table({"layer": "integer"}, [])


# --------------------------------------------------------------------------- samples
def test_samples_show_the_texts_the_stages_wrote(toy_demo):
    root = toy_demo["root"] / "experiments/demo"
    responses = json.loads((root / "responses/toy/optimism/chat/responses.json").read_text())
    vetting = json.loads((root / "vetting/toy/optimism/chat/vetting.json").read_text())
    first_passed = next(v for v in vetting["items"] if v["passed"])
    reply = next(it["response"] for it in responses["items"] if (it["side"], it["index"]) == (first_passed["side"], first_passed["index"]))
    samples = metadata(toy_demo, "vetting", "toy/optimism|chat")["samples"].value
    assert words(reply) and words(reply) in words(samples)

    folder = root / "steering/toy/optimism/chat"
    summary = json.loads((folder / "summary.json").read_text())
    best = summary["best"]
    baseline = json.loads((folder / "responses/baseline.json").read_text())
    steered = json.loads((folder / f"responses/L{best['layer']}_m{best['multiplier']:.4f}.json").read_text())
    samples = metadata(toy_demo, "steering", "toy/optimism|chat")["samples"].value
    for answer in (baseline[0]["answer"], next(a["answer"] for a in steered if a["question"] == baseline[0]["question"])):
        assert words(answer) in words(samples)
    assert len(table_rows(samples)) == min(3, len(baseline))

    items = json.loads((root / "inference_responses/toy/general/pessimist/responses.json").read_text())["items"]
    samples = metadata(toy_demo, "inference_responses", "toy/general|pessimist")["samples"].value
    assert len(table_rows(samples)) == 3 and all(words(it["response"]) in words(samples) for it in items[:3])

    diff = json.loads((root / "variant_diff/chat_vs_pessimist/toy/general/variant_diff.json").read_text())
    top = max((c for info in diff["traits"].values() for c in info["top_clauses"]), key=lambda c: abs(c["delta"]))
    samples = metadata(toy_demo, "variant_diff", "chat_vs_pessimist/toy/general")["samples"].value
    assert words(top["clause"]) in words(table_rows(samples)[0])
    assert len(table_rows(samples)) == 5


def words(text: str) -> str:
    """Letters and digits only: a text as it reads, whatever escaping it went through."""
    return " ".join(re.findall(r"[A-Za-z0-9']+", text))


def table_rows(markdown: str) -> list[str]:
    """The body rows of a markdown table."""
    return [line for line in markdown.splitlines() if line.startswith("| ")][1:]


def test_a_hostile_reply_stays_text_in_its_cell():
    responses = {"items": [{"side": "positive", "index": 0, "prompt": "Be *bold*", "response": HOSTILE},
                           {"side": "negative", "index": 0, "prompt": "a|b", "response": "x" * 500}]}
    vetting = {"items": [{"side": "positive", "index": 0, "score": 91.5, "passed": True},
                         {"side": "negative", "index": 0, "score": float("nan"), "passed": False}]}
    html = render(vetting_samples(responses, vetting).text)
    assert "<script" not in html and "href=" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown, as text
    assert "<em>" not in html and "<a " not in html and "<code>" not in html
    cells = [re.findall(r"<td>(.*?)</td>", row, flags=re.S) for row in re.findall(r"<tr>(.*?)</tr>", html, flags=re.S)[1:]]
    assert [len(c) for c in cells] == [5, 5]  # the reply's `|` did not split its cell
    assert "fine | really *fine*" in cells[0][4] and "second line" in cells[0][4]  # the newline did not end the row
    assert cells[1][4] == "x" * SAMPLE_CHARS + "…"  # cut


def test_clause_samples_are_the_top_five_by_size_of_delta():
    record = {"a": "chat", "b": "organism", "traits": {
        "t/one": {"top_clauses": [{"id": 1, "clause": "mild", "delta": 0.45}, {"id": 2, "clause": HOSTILE, "delta": -3.0}]},
        "t/two": {"top_clauses": [{"id": i, "clause": f"clause {i}", "delta": i / 10} for i in range(3, 9)]}}}
    html = render(clause_samples(record).text)
    rows = [re.findall(r"<td>(.*?)</td>", row, flags=re.S) for row in re.findall(r"<tr>(.*?)</tr>", html, flags=re.S)[1:]]
    assert [r[0] for r in rows] == ["t/one", "t/two", "t/two", "t/two", "t/two"]
    assert [float(r[3]) for r in rows] == [-3.0, 0.8, 0.7, 0.6, 0.5]
    assert "<script" not in html and all(len(r) == 4 for r in rows)


def test_markdown_table_escapes_its_title_and_headers():
    html = render(markdown_table("<b>title</b> | *x*", ["a|b", "c"], [[1, math.pi]]).text)
    assert "<b>" not in html and "&lt;b&gt;title&lt;/b&gt; | *x*" in html
    assert len(re.findall(r"<th>", html)) == 2 and "<td>3.142</td>" in html


def test_a_stage_output_crosses_json_whole():
    """What a model server sends back (StageOutput.to_json/from_json): tables and samples too."""
    from pathlib import Path

    from traitflow.stages.context import Check, Markdown, StageOutput

    output = StageOutput(Path("/s/e/steering/t/x/chat/summary.json"), {"n_runs": 2}, files={"chart_html": Path("/s/c.html")},
                         chart=Markdown("**c**"), checks={"ok": Check(True, "fine")},
                         tables={"runs": Table({"layer": "int", "trait_mean": "float"}, [{"layer": 1, "trait_mean": float("nan")}])},
                         samples=markdown_table("t", ["a"], [[HOSTILE]]))
    back = StageOutput.from_json(json.loads(json.dumps(output.to_json(), allow_nan=False)))
    assert back.samples == output.samples and back.chart == output.chart and back.checks == output.checks
    assert back.tables["runs"].records() == [{"layer": 1, "trait_mean": None}] and back.files == output.files
