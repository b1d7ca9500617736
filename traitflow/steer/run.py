"""The steering stage of one trait × variant: baseline, adaptive search (or a fixed grid), a resumable results log.

Files (under the `steering` asset's partition folder):

- `results.jsonl` — trait-interp's schema: a header line, a baseline line, then one line per run
  `{"result": {trait_mean, coherence_mean, n, trait_std, success_rate}, "config": {"vectors": [...]}}`.
  Lines are appended (and fsynced) as runs finish; a torn last line from a killed run is dropped on
  the next start. A resumed search reads the log and evaluates only configurations it lacks,
  matched by (layer, rounded multiplier). The header's `traitflow.search` says how the
  configurations were chosen: `{"kind": "search", ...schedule}` or `{"kind": "grid", "coefficients"}`
  (`steering.coefficients`: every layer at every multiplier, nothing else).
- `responses/<config>.json` — the answers of each configuration, so a judge change re-scores them
  without generating again.
- `summary.json` — written last, atomically: its presence means the search finished. With a grid,
  it (and its best) covers the grid's configurations only, even if the log holds others from an
  earlier search with the same vectors.
"""

import hashlib
import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from traitflow.artifacts import SCHEMA_VERSION, Steering
from traitflow.data.traits import TraitDataset
from traitflow.steer.search import Schedule, grid_multipliers, round_multiplier, run_grid, run_search
from traitflow.store import ArtifactStore
from traitflow.store.atomic import json_text


@dataclass(frozen=True)
class SteeringSetup:
    trait: TraitDataset
    variant: str
    questions: list[str]
    position: str
    component: str
    method: str
    layers: list[int]
    vectors: dict[int, torch.Tensor]  # layer -> unit vector
    norms: dict[int, float]  # layer -> mean activation norm at the position
    direction: int  # +1 raises the trait, -1 lowers it
    max_new_tokens: int
    batch_size: int
    vector_source: dict
    system_prompt: str | None = None

    def generation_key(self) -> str:
        """What the generated answers depend on (not the judge)."""
        payload = {"questions": self.questions, "system_prompt": self.system_prompt, "position": self.position, "component": self.component,
                   "method": self.method, "max_new_tokens": self.max_new_tokens, "source": self.vector_source,
                   "vectors": {str(k): hashlib.sha256(v.numpy().tobytes()).hexdigest()[:12] for k, v in self.vectors.items()}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


config_name = Steering.run_name  # a run's name, the file of its answers


def run_key(entry: dict) -> tuple[int, float]:
    """(layer, rounded multiplier) of a run line of the log: how finished configurations are matched."""
    vector = entry["config"]["vectors"][0]
    return vector["layer"], round_multiplier(vector["multiplier"])


def grid_keys(layers: list[int], coefficients: list[float]) -> set[tuple[int, float]]:
    """The configurations of a fixed grid, keyed like :func:`run_key`."""
    return {(layer, m) for layer in layers for m in grid_multipliers(coefficients)}


def search_description(schedule: Schedule, coefficients: list[float] | None) -> dict:
    """What the results-log header records about how configurations were chosen."""
    if coefficients:
        return {"kind": "grid", "coefficients": grid_multipliers(coefficients)}
    return {"kind": "search", **asdict(schedule)}


# --------------------------------------------------------------------------- the log
class ResultsLog:
    """The search's log, `results.jsonl` (one line per finished configuration, so a killed search
    resumes), and the answers of each configuration, in the steering partition's folder of `store`."""

    def __init__(self, folder: Path, store: ArtifactStore | None = None):
        self.store, self.folder = store or ArtifactStore(folder), folder
        self.path = folder / Steering.RESULTS_LOG

    def read(self) -> list[dict]:
        text = self.store.read_text_optional(self.path)
        if text is None:
            return []
        entries, torn = [], False
        for line in text.splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                torn = True  # a run killed mid-line: drop it, keep the rest
        if torn:
            self.rewrite(entries)
        return entries

    def rewrite(self, entries: list[dict]) -> None:
        self.store.write_text(self.path, "".join(json_text(e) + "\n" for e in entries))

    def append(self, entry: dict) -> None:
        self.store.append_text(self.path, json_text(entry) + "\n")

    def write_responses(self, name: str, responses: list[dict]) -> None:
        self.store.write_text(self.folder / "responses" / f"{name}.json", json_text(responses, indent=1))

    def read_responses(self, name: str) -> list[dict] | None:
        text = self.store.read_text_optional(self.folder / "responses" / f"{name}.json")
        return json.loads(text) if text is not None else None


# --------------------------------------------------------------------------- evaluation
def summarise(trait_scores: list[float | None], coherence: list[float | None], direction: int) -> dict:
    scored = [s for s in trait_scores if s is not None]
    coherent = [c for c in coherence if c is not None]
    return {
        "trait_mean": statistics.fmean(scored) if scored else None,
        "trait_std": statistics.pstdev(scored) if len(scored) > 1 else 0.0,
        "coherence_mean": statistics.fmean(coherent) if coherent else None,
        "n": len(scored),
        "n_total": len(trait_scores),
        "none_rate": 1 - len(scored) / len(trait_scores) if trait_scores else 0.0,
        "success_rate": (sum(1 for s in scored if (s - 50) * direction > 0) / len(scored)) if scored else 0.0,
    }


def judge_answers(judge: Any, trait: TraitDataset, answers: list[dict], direction: int) -> dict:
    from traitflow.judge import coherence_request, trait_request

    requests = [trait_request(trait, a["question"], a["answer"]) for a in answers]
    requests += [coherence_request(a["question"], a["answer"]) for a in answers]
    scores = judge.score(requests)
    n = len(answers)
    for answer, t, c in zip(answers, scores[:n], scores[n:], strict=True):
        answer["trait"], answer["coherence"] = t.score, c.score
    return summarise([a["trait"] for a in answers], [a["coherence"] for a in answers], direction)


def steer_and_answer(loaded: Any, setup: SteeringSetup, todo: dict[int | None, float | None]) -> dict[str, list[dict]]:
    """Answers of every configuration in one batched generation ({layer: multiplier}; None = baseline)."""
    from traitflow.model.chat import prompt_ids
    from traitflow.model.generate import check_context
    from traitflow.steer.generate import steered_generate
    from traitflow.steer.interventions import Steer

    configs, names = [], []
    for layer, multiplier in todo.items():
        if layer is None:
            configs.append(())
        else:
            coefficient = setup.direction * multiplier * setup.norms[layer]
            configs.append((Steer(vector=setup.vectors[layer], layer=layer, coefficient=coefficient, positions="response"),))
        names.append(config_name(layer, multiplier))
    prompts = [prompt_ids(loaded, q, setup.system_prompt) for q in setup.questions]
    check_context(loaded, prompts, setup.max_new_tokens,
                  [f"trait {setup.trait.name}, steering question {i}" for i in range(len(prompts))])
    all_prompts = [p for _ in configs for p in prompts]
    config_of_prompt = [i for i in range(len(configs)) for _ in prompts]
    generations = steered_generate(loaded, all_prompts, configs, config_of_prompt, setup.max_new_tokens, setup.batch_size)
    out: dict[str, list[dict]] = {name: [] for name in names}
    for index, generation in enumerate(generations):
        name = names[config_of_prompt[index]]
        question = setup.questions[index % len(prompts)]
        out[name].append({"question": question, "answer": generation.text})
    return out


# --------------------------------------------------------------------------- the stage
def run_steering(loaded: Any, judge: Any, setup: SteeringSetup, schedule: Schedule, min_coherence: float,
                 folder: Path, header_extra: dict, log: Callable[[str], None] = print,
                 coefficients: list[float] | None = None, store: ArtifactStore | None = None) -> dict:
    """Baseline + search, resuming from `folder`'s log. Returns the summary (also written to summary.json).

    With `coefficients` (multiples of each layer's mean activation norm, like `schedule.start`),
    every layer is evaluated at every one of them instead of searching, and nothing else."""
    results = ResultsLog(folder, store)
    gen_key, judge_key = setup.generation_key(), judge_identity(judge, setup.trait)
    entries = results.read()
    header = entries[0] if entries and entries[0].get("type") == "header" else None
    if header is None or header.get("traitflow", {}).get("generation_key") != gen_key:
        entries = []  # different vectors, questions or lengths: a fresh search
    elif header.get("eval", {}).get("model") != judge_key:
        entries = _rescore(results, entries, judge, setup, judge_key, log)
    search = search_description(schedule, coefficients)
    if not entries:
        header = {"type": "header", "trait": setup.trait.name, "direction": "positive" if setup.direction > 0 else "negative",
                  "steering_model": setup.variant, "vector_source": setup.vector_source,
                  "eval": {"model": judge_key, "method": "keywords" if judge_key.startswith("keywords#") else "logprob"},
                  "prompts_file": str(setup.trait.folder / "steering.json"),
                  "traitflow": {"generation_key": gen_key, **header_extra, "search": search}}
        results.rewrite([header])
        entries = [header]
    elif entries[0].get("traitflow", {}).get("search") != search:
        # Same vectors, another grid or schedule: logged configurations stay reusable; the header says what runs now.
        entries = [dict(entries[0], traitflow={**entries[0].get("traitflow", {}), "search": search}), *entries[1:]]
        results.rewrite(entries)

    baseline = next((e["result"] for e in entries if e.get("type") == "baseline"), None)
    if baseline is None:
        answers = steer_and_answer(loaded, setup, {None: None})["baseline"]
        baseline = judge_answers(judge, setup.trait, answers, setup.direction)
        results.write_responses("baseline", answers)
        results.append({"type": "baseline", "result": baseline})
        log(f"baseline: trait {baseline['trait_mean']}, coherence {baseline['coherence_mean']}")

    known: dict[tuple[int, float], tuple[float, float]] = {}
    for entry in entries:
        if entry.get("type") is None and "config" in entry:
            known[run_key(entry)] = (entry["result"]["trait_mean"], entry["result"]["coherence_mean"] or 0.0)

    def evaluate(todo: dict[int, float]) -> dict[int, tuple[float, float]]:
        answers = steer_and_answer(loaded, setup, todo)
        out = {}
        for layer, multiplier in todo.items():
            name = config_name(layer, multiplier)
            result = judge_answers(judge, setup.trait, answers[name], setup.direction)
            results.write_responses(name, answers[name])
            coefficient = setup.direction * multiplier * setup.norms[layer]
            results.append({"result": result, "config": {"vectors": [
                {"layer": layer, "component": setup.component, "position": setup.position, "method": setup.method,
                 "weight": coefficient, "multiplier": multiplier}]}})
            log(f"L{layer} x{multiplier:.3f} (coef {coefficient:.2f}): trait {result['trait_mean']}, coherence {result['coherence_mean']}")
            out[layer] = (result["trait_mean"], result["coherence_mean"] or 0.0)
        return out

    if coefficients:
        run_grid(setup.layers, coefficients, evaluate, known=known, coherence_target=schedule.coherence_target)
        return write_summary(results, baseline, min_coherence, setup.direction,
                             only=grid_keys(setup.layers, coefficients), search=search)
    run_search(setup.layers, schedule, evaluate, known=known)
    return write_summary(results, baseline, min_coherence, setup.direction, search=search)


def judge_identity(judge: Any, trait: TraitDataset) -> str:
    """What the scores depend on besides the answers: the judge, the rubric and the eval prompt.
    When only this changes, stored answers are re-scored rather than generated again."""
    rubric = hashlib.sha256(f"{trait.definition}\0{trait.steering.eval_prompt if trait.steering else ''}".encode()).hexdigest()[:8]
    endpoint = getattr(judge, "endpoint", "")  # secrets already masked; another server's scores differ
    return f"{getattr(judge, 'model', '?')}{'@' + endpoint if endpoint else ''}#{rubric}"


def _rescore(results: ResultsLog, entries: list[dict], judge: Any, setup: SteeringSetup, judge_key: str,
             log: Callable[[str], None]) -> list[dict]:
    """The judge changed but the answers did not: score the stored answers again, generate nothing."""
    rescored = [dict(entries[0], eval={**entries[0].get("eval", {}), "model": judge_key})]
    for entry in entries[1:]:
        if entry.get("type") == "baseline":
            name = "baseline"
        else:
            v = entry["config"]["vectors"][0]
            name = config_name(v["layer"], round(v["multiplier"], 4))
        answers = results.read_responses(name)
        if answers is None:
            continue  # nothing stored for it: the search evaluates it again
        entry = dict(entry, result=judge_answers(judge, setup.trait, answers, setup.direction))
        rescored.append(entry)
    log(f"re-scored {len(rescored) - 1} stored configurations with {judge_key}")
    results.rewrite(rescored)
    return rescored


def write_summary(results: ResultsLog, baseline: dict, min_coherence: float, direction: int,
                  only: set[tuple[int, float]] | None = None, search: dict | None = None) -> dict:
    """Best run overall and per layer among the logged runs (those keyed in `only`, when given)."""
    entries = results.read()
    runs = [e for e in entries if e.get("type") is None and "config" in e and (only is None or run_key(e) in only)]
    base = baseline["trait_mean"] or 0.0
    best = None
    per_layer: dict[int, dict] = {}
    for run in runs:
        result, vector = run["result"], run["config"]["vectors"][0]
        if result["trait_mean"] is None or result["coherence_mean"] is None:
            continue
        delta = direction * (result["trait_mean"] - base)
        row = {"layer": vector["layer"], "multiplier": vector["multiplier"], "coefficient": vector["weight"],
               "trait_mean": result["trait_mean"], "coherence_mean": result["coherence_mean"], "delta": delta,
               "valid": result["coherence_mean"] >= min_coherence, "method": vector["method"], "position": vector["position"],
               "component": vector["component"]}
        if row["valid"] and (per_layer.get(row["layer"]) is None or delta > per_layer[row["layer"]]["delta"]):
            per_layer[row["layer"]] = row
        if row["valid"] and (best is None or delta > best["delta"]):
            best = row
    # The `steering` artifact (traitflow.artifacts.Steering): its file name and schema version are the table's.
    summary = {"schema_version": SCHEMA_VERSION, "baseline": baseline, "best": best, "best_per_layer": [per_layer[k] for k in sorted(per_layer)],
               "runs": len(runs), "min_coherence": min_coherence}
    if search is not None:
        summary["search"] = search
    results.store.write_text(results.folder / Steering.file, json_text(summary, indent=1))
    return summary
