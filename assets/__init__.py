"""The compiler: experiment specs -> Dagster asset graph.

`build_defs(project)` assembles, for every experiment, its assets (key prefix = experiment name,
group = experiment name), with partitions from the specs, plus the shared resources.
"""

import os
from pathlib import Path

import dagster as dg

from assets.extraction import build_extraction_assets
from assets.inference import build_inference_assets
from assets.sources import prompt_source, trait_source
from resources import ArtifactStoreResource, ModelResource
from traitflow.specs.loader import Project


def build_assets(project: Project) -> list:
    out: list = []
    for exp in project.experiments.values():
        traits = trait_source(project, exp)
        extraction = build_extraction_assets(project, exp, traits)
        out += [traits, *extraction]
        prompts = prompt_source(project, exp)
        if prompts is not None:
            _, _, vectors, extraction_eval = extraction
            out += [prompts, *build_inference_assets(project, exp, prompts, extraction_eval, vectors)]
    return out


def build_resources(root: Path) -> dict:
    return {
        "model": ModelResource(root=str(root)),
        "storage": ArtifactStoreResource(root=str(root), override_uri=os.environ.get("TRAITFLOW_STORAGE", "")),
    }


def build_defs(project: Project) -> dg.Definitions:
    return dg.Definitions(assets=build_assets(project), resources=build_resources(project.root))
