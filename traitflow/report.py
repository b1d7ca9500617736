"""`traitflow report`: per trait the best vector and what is materialized, from stored artifacts."""

from typing import Any

from traitflow.pipeline import FILES, StageContext, trait_partition
from traitflow.specs.loader import Project


def build_report(project: Project, experiment: str, storage_uri: str | None = None) -> dict[str, Any]:
    ctx = StageContext.create(project, experiment, load_model=lambda v: None, storage_uri=storage_uri)
    exp = ctx.experiment
    variant = exp.extraction_variant
    traits: dict[str, Any] = {}
    for trait in exp.traits:
        part = trait_partition(trait, variant)
        materialized = [a for a in ("responses", "vetting", "activations", "vectors", "extraction_eval", "logit_lens")
                        if ctx.path(a, part).exists()]
        extraction = None
        if "extraction_eval" in materialized:
            evaluation = ctx.store.read_json(ctx.path("extraction_eval", part))
            # The report's headline is the best vector at the first extraction position.
            position = exp.spec.extraction.positions[0]
            best = evaluation["best"].get(position) or next(iter(evaluation["best"].values()))
            extraction = {"position": best["position"], "component": best["component"], "method": best["method"],
                          "layer": best["layer"], "val_accuracy": best["val_accuracy"], "cohens_d": best["cohens_d"],
                          "variant": variant}
        traits[trait] = {"extraction": extraction, "materialized": materialized}
    inference: dict[str, list[str]] = {}
    for prompt_set in exp.spec.inference.prompt_sets:
        for v in exp.inference_variants:
            part = (*prompt_set.split("/"), v)
            inference[f"{prompt_set}|{v}"] = [a for a in ("inference_responses", "projections") if ctx.path(a, part).exists()]
    return {"experiment": exp.name, "storage": ctx.store.uri, "traits": traits, "inference": inference}


def format_report(report: dict[str, Any]) -> str:
    lines = [f"experiment {report['experiment']}  (artifacts: {report['storage']})", ""]
    lines.append(f"{'trait':24} {'position':14} {'method':10} {'layer':>5} {'val acc':>8} {'d':>7}  materialized")
    for trait, info in report["traits"].items():
        ex = info["extraction"]
        done = ", ".join(info["materialized"]) or "nothing"
        if ex:
            lines.append(f"{trait:24} {ex['position']:14} {ex['method']:10} {ex['layer']:>5} {ex['val_accuracy']:>8.3f} "
                         f"{ex['cohens_d']:>7.2f}  {done}")
        else:
            lines.append(f"{trait:24} {'-':14} {'-':10} {'-':>5} {'-':>8} {'-':>7}  {done}")
    if report["inference"]:
        lines.append("")
        for key, done in report["inference"].items():
            lines.append(f"inference {key}: {', '.join(done) or 'nothing'}")
    lines.append("")
    lines.append(f"artifacts: {report['storage']}/{report['experiment']}/<asset>/<partition>/ "
                 f"(e.g. vectors/<trait>/<variant>/{FILES['vectors']})")
    return "\n".join(lines)
