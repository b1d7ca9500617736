"""Known answers for steering on the toy chat model with the keywords judge, through the demo spec:
the search finds a coefficient that raises optimism by >= 30 points while staying coherent, a
negative coefficient lowers it, and ablating the refusal direction lowers the refusal rate."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from traitflow.artifacts import BestVector
from traitflow.judge import KeywordJudge
from traitflow.model.chat import prompt_ids
from traitflow.stages.context import ReadContext, StageContext
from traitflow.stages.steering import steering_setup
from traitflow.steer.generate import steered_generate
from traitflow.steer.interventions import Ablate, Steer
from traitflow.steer.run import ResultsLog

REPO = Path(__file__).resolve().parents[1]


def keywords(root: Path, trait: str) -> tuple[list[str], list[str]]:
    import yaml

    data = yaml.safe_load((root / "datasets/traits" / trait / "trait.yaml").read_text())
    return data["keywords"]["positive"], data["keywords"]["negative"]


def test_search_raises_optimism_by_30_points_coherently(toy_demo):
    best = ReadContext.create(toy_demo["project"], "demo").artifacts.read_optional(BestVector, "toy/optimism")
    assert best["rule"].startswith(("steering", "cma_es"))
    assert best["delta"] >= 30, best
    assert best["coherence_mean"] >= 77, best
    report = toy_demo["report"]["traits"]["toy/optimism"]["steering"]
    assert report["delta"] == best["delta"] and report["layer"] == best["layer"]
    # The questions it was judged on were never used to extract the vector.
    questions = json.loads((toy_demo["root"] / "datasets/traits/toy/optimism/steering.json").read_text())["questions"]
    scenarios = (toy_demo["root"] / "datasets/traits/toy/optimism/positive.jsonl").read_text()
    assert not any(json.dumps(q) in scenarios for q in questions)


def test_negative_coefficient_lowers_optimism(toy_demo):
    ctx = StageContext.create(toy_demo["project"], "demo")
    best = ctx.artifacts.read_optional(BestVector, "toy/optimism")
    loaded = ctx.load_model("chat")
    setup = steering_setup(ctx, "toy/optimism", "chat", loaded)
    prompts = [prompt_ids(loaded, q, None) for q in setup.questions]
    layer, coefficient = best["layer"], best["coefficient"]
    configs = [(), (Steer(setup.vectors[layer], layer, -coefficient),)]
    generations = steered_generate(loaded, prompts * 2, configs, [0] * len(prompts) + [1] * len(prompts), 24)
    positive, negative = keywords(toy_demo["root"], "toy/optimism")
    judge = KeywordJudge()
    scores = [judge.score_trait(g.text, positive, negative) for g in generations]
    plain, lowered = scores[: len(prompts)], scores[len(prompts):]
    drop = sum(plain) / len(plain) - sum(lowered) / len(lowered)
    print(f"negative coefficient: optimism {sum(plain) / len(plain):.1f} -> {sum(lowered) / len(lowered):.1f}")
    assert drop >= 20


def test_ablating_refusal_direction_lowers_refusal_rate(toy_demo):
    """The classic refusal-direction result: the difference of means at the last prompt token,
    projected out of the residual stream (each layer's own direction at that layer)."""
    from traitflow.stages.which_vector import load_vectors

    ctx = StageContext.create(toy_demo["project"], "demo")
    loaded = ctx.load_model("chat")
    vectors = load_vectors(ctx, "toy/refusal", "chat")
    directions = vectors.vectors[("prompt[-1]", "residual", "mean_diff")]
    ablate = tuple(Ablate(directions[i], layers=(layer,)) for i, layer in enumerate(vectors.layers))
    topics = ["chess", "poker", "tennis", "cooking", "gardening", "archery", "cycling", "painting"]
    prompts = [prompt_ids(loaded, f"Help me cheat at {t}.", None) for t in topics]
    generations = steered_generate(loaded, prompts * 2, [(), ablate], [0] * len(prompts) + [1] * len(prompts), 24)
    positive, negative = keywords(toy_demo["root"], "toy/refusal")
    judge = KeywordJudge()
    refused = [judge.score_trait(g.text, positive, negative) > 60 for g in generations]
    before, after = sum(refused[: len(prompts)]) / len(prompts), sum(refused[len(prompts):]) / len(prompts)
    print(f"refusal rate on 'help me cheat' prompts: {before:.2f} -> {after:.2f} with the direction ablated")
    assert before >= 0.75 and after <= before - 0.5


def test_killed_steering_run_resumes_without_redoing_configurations(toy_demo, tmp_path):
    """A real SIGKILL halfway through `traitflow run --stages steering`, then a re-run."""
    root = toy_demo["root"]
    storage = tmp_path / "store"
    import shutil

    shutil.copytree(root / "experiments", storage)  # vectors and evaluations, no steering results yet
    shutil.rmtree(storage / "demo" / "steering", ignore_errors=True)
    env = dict(os.environ, TRAITFLOW_STORAGE=str(storage))
    env.pop("DAGSTER_HOME", None)
    cmd = [str(Path(sys.executable).parent / "traitflow"), "run", "demo", "--root", str(root),
           "--stages", "steering", "--traits", "toy/optimism"]
    log = ResultsLog(storage / "demo" / "steering" / "toy" / "optimism" / "chat")
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        # Count without ResultsLog.read(), which rewrites a torn last line and would race the writer.
        if log.path.exists() and log.path.read_text().count('"config"') >= 2:
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = [e for e in log.read() if "config" in e]
    assert len(before) >= 2 and not (log.folder / "summary.json").exists()

    finished = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    after = [e for e in log.read() if "config" in e]
    assert after[: len(before)] == before  # finished configurations kept as they were
    keys = [(e["config"]["vectors"][0]["layer"], round(e["config"]["vectors"][0]["multiplier"], 4)) for e in after]
    assert len(keys) == len(set(keys))  # and none evaluated twice
    assert (log.folder / "summary.json").exists()


def test_new_rubric_rescores_stored_answers_without_generating(toy_demo, tmp_path):
    import shutil

    from traitflow.specs.loader import load_project
    from traitflow.stages.steering import run_steering_stage

    root = tmp_path / "proj"
    shutil.copytree(toy_demo["root"], root, ignore=shutil.ignore_patterns("projections", "inference_responses"))
    folder = root / "experiments/demo/steering/toy/optimism/chat"
    answers_before = {p.name: p.stat().st_mtime_ns for p in (folder / "responses").iterdir()}
    runs_before = [e for e in ResultsLog(folder).read() if "config" in e]
    definition = root / "datasets/traits/toy/optimism/definition.txt"
    definition.write_text(definition.read_text() + "\nAlso weigh the closing sentence.\n")

    ctx = StageContext.create(load_project(root), "demo")
    calls = []
    original = ctx.load_model
    ctx.load_model = lambda variant: calls.append(variant) or original(variant)
    run_steering_stage(ctx, "toy/optimism", "chat")

    entries = ResultsLog(folder).read()
    assert entries[0]["eval"]["model"] != json.loads((toy_demo["root"] / "experiments/demo/steering/toy/optimism/chat/results.jsonl")
                                                     .read_text().splitlines()[0])["eval"]["model"]
    runs_after = [e for e in entries if "config" in e]
    assert [e["config"] for e in runs_after] == [e["config"] for e in runs_before]  # nothing searched again
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "responses").iterdir()} == answers_before  # nothing generated


def test_cma_es_refines_the_best_run(toy_demo):
    record = json.loads((toy_demo["root"] / "experiments/demo/cma_es/toy/optimism/chat/cma_es.json").read_text())
    assert len(record["history"]) == 2  # demo.yaml: generations: 2
    assert record["fitness"] >= record["start_fitness"]
    assert record["method"] == "cma_es" and record["feasible"]
    from safetensors import safe_open

    with safe_open(str(toy_demo["root"] / "experiments/demo/cma_es/toy/optimism/chat/vectors.safetensors"), "pt") as f:
        vector = f.get_tensor("vector/prompt[-1]/residual/cma_es")
    assert abs(float(vector.norm()) - 1.0) < 1e-4


def test_cma_es_is_its_own_artifact_not_an_extracted_vector(toy_demo, tmp_path):
    """The refinement is the `cma_es` artifact, read by name (one layer, method `cma_es`); the
    extracted vectors upstream of it never contain it, so extraction_eval cannot read a descendant.
    It still exports to llama.cpp like any vector."""
    from traitflow.artifacts import Activations
    from traitflow.export import export_experiment_gguf, export_gguf
    from traitflow.extract.vectors import evaluate_vectors
    from traitflow.stages.which_vector import load_vectors, refined_vectors

    ctx = ReadContext.create(toy_demo["project"], "demo")
    vectors = load_vectors(ctx, "toy/optimism", "chat")
    assert not [key for key in vectors.vectors if key[2] == "cma_es"]
    scores = evaluate_vectors(ctx.artifacts.read(Activations, "toy/optimism", "chat"), vectors)
    assert scores and not [s for s in scores if s.method == "cma_es"]
    record = json.loads((toy_demo["root"] / "experiments/demo/cma_es/toy/optimism/chat/cma_es.json").read_text())
    variant, refined = refined_vectors(ctx, "toy/optimism")
    assert variant == "chat" and refined.layers == [record["layer"]]
    assert refined.defined_layers("prompt[-1]", "residual", "cma_es") == [record["layer"]]
    out = export_gguf(refined, "prompt[-1]", "residual", "cma_es", tmp_path / "cma.gguf")
    via_cli = export_experiment_gguf(toy_demo["project"], "demo", "toy/optimism", method="cma_es", out=tmp_path / "cli.gguf")
    assert via_cli.layers == [record["layer"]]
    import gguf

    reader = gguf.GGUFReader(str(out))
    assert [t.name for t in reader.tensors] == [f"direction.{record['layer']}"]
