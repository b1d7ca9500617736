"""Model comparison on identical tokens: replay variant A's responses through A and B, then measure
how every trait's projection moves (d signed as B − A).

Per trait and layer: Cohen's d of the per-prompt mean response projections (unpaired, pooled SD;
and paired, mean difference over SD of differences), the cosine between the mean activation
difference (B − A, response tokens) and the trait vector, and the peak layer by |d| (the reference
toolkit's rule). Per token: B − A deltas; per clause (split at punctuation): mean delta. Each
prompt keeps its top `top_pct` percent of clauses by |delta| (at least one), and the kept clauses
are ranked across the prompt set by |delta|.

A metric that is undefined (d or a correlation over fewer than 2 prompts, a correlation with a
constant input) is NaN from the functions below and ``null`` plus ``<name>_reason`` in the record.
"""

import math
import re
import statistics
from dataclasses import dataclass
from typing import Any

import torch

CLAUSE_END = re.compile(r"[.,;:!?]")


@dataclass(frozen=True)
class Probe:
    trait: str
    layers: list[int]
    vectors: torch.Tensor  # [len(layers), hidden] unit vectors


def cohens_d(b: list[float], a: list[float]) -> float:
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    pooled = ((len(a) - 1) * statistics.variance(a) + (len(b) - 1) * statistics.variance(b)) / (len(a) + len(b) - 2)
    delta = statistics.fmean(b) - statistics.fmean(a)
    return delta / pooled**0.5 if pooled > 0 else 0.0


def paired_d(b: list[float], a: list[float]) -> float:
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    if len(diffs) < 2:
        return float("nan")
    sd = statistics.stdev(diffs)
    return statistics.fmean(diffs) / sd if sd > 0 else 0.0


def _metric(name: str, value: float, reason: str) -> dict[str, Any]:
    """``{name: value}``, or ``{name: None, name_reason: reason}`` when ``value`` is NaN or infinite."""
    return {name: value} if math.isfinite(value) else {name: None, f"{name}_reason": reason}


def _clauses(tokens: list[str], deltas: list[float]) -> list[tuple[str, float]]:
    out, words, values = [], [], []
    for token, delta in zip(tokens, deltas, strict=True):
        words.append(token)
        values.append(delta)
        if CLAUSE_END.search(token):
            out.append(("".join(words).strip(), statistics.fmean(values)))
            words, values = [], []
    if words:
        out.append(("".join(words).strip(), statistics.fmean(values)))
    return [(text, value) for text, value in out if text]


def kept_clauses(n_clauses: int, top_pct: float) -> int:
    """How many of a prompt's clauses are kept: ``max(1, ceil(top_pct/100 × n))`` (none of none)."""
    if n_clauses == 0:
        return 0
    return max(1, math.ceil(round(top_pct * n_clauses / 100, 9)))  # round: 7 % of 100 is 7, not 8


def compare_variants(model_a: Any, model_b: Any, responses: dict, probes: list[Probe], batch_size: int = 16,
                     top_pct: float = 5) -> dict:
    """The variant_diff record for A's responses replayed through A and B.

    `top_clauses` per trait: each prompt's ``max(1, ceil(top_pct/100 × n_clauses))`` clauses with the
    largest |delta|, all of them ranked by |delta| across the prompt set."""
    if not 0 < top_pct <= 100:
        raise ValueError(f"top_pct must be in (0, 100], got {top_pct}")
    from traitflow.model.hooks import capture_pooled, project_tokens

    layers = sorted({layer for p in probes for layer in p.layers})
    hidden = probes[0].vectors.shape[-1]
    stacked = torch.zeros(len(probes), len(layers), hidden)
    for ti, probe in enumerate(probes):
        for li, layer in enumerate(probe.layers):
            stacked[ti, layers.index(layer)] = probe.vectors[li]
    items = [it for it in responses["items"] if it["response_ids"]]
    sequences = [(it["prompt_ids"], it["response_ids"]) for it in items]
    proj_a = project_tokens(model_a, sequences, layers, stacked, batch_size=batch_size)
    proj_b = project_tokens(model_b, sequences, layers, stacked, batch_size=batch_size)
    mean_a = capture_pooled(model_a, sequences, layers, ["response[:]"], batch_size=batch_size)["response[:]"].mean(0)
    mean_b = capture_pooled(model_b, sequences, layers, ["response[:]"], batch_size=batch_size)["response[:]"].mean(0)
    activation_diff = mean_b - mean_a  # [layers, hidden]

    tokenizer = model_a.tokenizer
    traits: dict[str, dict] = {}
    for ti, probe in enumerate(probes):
        per_layer = []
        for layer in probe.layers:
            li = layers.index(layer)
            a_means = [float(p.scores[ti, li, p.prompt_len:].mean()) for p in proj_a]
            b_means = [float(p.scores[ti, li, p.prompt_len:].mean()) for p in proj_b]
            diff = activation_diff[li]
            cosine = float(diff @ stacked[ti, li] / diff.norm().clamp_min(1e-12))
            few = "fewer than 2 prompts"
            per_layer.append({"layer": layer, **_metric("cohens_d", cohens_d(b_means, a_means), few),
                              **_metric("cohens_d_paired", paired_d(b_means, a_means), few),
                              "cosine": cosine, "mean_a": statistics.fmean(a_means), "mean_b": statistics.fmean(b_means)})
        peak = max(per_layer, key=lambda r: -1 if r["cohens_d"] is None else abs(r["cohens_d"]))
        li = layers.index(peak["layer"])
        clauses, prompts = [], []
        for item, pa, pb in zip(items, proj_a, proj_b, strict=True):
            deltas = (pb.scores[ti, li, pa.prompt_len:] - pa.scores[ti, li, pa.prompt_len:]).tolist()
            tokens = [tokenizer.decode([t]) for t in item["response_ids"]]
            prompts.append({"id": item["id"], "mean_delta": statistics.fmean(deltas), "tokens": tokens,
                            "deltas": [round(d, 4) for d in deltas]})
            own = sorted(_clauses(tokens, deltas), key=lambda c: -abs(c[1]))
            clauses += [{"id": item["id"], "clause": text, "delta": value}
                        for text, value in own[: kept_clauses(len(own), top_pct)]]
        clauses.sort(key=lambda c: -abs(c["delta"]))
        prompts.sort(key=lambda p: -abs(p["mean_delta"]))
        # Layer sensitivity: how the per-prompt shifts at each layer agree with the peak layer's.
        peak_shifts = [float((pb.scores[ti, li, pb.prompt_len:] - pa.scores[ti, li, pa.prompt_len:]).mean())
                       for pa, pb in zip(proj_a, proj_b, strict=True)]
        for row in per_layer:
            lj = layers.index(row["layer"])
            shifts = [float((pb.scores[ti, lj, pb.prompt_len:] - pa.scores[ti, lj, pa.prompt_len:]).mean())
                      for pa, pb in zip(proj_a, proj_b, strict=True)]
            row["delta"] = statistics.fmean(shifts)
            reason = "fewer than 2 prompts" if len(shifts) < 2 else "no variation across prompts here or at the peak layer"
            row.update(_metric("correlation_with_peak", _correlation(shifts, peak_shifts), reason))
        # `prompts`: every prompt's token deltas at the peak layer (the viewer's A/B texts); `top_prompts`
        # the five that moved most, as before.
        traits[probe.trait] = {"peak": peak, "layers": per_layer, "top_clauses": clauses,
                               "top_prompts": prompts[:5], "prompts": prompts}
    return {"a": model_a.spec.name, "b": model_b.spec.name, "prompt_set": responses["prompt_set"], "n_prompts": len(items),
            "sign": "B - A", "top_pct": top_pct, "traits": traits}


def _correlation(x: list[float], y: list[float]) -> float:
    if len(x) < 2:
        return float("nan")
    try:
        return statistics.correlation(x, y)
    except statistics.StatisticsError:
        return float("nan")
