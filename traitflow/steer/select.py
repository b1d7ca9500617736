"""The best vector of a trait: steering decides when it ran, extraction_eval otherwise."""

from typing import Any

from traitflow.artifacts import CmaEs


def choose_best_vector(trait: str, steering: dict[str, dict], evaluation: dict, position: str, source_variant: str,
                       refined: dict[str, dict] | None = None) -> dict[str, Any]:
    """The valid steering run (coherence >= min_coherence) with the largest trait delta in the trait's
    direction, over every steered variant — or a CMA-ES refinement of one when it did better;
    without steering results, the extraction_eval best at `position`. The record says which rule chose it."""
    for variant, cma in sorted((refined or {}).items()):
        run = steering.get(variant, {}).get("best")
        if cma.get("delta") is not None and cma.get("feasible") and (run is None or cma["delta"] > run["delta"]):
            return {
                "trait": trait, "rule": "cma_es: refined direction beat the coefficient search", "variant": variant,
                "source_variant": source_variant, "position": cma["position"], "component": cma["component"],
                "method": "cma_es", "layer": cma["layer"], "coefficient": cma["coefficient"], "multiplier": None,
                "baseline": cma["baseline"], "trait_mean": cma["trait_mean"], "coherence_mean": cma["coherence_mean"],
                "delta": cma["delta"], "vector_file": CmaEs.relative_vector_path(trait, variant),
            }
    best, best_variant = None, None
    for variant, summary in sorted(steering.items()):
        candidate = summary.get("best")
        if candidate and (best is None or candidate["delta"] > best["delta"]):
            best, best_variant = candidate, variant
    if best is not None:
        baseline = steering[best_variant]["baseline"]
        return {
            "trait": trait, "rule": "steering: largest valid trait delta", "variant": best_variant,
            "source_variant": source_variant, "position": best["position"], "component": best["component"],
            "method": best["method"], "layer": best["layer"], "coefficient": best["coefficient"],
            "multiplier": best["multiplier"], "baseline": baseline["trait_mean"], "trait_mean": best["trait_mean"],
            "coherence_mean": best["coherence_mean"], "delta": best["delta"],
        }
    chosen = evaluation["best"].get(position) or next(iter(evaluation["best"].values()))
    rule = "extraction_eval: best held-out accuracy" + ("" if steering else " (no steering results)")
    if steering:
        rule = "extraction_eval: no valid steering run (coherence too low everywhere)"
    return {
        "trait": trait, "rule": rule, "variant": None, "source_variant": source_variant,
        "position": chosen["position"], "component": chosen["component"], "method": chosen["method"],
        "layer": chosen["layer"], "coefficient": None, "multiplier": None, "baseline": None, "trait_mean": None,
        "coherence_mean": None, "delta": None, "val_accuracy": chosen["val_accuracy"],
    }
