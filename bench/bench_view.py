"""The research viewer (`traitflow view`): page loads on a large synthetic experiment, and Live chat
through the viewer vs `traitflow monitor`, side by side in one run.

1. Page load. A synthetic project in a temp folder: 250 traits (trait-interp folders
   `datasets/traits/synth/t000` … `t249`), 40 layers, 5 methods × 2 positions of extraction
   scores per trait, responses + vetting + logit lens per trait, a finished steering search per
   trait (20 runs × 10 questions, `results.jsonl` and `responses/<run>.json`), best vectors,
   projections of a 50-prompt set (~15 prompt + ~45 response tokens, every trait at
   `best,best+2`, ‖h‖ at all 40 layers) and a variant diff (every trait × 40 layers, every
   prompt's token deltas). The artifacts are written directly with the artifact classes
   (:mod:`traitflow.artifacts`), in the shapes the stages write (the first 10 traits'; the other
   traits' files are copies of theirs with the name replaced, which keeps the setup to seconds);
   the spec's model (the toy) is never loaded. The viewer (:func:`traitflow.view.app.make_server`) serves in a thread; per page
   kind (experiment, extraction, steering, dynamics, comparison): its bytes, the server's
   response time over HTTP (median of 5), and the full load in headless Chromium (playwright,
   ``/usr/bin/chromium``): navigation start until the page is drawn (its table rows, or its
   Vega charts' SVGs, all there; median of 3, the static files already cached), with when the
   HTML had arrived and when app.js had run. Target (issue "Research views"): < 1 s per page. A
   page over it is profiled (cProfile of the server's work) and its top functions printed.

2. Live chat. On a copy of the toy demo (specs, datasets, and the materialized
   ``experiments/demo``), ``traitflow serve --variants chat`` runs as a subprocess; the same turn
   (prompt, steering ``toy/optimism:-80``, ``max_new_tokens``) goes (a) ``POST
   /api/demo/chat`` to the in-process viewer, which streams the server's ``/generate`` NDJSON
   on, timed where the client reads each line, and (b) :func:`traitflow.monitor.live.run_monitor`
   in-process, timed where it writes each token. Both warm (a turn of each first), interleaved,
   median of 5; both must produce the same token ids. Torch runs with the same intra-op threads
   on both sides (``TRAITFLOW_BENCH_THREADS``, default 1, on CPU). Target: viewer <= 1.2× monitor
   in time to first token and in time per token.

Without Chromium (or playwright) part 1 reports the server side only.
"""

import cProfile
import http.client
import io
import json
import os
import pstats
import random
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.bench_incremental import REPO, start_server, stop_server
from bench.common import bench_threads

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]  # as tests/test_webserver.py

N_TRAITS, N_LAYERS = 250, 40
METHODS = ["probe", "mean_diff", "pca", "gradient", "random_baseline"]
POSITIONS = ["prompt[-1]", "response[:5]"]
N_SCENARIOS = 50  # per side
N_PROMPTS, PROMPT_TOKENS, RESPONSE_TOKENS = 50, 15, 45
STEER_LAYERS, STEER_STEPS, STEER_QUESTIONS = 4, 5, 10
DISTINCT_TRAITS = 10  # written with the artifact classes; the other traits' files are copies of theirs
SERVER_REPEATS, BROWSER_REPEATS = 5, 3
TARGET_S = 1.0

CHAT_PROMPT = "Tell me about gardening."
CHAT_STEER = ["toy/optimism:-80"]
CHAT_TOKENS = 48
CHAT_REPEATS = 5
CHAT_TARGET = 1.2

WORDS = ("bright hopeful steady ordinary gloomy formal casual careful quick slow garden chess music river people "
         "future plans session week friend tips learn better worth trying think about know should").split()


# --------------------------------------------------------------------------- the synthetic project
def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _write_specs(root: Path) -> None:
    (root / "specs/experiments").mkdir(parents=True)
    (root / "specs/models").mkdir(parents=True)
    shutil.copy(REPO / "specs/models/toy-chat.yaml", root / "specs/models/toy-chat.yaml")
    shutil.copytree(REPO / "datasets/models/toy-chat", root / "datasets/models/toy-chat")
    (root / "specs/experiments/synth.yaml").write_text(
        "name: synth\n"
        "variants: {chat: toy-chat, other: toy-chat}\n"
        "traits: [synth/*]\n"
        "judge: {model: keywords}\n"
        "extraction:\n"
        "  variant: chat\n"
        f"  position: {json.dumps(POSITIONS)}\n"
        f"  methods: {json.dumps(METHODS)}\n"
        "  layers: all\n"
        "steering:\n"
        "  variants: [chat]\n"
        "  position: \"prompt[-1]\"\n"
        "inference:\n"
        "  variants: [chat, other]\n"
        "  prompt_sets: [synth/general]\n"
        "  position: \"response[:5]\"\n"
        "  layers: best,best+2\n"
        "comparisons:\n"
        "  - {a: chat, b: other, prompt_set: synth/general}\n"
        "storage: {uri: ./experiments}\n")
    rng = random.Random(0)
    for t in range(N_TRAITS):
        folder = root / f"datasets/traits/synth/t{t:03d}"
        folder.mkdir(parents=True)
        (folder / "positive.txt").write_text("".join(_sentence(rng, 8) + "\n" for _ in range(N_SCENARIOS)))
        (folder / "negative.txt").write_text("".join(_sentence(rng, 8) + "\n" for _ in range(N_SCENARIOS)))
        (folder / "definition.txt").write_text(f"Score trait t{t:03d} in the response (0-100).\nHIGH: …\nLOW: …\n")
        (folder / "steering.json").write_text(json.dumps(
            {"questions": [_sentence(rng, 6)[:-1] + "?" for _ in range(STEER_QUESTIONS)], "direction": "positive"}))
    prompts = [{"id": i + 1, "text": _sentence(rng, 7)[:-1] + "?"} for i in range(N_PROMPTS)]
    (root / "datasets/inference/synth").mkdir(parents=True)
    (root / "datasets/inference/synth/general.json").write_text(json.dumps({"name": "synth general", "prompts": prompts}))


def _clone_traits(store, experiment: str, traits: list[str]) -> None:
    """Every trait-partitioned file of the first DISTINCT_TRAITS traits, copied to the others (the
    trait's name in them replaced): the same bytes the artifact classes would write, in seconds."""
    from traitflow.artifacts import BestVector, ExtractionEval, LogitLens, Responses, Steering, Vetting

    for i, trait in enumerate(traits[DISTINCT_TRAITS:], start=DISTINCT_TRAITS):
        source = traits[i % DISTINCT_TRAITS]
        for cls in (ExtractionEval, Responses, Vetting, LogitLens, Steering, BestVector):
            key = (source,) if cls is BestVector else (source, "chat")
            src = cls.folder(store, experiment, *key)
            dst = cls.folder(store, experiment, *((trait,) if cls is BestVector else (trait, "chat")))
            for path in src.rglob("*"):
                if path.is_file():
                    target = dst / path.relative_to(src)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(path.read_text().replace(f'"{source}"', f'"{trait}"'))


def _write_artifacts(root: Path) -> dict[str, str]:
    """Every artifact the viewer reads, in the stages' shapes; returns the page routes to time."""
    from traitflow.artifacts import (
        BestVector,
        Calibration,
        ExtractionEval,
        InferenceResponses,
        LogitLens,
        Projections,
        Responses,
        Steering,
        VariantDiff,
        Vetting,
    )
    from traitflow.specs.loader import load_project
    from traitflow.stages.context import ReadContext
    from traitflow.view.urls import page_path

    project = load_project(root)
    ctx = ReadContext.create(project, "synth")
    exp, store, arts = ctx.experiment, ctx.store, ctx.artifacts
    traits = list(exp.traits)
    if len(traits) != N_TRAITS:
        raise RuntimeError(f"the synthetic experiment has {len(traits)} traits, not {N_TRAITS}")
    rng = random.Random(1)
    model = {"source": str(root / "datasets/models/toy-chat"), "revision": None, "lora": None, "dtype": "float32"}
    for trait in traits[:DISTINCT_TRAITS]:
        scores = []
        for position in POSITIONS:
            for method in METHODS:
                for layer in range(N_LAYERS):
                    acc = round(min(1.0, 0.5 + rng.random() * 0.5), 4)
                    scores.append({"position": position, "component": "residual", "method": method, "layer": layer,
                                   "val_accuracy": acc, "auroc": min(1.0, acc + 0.02), "cohens_d": rng.uniform(0, 6),
                                   "polarity": 1, "n_val": 20, "combined": acc})
        best = {p: max((s for s in scores if s["position"] == p), key=lambda s: (s["val_accuracy"], s["cohens_d"]))
                for p in POSITIONS}
        arts.write(ExtractionEval, {"trait": trait, "variant": "chat", "tie_break": "highest val_accuracy", "best": best,
                                    "scores": scores}, trait, "chat")
        items = [{"side": side, "index": i, "prompt": _sentence(rng, 8), "system_prompt": None,
                  "prompt_ids": list(range(1, 25)), "response_ids": list(range(100, 112)), "response": _sentence(rng, 10)}
                 for side in ("positive", "negative") for i in range(N_SCENARIOS)]
        arts.write(Responses, {"trait": trait, "variant": "chat", "model": model, "paired": False, "max_new_tokens": 12,
                               "chat_template": True, "items": items, "input_hashes": {"trait": "0"}}, trait, "chat")
        vetted = [{"side": it["side"], "index": it["index"], "score": rng.uniform(0, 100), "mass": None,
                   "passed": rng.random() < 0.8} for it in items]
        arts.write(Vetting, {"trait": trait, "variant": "chat", "enabled": True, "judge": "keywords", "judge_endpoint": None,
                             "thresholds": {"positive": 60.0, "negative": 40.0}, "paired_filter": False,
                             "estimated_window": None, "adaptive_positions": {}, "items": vetted,
                             "summary": {"passed_positive": 40, "passed_negative": 40, "total": 100, "none": 0,
                                         "none_rate": 0.0}}, trait, "chat")
        lenses = [{"trait": trait, "variant": "chat", "position": p, "component": "residual", "method": best[p]["method"],
                   "token_form": "decoded",
                   "layers": [{"layer": layer, "top": [[f" {rng.choice(WORDS)}", round(rng.uniform(2, 9), 4)] for _ in range(20)],
                               "bottom": [[f" {rng.choice(WORDS)}", round(-rng.uniform(2, 9), 4)] for _ in range(20)],
                               "top_ids": list(range(20)), "bottom_ids": list(range(20))} for layer in range(N_LAYERS)]}
                  for p in POSITIONS]
        arts.write(LogitLens, {"trait": trait, "variant": "chat", "lenses": lenses}, trait, "chat")

        # a finished steering search: results.jsonl, responses/<run>.json, then summary.json
        folder = Steering.folder(store, exp.name, trait, "chat")
        questions = json.loads((root / f"datasets/traits/{trait}/steering.json").read_text())["questions"]
        log = [{"type": "header", "trait": trait, "direction": "positive", "steering_model": "chat"},
               {"type": "baseline", "result": {"trait_mean": 50.0, "trait_std": 0.0, "coherence_mean": 100.0, "n": 10}}]
        answers = {"baseline": [{"question": q, "answer": _sentence(rng, 14), "trait": 50.0, "coherence": 100.0}
                                for q in questions]}
        runs = []
        first = rng.randrange(8, 28)
        for layer in range(first, first + STEER_LAYERS):
            multiplier = 0.5
            for _ in range(STEER_STEPS):
                result = {"trait_mean": rng.uniform(40, 99), "trait_std": 5.0, "coherence_mean": rng.uniform(60, 100),
                          "n": STEER_QUESTIONS, "n_total": STEER_QUESTIONS, "none_rate": 0.0, "success_rate": 0.5}
                log.append({"result": result, "config": {"vectors": [{"layer": layer, "component": "residual",
                                                                      "position": "prompt[-1]", "method": best["prompt[-1]"]["method"],
                                                                      "weight": 60 * multiplier, "multiplier": multiplier}]}})
                runs.append((layer, multiplier, result))
                answers[Steering.run_name(layer, multiplier)] = [
                    {"question": q, "answer": _sentence(rng, 14), "trait": rng.uniform(0, 100), "coherence": rng.uniform(50, 100)}
                    for q in questions]
                multiplier = round(multiplier * 1.6, 4)
        store.write_text(folder / Steering.RESULTS_LOG, "".join(json.dumps(line) + "\n" for line in log))
        for name, given in answers.items():
            store.write_json(folder / "responses" / f"{name}.json", given)
        layer, multiplier, result = max(runs, key=lambda r: r[2]["trait_mean"] if r[2]["coherence_mean"] >= 77 else -1)
        chosen = {"layer": layer, "multiplier": multiplier, "coefficient": 60 * multiplier, "trait_mean": result["trait_mean"],
                  "coherence_mean": result["coherence_mean"], "delta": result["trait_mean"] - 50.0, "valid": True,
                  "method": best["prompt[-1]"]["method"], "position": "prompt[-1]", "component": "residual"}
        arts.write(Steering, {"baseline": log[1]["result"], "best": chosen, "best_per_layer": [chosen], "runs": len(runs),
                              "min_coherence": 77.0}, trait, "chat")
        arts.write(BestVector, {"trait": trait, "rule": "steering: highest delta at coherence >= 77", "variant": "chat",
                                "source_variant": "chat", "position": "prompt[-1]", "component": "residual",
                                "method": chosen["method"], "layer": layer, "multiplier": multiplier,
                                "coefficient": chosen["coefficient"], "baseline": 50.0, "trait_mean": chosen["trait_mean"],
                                "coherence_mean": chosen["coherence_mean"], "delta": chosen["delta"]}, trait)
    _clone_traits(store, exp.name, traits)

    arts.write(Calibration, {"variant": "chat", "layers": list(range(N_LAYERS)), "n_tokens": 2000, "top_k": 5, "min_layers": 3,
                             "massive": [{"layer": layer, "dims": [{"dim": 7, "ratio": 40.0}]} for layer in range(N_LAYERS)],
                             "recurring_dims": [7], "components": {}}, "chat")
    replies = {}
    for variant in ("chat", "other"):
        items = [{"id": str(i + 1), "prompt": _sentence(rng, 7), "system_prompt": None,
                  "prompt_ids": list(range(1, PROMPT_TOKENS + 1)), "response_ids": list(range(100, 100 + RESPONSE_TOKENS)),
                  "response": _sentence(rng, RESPONSE_TOKENS - 5)} for i in range(N_PROMPTS)]
        replies[variant] = items
        arts.write(InferenceResponses, {"prompt_set": "synth/general", "variant": variant, "model": model, "mode": "greedy",
                                        "max_new_tokens": RESPONSE_TOKENS, "input_hashes": {"prompt_set": "0"}, "items": items},
                   "synth/general", variant)

    # projections: every trait at best,best+2 (past the last layer skipped), ‖h‖ at every layer monitored
    per_trait = {t: [la for la in ((7 * i) % N_LAYERS, (7 * i) % N_LAYERS + 2) if la < N_LAYERS] for i, t in enumerate(traits)}
    layers = list(range(N_LAYERS))
    n_tokens = PROMPT_TOKENS + RESPONSE_TOKENS
    pool = [[round(rng.gauss(0, 5), 5) for _ in range(n_tokens)] for _ in range(997)]  # rows of scores, drawn from
    norms = [[round(abs(rng.gauss(100, 10)), 5) for _ in range(n_tokens)] for _ in range(97)]
    items = []
    for it in replies["chat"]:
        items.append({"id": it["id"], "prompt_len": PROMPT_TOKENS,
                      "tokens": ["<|im_start|>", "user", "\u010a"] + [f"\u0120{rng.choice(WORDS)}" for _ in range(n_tokens - 3)],
                      "token_ids": list(range(n_tokens)), "response": it["response"],
                      "scores": {t: {str(la): rng.choice(pool) for la in per_trait[t]} for t in traits},
                      "norms": {str(la): rng.choice(norms) for la in layers}})
    arts.write(Projections, {"prompt_set": "synth/general", "variant": "chat", "layers": layers,
                             "traits": {t: {"position": "response[:5]", "component": "residual", "method": "probe",
                                            "layers": per_trait[t]} for t in traits},
                             "mode": "raw", "centred": False, "cleaned": {}, "response_only": False, "skipped_traits": [],
                             "computed_from": "model", "items": items}, "synth/general", "chat")

    # variant diff: every trait × layer, every prompt's token deltas at the peak (as compare_variants writes)
    diff_traits = {}
    token_pool = [[f" {rng.choice(WORDS)}" for _ in range(RESPONSE_TOKENS)] for _ in range(97)]
    delta_pool = [[round(rng.gauss(0, 2), 4) for _ in range(RESPONSE_TOKENS)] for _ in range(997)]
    for trait in traits:
        per_layer = [{"layer": la, "cohens_d": rng.gauss(0, 1), "cohens_d_paired": rng.gauss(0, 2), "cosine": rng.uniform(-0.5, 0.5),
                      "mean_a": rng.gauss(0, 3), "mean_b": rng.gauss(0, 3), "delta": rng.gauss(0, 1),
                      "correlation_with_peak": rng.uniform(0, 1)} for la in range(N_LAYERS)]
        peak = max(per_layer, key=lambda r: abs(r["cohens_d"]))
        prompts = [{"id": it["id"], "mean_delta": rng.gauss(0, 1), "tokens": rng.choice(token_pool),
                    "deltas": rng.choice(delta_pool)} for it in replies["chat"]]
        prompts.sort(key=lambda p: -abs(p["mean_delta"]))
        clauses = sorted(({"id": it["id"], "clause": _sentence(rng, 6), "delta": rng.gauss(0, 2)} for it in replies["chat"]),
                         key=lambda c: -abs(c["delta"]))
        diff_traits[trait] = {"peak": peak, "layers": per_layer, "top_clauses": clauses, "top_prompts": prompts[:5],
                              "prompts": prompts}
    arts.write(VariantDiff, {"a": "chat", "b": "other", "prompt_set": "synth/general", "n_prompts": N_PROMPTS, "sign": "B - A",
                             "top_pct": 5, "traits": diff_traits, "vectors": {}}, "chat_vs_other/synth/general")

    trait = traits[0]
    return {
        "experiment": page_path("synth", "experiment"),
        "extraction": page_path("synth", "extraction", trait=trait),
        "steering": page_path("synth", "steering", trait=trait, variant="chat"),
        "dynamics": page_path("synth", "dynamics", prompt_set="synth/general", variant="chat"),
        "comparison": page_path("synth", "comparison", a="chat", b="other", prompt_set="synth/general"),
    }


# --------------------------------------------------------------------------- measuring pages
# JavaScript: true once the page is drawn (its data's tables and charts all there).
DRAWN = {
    "experiment": f"document.querySelectorAll('table.experiment tbody tr').length >= {N_TRAITS}",
    "extraction": f"document.querySelectorAll('#tf-main .chart svg').length >= {2 * len(POSITIONS)}"
                  " && document.querySelector('table.vetting tbody tr') !== null",
    "steering": "document.querySelectorAll('#tf-main .chart svg').length >= 2"
                " && document.querySelector('table.responses tbody tr') !== null",
    "dynamics": "document.querySelectorAll('#tf-main .chart svg').length >= 2 && document.querySelector('.tokens .tok') !== null",
    "comparison": "document.querySelectorAll('#tf-main .chart svg').length >= 1 && document.querySelector('table.clauses tbody tr') !== null",
}


def _get(port: int, route: str) -> tuple[int, bytes, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    try:
        conn.request("GET", route)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return response.status, body, time.perf_counter() - started


def _browser_times(port: int, routes: dict[str, str]) -> dict[str, dict]:
    """Per page, median ms from navigation start: the HTML arrived (``html_ms``), app.js ran (it
    parses the page's data and builds the DOM before DOMContentLoaded: ``dom_ms``), and the page is
    drawn (``drawn_ms``: Vega renders its charts after that)."""
    from playwright.sync_api import sync_playwright

    out: dict[str, dict] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1500, "height": 1000})
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"http://127.0.0.1:{port}{routes['experiment']}")  # the static files into the cache
            page.wait_for_function(DRAWN["experiment"], timeout=60_000)
            for kind, route in routes.items():
                drawn, html, dom = [], [], []
                for _ in range(BROWSER_REPEATS):
                    page.goto("about:blank")
                    page.goto(f"http://127.0.0.1:{port}{route}", wait_until="commit", timeout=60_000)
                    page.wait_for_function(DRAWN[kind], timeout=60_000, polling="raf")
                    drawn.append(page.evaluate("performance.now()"))
                    timing = page.evaluate("(({responseEnd, domContentLoadedEventEnd}) => [responseEnd, domContentLoadedEventEnd])"
                                           "(performance.getEntriesByType('navigation')[0])")
                    html.append(timing[0])
                    dom.append(timing[1])
                if errors:
                    raise RuntimeError(f"{kind}: the page threw: {errors}")
                out[kind] = {"drawn_ms": statistics.median(drawn), "html_ms": statistics.median(html),
                             "dom_ms": statistics.median(dom)}
        finally:
            browser.close()
    return out


def _profile(viewer, route: str, top: int = 12) -> str:
    """cProfile of the server's work for one page (its data and its HTML), top functions by cumulative time."""
    from urllib.parse import parse_qs, urlsplit

    from traitflow.view.html import page_html

    url = urlsplit(route)
    parts = [p for p in url.path.split("/") if p]
    page = parts[1] if len(parts) == 2 else "experiment"
    params = {k: v[-1] for k, v in parse_qs(url.query).items()}
    profiler = cProfile.Profile()
    profiler.enable()
    body = viewer.page(parts[0], page, params)
    page_html(body, page)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(top)
    lines = [line.replace(str(REPO) + "/", "").replace(os.path.dirname(json.__file__.rsplit("/", 1)[0]) + "/", "")
             for line in text.getvalue().splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(lines[start:])


def _pages(tmp: Path) -> list[dict]:
    from traitflow.view.app import make_server

    root = tmp / "synth"
    started = time.perf_counter()
    _write_specs(root)
    routes = _write_artifacts(root)
    built = time.perf_counter() - started
    size = sum(f.stat().st_size for f in (root / "experiments").rglob("*") if f.is_file())
    print(f"  synthetic experiment: {N_TRAITS} traits, {N_LAYERS} layers, {size / 1e6:.0f} MB of artifacts, "
          f"written in {built:.1f} s", flush=True)

    httpd = make_server(root, port=0, log=lambda line: None)
    port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        server: dict[str, dict] = {}
        for kind, route in routes.items():
            # The first request parses the page's artifacts; later ones find them parsed (the viewer keeps
            # parsed JSON while the file is unchanged), so both are shown.
            status, body, first = _get(port, route)
            if status != 200:
                raise RuntimeError(f"{route}: HTTP {status}: {body[:500]!r}")
            times = [_get(port, route)[2] for _ in range(SERVER_REPEATS)]
            server[kind] = {"bytes": len(body), "ms": 1000 * statistics.median(times), "first_ms": 1000 * first}
        browser: dict[str, dict] | None = None
        why_not = ""
        try:
            import playwright  # noqa: F401
        except ImportError:
            why_not = "playwright is not installed"
        if not why_not and not Path(CHROMIUM).exists():
            why_not = f"no Chromium at {CHROMIUM}"
        if not why_not:
            browser = _browser_times(port, routes)
        slow = [kind for kind in routes if server[kind]["ms"] > 1000 * TARGET_S
                or (browser is not None and browser[kind]["drawn_ms"] > 1000 * TARGET_S)]
        profiles = {}
        if slow:
            from traitflow.view.app import Viewer

            viewer = Viewer(root)  # the viewer's own state, in this thread
            viewer.project()
            profiles = {kind: _profile(viewer, routes[kind]) for kind in slow}
    finally:
        httpd.shutdown()
        httpd.server_close()

    print(f"\n  {'page':11} {'bytes':>11} {'first ms':>9} {'server ms':>10} {'html ms':>8} {'DOM ms':>7} {'drawn ms':>9}  vs {TARGET_S:g} s")
    entries = []
    for kind in routes:
        s, b = server[kind], (browser or {}).get(kind)
        total = b["drawn_ms"] if b else s["ms"]
        verdict = "PASS" if total <= 1000 * TARGET_S else "FAIL"
        nan = float("nan")
        print(f"  {kind:11} {s['bytes']:>11,} {s['first_ms']:>9.0f} {s['ms']:>10.0f} {b['html_ms'] if b else nan:>8.0f} "
              f"{b['dom_ms'] if b else nan:>7.0f} {b['drawn_ms'] if b else nan:>9.0f}  {verdict}")
        entries.append({"name": f"view: {kind} page, server's first answer (parses its artifacts)", "value": s["first_ms"] / 1000,
                        "unit": "s", "target": "< 1 s", "detail": routes[kind]})
        entries.append({"name": f"view: {kind} page, server (HTTP, median of {SERVER_REPEATS})", "value": s["ms"] / 1000,
                        "unit": "s", "target": "< 1 s", "detail": f"{s['bytes']} bytes; {routes[kind]}"})
        if b:
            entries.append({"name": f"view: {kind} page, drawn in Chromium (median of {BROWSER_REPEATS})",
                            "value": b["drawn_ms"] / 1000, "unit": "s", "target": "< 1 s",
                            "detail": f"HTML arrived at {b['html_ms']:.0f} ms, DOM built at {b['dom_ms']:.0f} ms"})
    print("  (first: the first request, which parses the page's artifacts; server: later requests, median)")
    print("  (server: over HTTP; html, DOM, drawn: in Chromium from navigation start, when the HTML had arrived,\n"
          "  app.js had run (data parsed, DOM built, charts begun: DOMContentLoaded), the charts were drawn)")
    if browser is None:
        print(f"  (no browser timings: {why_not})")
    for kind, text in profiles.items():
        print(f"\n  {kind} is over {TARGET_S:g} s; the server's work, cProfile by cumulative time:\n")
        print("\n".join("    " + line for line in text.splitlines()))
    return entries


# --------------------------------------------------------------------------- Live chat
def _viewer_turn(port: int) -> tuple[float, list[float], list[int], list[int]]:
    """One Live chat turn: seconds to each token (from sending), the prompt and response ids."""
    body = json.dumps({"variant": "chat", "messages": [{"role": "user", "content": CHAT_PROMPT}], "system": None,
                       "steer": CHAT_STEER, "max_new_tokens": CHAT_TOKENS}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    stamps: list[float] = []
    done = None
    started = time.perf_counter()
    try:
        conn.request("POST", "/api/demo/chat", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        for line in response:
            event = json.loads(line)
            if "error" in event:
                raise RuntimeError(f"Live chat: {event['error']}")
            if "token" in event:
                stamps.append(time.perf_counter() - started)
            if "done" in event:
                done = event["done"]
    finally:
        conn.close()
    if done is None:
        raise RuntimeError("Live chat: the stream ended without its done event")
    return time.perf_counter() - started, stamps, done["prompt_ids"], done["response_ids"]


def _monitor_turn(root: Path) -> tuple[float, list[float], list[int], list[int]]:
    """One `traitflow monitor` run in this process: seconds to each token it writes (from the call)."""
    import traitflow.monitor.live as live

    stamps: list[float] = []
    original = live.generate_live
    started = time.perf_counter()

    def timed(*args, on_token=None, **kwargs):
        def on(i, piece, scores):
            on_token(i, piece, scores)  # the token is written to the terminal here
            stamps.append(time.perf_counter() - started)
        return original(*args, on_token=on, **kwargs)

    live.generate_live = timed
    try:
        result = live.run_monitor(root, "demo", "chat", CHAT_PROMPT, steer=CHAT_STEER, max_new_tokens=CHAT_TOKENS,
                                  out=io.StringIO(), colour=False)
    finally:
        live.generate_live = original
    return time.perf_counter() - started, stamps, result.prompt_ids, result.response_ids


def _per_token(stamps: list[float]) -> float:
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")


def _chat(tmp: Path) -> list[dict]:
    import torch

    from traitflow.view.app import make_server

    root = tmp / "demo"
    for folder in ("specs", "datasets", "experiments"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns(".locks"))
    with bench_threads() as threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        for name in ("TRAITFLOW_STORAGE", "TRAITFLOW_NO_SERVER", "TRAITFLOW_ROOT"):
            env.pop(name, None)
        server, said = start_server(root, env, "chat")
        httpd = make_server(root, port=0, log=lambda line: None)
        port = httpd.server_address[1]
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            viewer_ref, monitor_ref = _viewer_turn(port), _monitor_turn(root)  # warm-up: both warm from here
            if viewer_ref[2:] != monitor_ref[2:]:
                raise RuntimeError("Live chat and traitflow monitor disagree on the prompt or the reply's token ids")
            rounds = {"viewer": [], "monitor": []}
            for _ in range(CHAT_REPEATS):  # interleaved: the same machine load for both
                rounds["viewer"].append(_viewer_turn(port))
                rounds["monitor"].append(_monitor_turn(root))
        finally:
            httpd.shutdown()
            httpd.server_close()
            stop_server(server)
        device = "cuda" if torch.cuda.is_available() else "cpu"
    n = len(viewer_ref[3])
    med = {side: {"ttft": statistics.median(r[1][0] for r in runs), "per_token": statistics.median(_per_token(r[1]) for r in runs),
                  "total": statistics.median(r[0] for r in runs)} for side, runs in rounds.items()}
    ttft_ratio = med["viewer"]["ttft"] / med["monitor"]["ttft"]
    token_ratio = med["viewer"]["per_token"] / med["monitor"]["per_token"]
    print(f"\n  Live chat vs traitflow monitor: demo/chat, {CHAT_PROMPT!r}, steer {CHAT_STEER}, {n} tokens, "
          f"{device}, {threads} torch thread(s) each side, median of {CHAT_REPEATS}, warm")
    print(f"  {'':9} {'first token ms':>14} {'ms/token':>9} {'tokens/s':>9} {'turn ms':>8}")
    for side in ("viewer", "monitor"):
        m = med[side]
        print(f"  {side:9} {1000 * m['ttft']:>14.1f} {1000 * m['per_token']:>9.2f} {1 / m['per_token']:>9.1f} {1000 * m['total']:>8.1f}")
    print(f"  viewer / monitor: first token {ttft_ratio:.2f}x, per token {token_ratio:.2f}x  (target <= {CHAT_TARGET:g}x: "
          f"{'PASS' if max(ttft_ratio, token_ratio) <= CHAT_TARGET else 'FAIL'})")
    detail = (f"{n} tokens, {device}, {threads} thread(s); viewer {1000 * med['viewer']['ttft']:.0f} ms to first, "
              f"{1000 * med['viewer']['per_token']:.1f} ms/token; monitor {1000 * med['monitor']['ttft']:.0f} ms, "
              f"{1000 * med['monitor']['per_token']:.1f} ms/token")
    return [
        {"name": "view: Live chat / monitor, time to first token", "value": ttft_ratio, "unit": "x", "target": "<= 1.2",
         "detail": detail},
        {"name": "view: Live chat / monitor, time per token", "value": token_ratio, "unit": "x", "target": "<= 1.2",
         "detail": detail},
        {"name": "view: Live chat tokens/s", "value": 1 / med["viewer"]["per_token"], "unit": "tok/s", "target": "report"},
    ]


def run() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        return _pages(Path(tmp)) + _chat(Path(tmp))


if __name__ == "__main__":
    for entry in run():
        print(entry)
