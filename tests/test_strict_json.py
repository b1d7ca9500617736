"""Artifacts are strict JSON: never a bare NaN/Infinity token. An undefined metric is null with a
sibling ``<name>_reason``; the store turns any other non-finite float into null.

The undefined metrics come from a real run of the pipeline stages on the tiny Llama: one held-out
pair (Cohen's d needs 2 examples a side) and a comparison over a prompt set of one prompt.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from tests.test_specs import make_project
from traitflow.cli import main
from traitflow.extract.evaluate import VectorScore, best_score
from traitflow.steer.run import ResultsLog, write_summary
from traitflow.store import ArtifactStore

NAN, INF = float("nan"), float("inf")


def strict_loads(text: str):
    """json.loads that fails on NaN, Infinity and -Infinity (Python's json accepts them by default)."""
    def reject(token: str):
        raise ValueError(f"non-JSON constant {token}")

    return json.loads(text, parse_constant=reject)


def test_strict_loads_rejects_what_plain_json_writes():
    with pytest.raises(ValueError, match="NaN"):
        strict_loads(json.dumps({"d": NAN}))
    with pytest.raises(ValueError, match="-Infinity"):
        strict_loads(json.dumps([-INF]))


# --------------------------------------------------------------------------- the store's net
def test_store_writes_non_finite_floats_as_null(tmp_path):
    store = ArtifactStore(tmp_path)
    path = store.path("exp", "asset", ("p",), "x.json")
    store.write_json(path, {"a": NAN, "b": [INF, 1.5, (-INF, 2)], "c": {"d": NAN, "e": "NaN"}, "n": 3, "ok": True})
    text = path.read_text()
    assert strict_loads(text) == {"a": None, "b": [None, 1.5, [None, 2]], "c": {"d": None, "e": "NaN"}, "n": 3, "ok": True}
    assert store.read_json(path)["b"][1] == 1.5


def test_safetensors_metadata_is_strict_json(tmp_path):
    from safetensors import safe_open

    store = ArtifactStore(tmp_path)
    path = store.path("exp", "vectors", ("p",), "v.safetensors")
    store.write_tensors(path, {"t": torch.full((2,), NAN)}, {"layers": [1, 2], "coefficient": INF, "history": [{"f": NAN}]})
    with safe_open(str(path), framework="pt") as handle:
        raw = handle.metadata()
    assert strict_loads(raw["coefficient"]) is None and strict_loads(raw["history"]) == [{"f": None}]
    tensors, meta = store.read_tensors(path)
    assert meta == {"layers": [1, 2], "coefficient": None, "history": [{"f": None}]}
    assert torch.isnan(tensors["t"]).all()  # tensors keep NaN: only JSON cannot


def test_steering_log_responses_and_summary_are_strict(tmp_path):
    log = ResultsLog(tmp_path)
    log.rewrite([{"type": "header", "note": NAN}])
    log.append({"type": "baseline", "result": {"trait_mean": NAN, "coherence_mean": 80.0}})
    log.append({"result": {"trait_mean": 70.0, "coherence_mean": 90.0}, "config": {"vectors": [
        {"layer": 1, "component": "residual", "position": "response[:]", "method": "mean_diff", "weight": INF,
         "multiplier": 0.5}]}})
    log.write_responses("baseline", [{"question": "q", "answer": "a", "trait": NAN, "coherence": -INF}])
    summary = write_summary(log, {"trait_mean": NAN, "coherence_mean": 80.0}, min_coherence=50, direction=1)
    assert math.isnan(summary["best"]["delta"])  # in memory; the file says null
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [strict_loads(line).get("type") for line in lines] == ["header", "baseline", None]
    assert strict_loads(lines[2])["config"]["vectors"][0]["weight"] is None
    assert strict_loads((tmp_path / "responses" / "baseline.json").read_text()) == [
        {"question": "q", "answer": "a", "trait": None, "coherence": None}]
    written = strict_loads((tmp_path / "summary.json").read_text())
    assert written["baseline"]["trait_mean"] is None and written["best"]["delta"] is None
    assert written["best"]["coefficient"] is None and written["best"]["trait_mean"] == 70.0


# --------------------------------------------------------------------------- undefined metrics, for real
EXPERIMENT = """\
name: exp
variants:
  chat: {model: some-org/some-model}
  lora: {model: some-org/some-model}
traits: [starter/optimism]
extraction: {position: ["prompt[-1]"], methods: [mean_diff, probe], layers: "1,2", val_split: 0.05, max_new_tokens: 2}
inference: {prompt_sets: [starter/one], max_new_tokens: 3}
comparisons: [{a: chat, b: lora, prompt_set: starter/one}]
"""
TRAIT, COMPARISON = "starter/optimism", "chat_vs_lora/starter/one"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_loaded, tiny_lora_dir) -> dict:
    """Extraction with one held-out pair (20 pairs, val_split 0.05), and a one-prompt comparison of
    the tiny Llama with and without a LoRA, through the pipeline's own stage functions."""
    from traitflow.artifacts import ExtractionEval, VariantDiff
    from traitflow.specs.loader import load_project
    from traitflow.stages import comparison, extraction, inference
    from traitflow.stages.context import StageContext

    root = make_project(tmp_path_factory.mktemp("strict"), EXPERIMENT)
    (root / "datasets" / "inference" / "starter" / "one.json").write_text(
        json.dumps({"name": "one", "prompts": [{"id": "only", "text": "Hello there! How are you today?"}]}))
    tiny_lora_dir("llama")
    models = {"chat": tiny_loaded("llama"), "lora": tiny_loaded("llama", lora="loras/llama")}
    ctx = StageContext.create(load_project(root), "exp", load_model=models.__getitem__, log=lambda line: None)
    for stage in (extraction.run_responses, extraction.run_vetting, extraction.run_activations, extraction.run_vectors,
                  extraction.run_extraction_eval):
        stage(ctx, TRAIT, "chat")
    inference.run_inference_responses(ctx, "starter/one", "chat")
    output = comparison.run_variant_diff(ctx, COMPARISON)
    return {"root": root, "ctx": ctx, "numbers": output.metadata(),
            "eval_path": ctx.artifacts.path(ExtractionEval, TRAIT, "chat"),
            "diff_path": ctx.artifacts.path(VariantDiff, COMPARISON)}


def test_every_json_artifact_of_the_run_is_strict(run):
    files = sorted(p for p in (run["root"] / "experiments").rglob("*") if p.suffix in (".json", ".jsonl"))
    assert {p.name for p in files} >= {"responses.json", "vetting.json", "extraction_eval.json", "variant_diff.json"}
    for path in files:
        strict_loads(path.read_text())


def test_one_held_out_pair_leaves_cohens_d_null_with_a_reason(run):
    record = strict_loads(run["eval_path"].read_text())
    assert {r["n_val"] for r in record["scores"]} == {2}  # one pair: one example a side
    assert len(record["scores"]) == 4  # 2 methods x 2 layers
    for row in [*record["scores"], *record["best"].values()]:
        assert row["cohens_d"] is None and row["cohens_d_reason"] == "fewer than 2 held-out examples on a side", row
        assert 0.0 <= row["auroc"] <= 1.0 and "auroc_reason" not in row  # one of each side is enough for AUROC
    assert (run["eval_path"].parent / "eval_heatmap.png").read_bytes()[:4] == b"\x89PNG"  # the chart copes with null
    # Read back, the rows rank exactly as in memory (the stored best is the rule's best).
    best = best_score([VectorScore.from_dict(r) for r in record["scores"]])
    assert math.isnan(best.cohens_d)
    stored = record["best"]["prompt[-1]"]
    assert (best.method, best.layer) == (stored["method"], stored["layer"])


def test_one_prompt_comparison_leaves_d_and_correlation_null_with_reasons(run):
    record = strict_loads(run["diff_path"].read_text())
    assert record["n_prompts"] == 1
    info = record["traits"][TRAIT]
    assert [row["layer"] for row in info["layers"]] == [1, 2]
    for row in info["layers"]:
        for name in ("cohens_d", "cohens_d_paired", "correlation_with_peak"):
            assert row[name] is None and row[f"{name}_reason"] == "fewer than 2 prompts", (name, row)
        assert isinstance(row["cosine"], float) and isinstance(row["delta"], float)
    assert info["peak"]["layer"] == 1  # no layer has a d: the first one is the peak
    assert run["numbers"][f"{TRAIT} peak d (L1)"] is None
    assert (run["diff_path"].parent / "variant_diff.png").read_bytes()[:4] == b"\x89PNG"


def test_report_shows_undefined_metrics_as_na_with_the_reason(run, capsys):
    root = str(run["root"])
    assert main(["report", "exp", "--root", root]) == 0
    text = capsys.readouterr().out
    best = strict_loads(run["eval_path"].read_text())["best"]["prompt[-1]"]
    row = next(line for line in text.splitlines() if line.startswith(TRAIT)).split()
    # trait, position, method, layer, val acc, d, materialized...
    assert row[1:4] == ["prompt[-1]", best["method"], str(best["layer"])] and row[5] == "n/a"
    line = next(line for line in text.splitlines() if line.strip().startswith(f"{TRAIT} ") and " d " in line)
    assert "d    n/a  paired d    n/a" in line and line.endswith("(d: fewer than 2 prompts)")
    assert main(["report", "exp", "--root", root, "--json"]) == 0
    report = strict_loads(capsys.readouterr().out)
    assert report["traits"][TRAIT]["extraction"]["cohens_d"] is None
    assert report["traits"][TRAIT]["extraction"]["cohens_d_reason"] == "fewer than 2 held-out examples on a side"
    assert report["comparisons"]["chat_vs_lora"][TRAIT] == {
        "layer": 1, "cohens_d": None, "cohens_d_paired": None, "cosine": pytest.approx(
            strict_loads(run["diff_path"].read_text())["traits"][TRAIT]["peak"]["cosine"]),
        "cohens_d_reason": "fewer than 2 prompts", "cohens_d_paired_reason": "fewer than 2 prompts"}


def test_unbounded_d_round_trips_through_json():
    """No spread within either side gives d = ±inf in memory; the row stores null and says which
    way, and reading it back ranks it as before (first, among equal accuracies)."""
    top = VectorScore("p", "residual", "mean_diff", 1, 1.0, 1.0, INF, 1, 4)
    other = VectorScore("p", "residual", "probe", 0, 1.0, 1.0, 3.0, 1, 4)
    low = VectorScore("p", "residual", "pca", 2, 1.0, 1.0, -INF, -1, 4)
    rows = [strict_loads(json.dumps(s.as_dict(), allow_nan=False)) for s in (top, other, low)]
    assert rows[0]["cohens_d"] is None
    assert rows[0]["cohens_d_reason"] == "unbounded: neither side varies, positives project higher"
    assert rows[2]["cohens_d"] is None
    assert rows[2]["cohens_d_reason"] == "unbounded: neither side varies, negatives project higher"
    assert rows[0]["combined"] == 1.0 and rows[2]["combined"] == 0.5
    back = [VectorScore.from_dict(r) for r in rows]
    assert [s.cohens_d for s in back] == [INF, 3.0, -INF]
    assert best_score(back) == best_score([top, other, low]) == back[0]


def test_old_artifacts_with_nan_still_read(tmp_path: Path):
    """Artifacts written before this change hold NaN tokens; reading them keeps working."""
    path = tmp_path / "old.json"
    path.write_text('{"cohens_d": NaN}')
    assert math.isnan(ArtifactStore(tmp_path).read_json(path)["cohens_d"])
