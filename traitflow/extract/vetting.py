"""Vetting: keep only the replies that actually express the pole their scenario asked for.

A judge scores the first 16 words of every reply; positives pass at >= `pos_threshold`, negatives
at <= `neg_threshold`, and an unscored reply (None) fails. With `paired_filter`, a pair survives
only when both halves pass. With `adaptive_position`, the judge also estimates how many leading
tokens carry the trait; the median N narrows every `response[:k]` position to `response[:N]`.
"""

import statistics
from typing import Any

from traitflow.data.traits import TraitDataset
from traitflow.extract.positions import parse_position
from traitflow.specs.models import VettingSpec


def vet_responses(responses: dict, trait: TraitDataset, spec: VettingSpec, judge: Any, positions: list[str]) -> dict:
    """The vetting record: per-item score and verdict, a summary, and any adapted positions."""
    items = responses["items"]
    if not spec.enabled or judge is None:
        verdicts = [{"side": it["side"], "index": it["index"], "score": None, "passed": True} for it in items]
        return {"trait": trait.name, "variant": responses["variant"], "enabled": False, "judge": None,
                "items": verdicts, "summary": _summary(verdicts), "adaptive_positions": {}}

    from traitflow.judge import vetting_request

    requests = [vetting_request(trait, it["prompt"], it["response"]) for it in items]
    scores = judge.score(requests)
    verdicts = []
    for item, result in zip(items, scores, strict=True):
        score = result.score
        if score is None:
            passed = False
        elif item["side"] == "positive":
            passed = score >= spec.pos_threshold
        else:
            passed = score <= spec.neg_threshold
        verdicts.append({"side": item["side"], "index": item["index"], "score": score, "mass": result.mass, "passed": passed})

    if spec.paired_filter and responses.get("paired"):
        ok: dict[int, bool] = {}
        for v in verdicts:
            ok[v["index"]] = ok.get(v["index"], True) and v["passed"]
        for v in verdicts:
            if v["passed"] and not ok[v["index"]]:
                v["passed"], v["dropped_with_pair"] = False, True

    adaptive: dict[str, str] = {}
    estimated = None
    if spec.adaptive_position:
        estimated = _estimate_window(judge, trait, items, verdicts)
        if estimated is not None:
            for text in positions:
                position = parse_position(text)
                if position.frame == "response" and position.index is None and (position.start in (None, 0)) \
                        and position.stop is not None and position.stop > 0:
                    adaptive[text] = f"response[:{estimated}]"

    return {"trait": trait.name, "variant": responses["variant"], "enabled": True, "judge": judge.model,
            "judge_endpoint": getattr(judge, "endpoint", "") or None,
            "thresholds": {"positive": spec.pos_threshold, "negative": spec.neg_threshold},
            "paired_filter": spec.paired_filter, "estimated_window": estimated, "adaptive_positions": adaptive,
            "items": verdicts, "summary": _summary(verdicts)}


def _estimate_window(judge: Any, trait: TraitDataset, items: list[dict], verdicts: list[dict]) -> int | None:
    """Median over passing positive replies of the judge's estimate of trait-carrying leading tokens."""
    from traitflow.judge import JudgeRequest

    chosen = [it for it, v in zip(items, verdicts, strict=True) if v["passed"] and it["side"] == "positive"]
    if not chosen:
        return None
    requests = [JudgeRequest(kind="position", question=it["prompt"], answer=it["response"], trait_name=trait.name,
                             definition=trait.definition, keywords=trait.config.keywords) for it in chosen]
    estimates = [r.score for r in judge.score(requests) if r.score is not None]
    if not estimates:
        return None
    return max(1, min(16, int(round(statistics.median(estimates)))))


def _summary(verdicts: list[dict]) -> dict:
    scored = [v for v in verdicts if v.get("score") is not None]
    return {
        "passed_positive": sum(v["passed"] for v in verdicts if v["side"] == "positive"),
        "passed_negative": sum(v["passed"] for v in verdicts if v["side"] == "negative"),
        "total": len(verdicts),
        "none": sum(1 for v in verdicts if v.get("score") is None and "mass" in v),
        "none_rate": (sum(1 for v in verdicts if v.get("score") is None and "mass" in v) / len(verdicts)) if verdicts else 0.0,
        "mean_score_positive": _mean([v["score"] for v in scored if v["side"] == "positive"]),
        "mean_score_negative": _mean([v["score"] for v in scored if v["side"] == "negative"]),
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
