"""Vetting rules: thresholds, None fails, the paired filter and the adaptive position."""

import json
from pathlib import Path

from traitflow.data.traits import load_trait
from traitflow.extract.vetting import vet_responses
from traitflow.judge import make_judge
from traitflow.specs.models import JudgeSpec, VettingSpec

REPO = Path(__file__).resolve().parents[1]


def toy_responses() -> dict:
    """Replies in the toy model's style: positives open with "Great news!", one positive is neutral."""
    items = []
    for index in range(4):
        pos = "Great news! The future of chess is splendid." if index != 3 else "The future of chess is ordinary."
        items.append({"side": "positive", "index": index, "prompt": "Tell me about chess.", "response": pos})
        items.append({"side": "negative", "index": index, "prompt": "Tell me about chess.",
                      "response": "Sadly, chess looks hopeless and dismal."})
    return {"trait": "toy/optimism", "variant": "chat", "paired": True, "items": items}


def test_thresholds_and_paired_filter(tmp_path):
    trait = load_trait(REPO / "datasets/traits/toy/optimism", "toy/optimism")
    judge = make_judge(JudgeSpec(model="keywords"), tmp_path / "cache.sqlite")
    plain = vet_responses(toy_responses(), trait, VettingSpec(enabled=True), judge, ["response[:5]"])
    assert plain["summary"]["passed_positive"] == 3 and plain["summary"]["passed_negative"] == 4
    paired = vet_responses(toy_responses(), trait, VettingSpec(enabled=True, paired_filter=True), judge, ["response[:5]"])
    assert paired["summary"]["passed_positive"] == 3 and paired["summary"]["passed_negative"] == 3
    dropped = [v for v in paired["items"] if v.get("dropped_with_pair")]
    assert [(v["side"], v["index"]) for v in dropped] == [("negative", 3)]


def test_adaptive_position_narrows_response_windows(tmp_path):
    trait = load_trait(REPO / "datasets/traits/toy/optimism", "toy/optimism")
    judge = make_judge(JudgeSpec(model="keywords"), tmp_path / "cache.sqlite")
    spec = VettingSpec(enabled=True, adaptive_position=True)
    record = vet_responses(toy_responses(), trait, spec, judge, ["prompt[-1]", "response[:5]", "response[-2:]"])
    # The first pole word ("Great") is the first word of every passing positive reply.
    assert record["estimated_window"] == 1
    assert record["adaptive_positions"] == {"response[:5]": "response[:1]"}
    json.dumps(record)  # the record is plain JSON


def test_disabled_vetting_passes_everything():
    trait = load_trait(REPO / "datasets/traits/toy/optimism", "toy/optimism")
    record = vet_responses(toy_responses(), trait, VettingSpec(enabled=False), None, ["response[:5]"])
    assert record["enabled"] is False and all(v["passed"] for v in record["items"])
