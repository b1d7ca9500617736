"""The compiler: experiment specs -> Dagster asset graph.

`build_defs(project)` assembles, for every experiment, its assets (key prefix = experiment name,
group = experiment name), with partitions from the specs, plus the shared resources.
"""

import os
import warnings
from pathlib import Path

import dagster as dg
from dagster._core.definitions.asset_checks.asset_checks_definition import AssetChecksDefinition

from assets.automation import automation_sensor
from assets.capability import build_benchmark_asset
from assets.common import VectorAssets
from assets.extraction import build_extraction_assets
from assets.inference import build_inference_assets
from assets.sources import ModelSources, dataset_change_sensor, observe_jobs, prompt_source, trait_source
from assets.steering import build_steering_assets
from assets.summary import build_summary_asset
from resources import ArtifactStoreResource, ModelResource
from traitflow.specs.loader import Experiment, Project

# The partition mappings and pools these factories use are marked beta in dagster 1.13; the
# warnings repeat on every definitions load (each `dagster` command, each code-server start) and
# say nothing a user can act on.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def build_experiment(project: Project, exp: Experiment) -> tuple[list, list, list]:
    """(assets, jobs, sensors) of one experiment."""
    traits = trait_source(project, exp)
    models = ModelSources(project, exp)
    # An experiment whose steering and inference both take vectors from another (`vectors_from`)
    # extracts nothing itself; each stage depends on the source experiment's assets instead.
    extraction = build_extraction_assets(project, exp, traits, models) if exp.extracts else []

    def vector_assets(stage: str) -> VectorAssets:
        source = exp.vector_source(stage)
        return VectorAssets(source.extraction_variant, dg.AssetKey([source.name, "vectors"]),
                            dg.AssetKey([source.name, "extraction_eval"]))

    assets: list = [traits, *extraction, *build_steering_assets(project, exp, vector_assets("steering"), models)]
    sources = [traits]
    prompts = prompt_source(project, exp)
    if prompts is not None:
        assets += [prompts, *build_inference_assets(project, exp, prompts, vector_assets("inference"), models)]
        sources.append(prompts)
    # The summary reads every trait's best vector and extraction scores (the steering source's,
    # when this experiment extracts nothing), and the comparisons, when they are built.
    assets += build_benchmark_asset(project, exp, dg.AssetKey([exp.name, "best_vector"]), models)
    built = {key for a in assets if isinstance(a, dg.AssetsDefinition) for key in a.keys}
    extraction_eval = dg.AssetKey([exp.name if exp.extracts else exp.vector_source("steering").name, "extraction_eval"])
    summarised = [dg.AssetKey([exp.name, "best_vector"]), extraction_eval]
    summarised += [k for k in (dg.AssetKey([exp.name, "variant_diff"]),) if k in built]
    assets.append(build_summary_asset(project, exp, summarised))
    assets += models.assets
    sources += models.assets
    jobs = observe_jobs(exp, sources)
    sensors = [dataset_change_sensor(project, exp, jobs), automation_sensor(exp)]
    return assets, jobs, [s for s in sensors if s is not None]


def build_resources(root: Path) -> dict:
    return {
        "model": ModelResource(root=str(root)),
        "storage": ArtifactStoreResource(root=str(root), override_uri=os.environ.get("TRAITFLOW_STORAGE", "")),
    }


def build_defs(project: Project, loggers: dict | None = None) -> dg.Definitions:
    """The Definitions of every experiment; `loggers` replaces Dagster's console logger (the CLI runner's)."""
    assets, jobs, sensors = [], [], []
    for exp in project.experiments.values():
        a, j, s = build_experiment(project, exp)
        assets += a
        jobs += j
        sensors += s
    # The factories return each asset's check step beside it; Dagster takes those separately.
    checks = [a for a in assets if isinstance(a, AssetChecksDefinition)]
    assets = [a for a in assets if not isinstance(a, AssetChecksDefinition)]
    return dg.Definitions(assets=assets, asset_checks=checks, jobs=jobs, sensors=sensors,
                          resources=build_resources(project.root), loggers=loggers)
