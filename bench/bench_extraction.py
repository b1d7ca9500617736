"""Vector extraction side by side: traitflow vs steering-vectors 0.12.2 (and repeng 0.4.0).

One trait (``datasets/traits/toy/optimism``, 50 system-prompt pairs) on two models: the trained
toy chat model (``datasets/models/toy-chat``, 6 layers, hidden 192) and a random-initialised
~30M-parameter Llama (8 layers, hidden 512) that uses the toy tokenizer and chat template. The
pairs are split by pair with ``split_indices(..., val_split=0.2, seed=0)`` (40 train / 10 held out).
Every library reads the last prompt token (``prompt[-1]``; steering-vectors' default
``read_token_index=-1`` and repeng's last token) at every layer, 16 sequences per forward pass,
from the same rendered prompts (the chat-template text; its tokenisation is our prompt ids).

Timed, on the training pairs (median of ``REPEATS``, interleaved, after one warm-up):

- traitflow: ``prompt_ids`` + ``capture_pooled`` + ``mean_diff``, ``pca``, ``probe`` (paired) per layer;
- steering-vectors: ``extract_activations`` once + ``aggregate_activations`` with ``mean_aggregator``,
  ``pca_aggregator``, ``logistic_aggregator`` (its API's way to fit several aggregators on one
  extraction; ``train_steering_vector`` would extract once per aggregator);
- repeng: ``ControlVector.train(method="pca_diff")`` (one forward with all hidden states + PCA).

Entries (higher is better for traitflow in all of them):

- ``extraction_time_ratio/<model>/steering-vectors`` = their time / ours (all three methods);
- ``extraction_time_ratio/<model>/repeng`` = repeng's time / ours for capture + ``pca`` only;
- ``heldout_acc_ratio/<model>/<method>`` = our held-out accuracy / steering-vectors' for the
  matching aggregator, and ``.../pca-vs-repeng``. Held-out accuracy: each direction projected on the
  held-out activations, thresholded at the midpoint of the training class means (the rule of
  ``extraction_eval``), averaged over layers. repeng's last layer is left out of its comparison:
  its ``hidden_states[-1]`` has the final norm applied, so it is not the residual stream there.

Details carry the absolute accuracies, per-library times and the direction cosines. On CPU,
torch runs with ``TRAITFLOW_BENCH_THREADS`` intra-op threads (default 1) for every library.
"""

import contextlib
import io
import statistics
import time

from bench.common import LLAMA_30M, ROOT, TOY, bench_threads

TRAIT = ROOT / "datasets" / "traits" / "toy" / "optimism"
BATCH = 16
REPEATS = 5
VAL_SPLIT, SEED = 0.2, 0
OURS = {"mean_diff": "mean_aggregator", "pca": "pca_aggregator", "probe": "logistic_aggregator"}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _models():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from traitflow.model.loading import LoadedModel, load_model
    from traitflow.specs.models import ModelSpec

    toy = load_model(ModelSpec(name="toy-chat", model=TOY, device="cpu", dtype="float32"), ROOT)
    yield "toy-chat", toy
    torch.manual_seed(0)
    cfg = dict(LLAMA_30M, pad_token_id=toy.pad_token_id, eos_token_id=toy.tokenizer.eos_token_id)
    model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=512, **cfg)).eval()
    yield "llama-30M", LoadedModel(
        model=model, tokenizer=toy.tokenizer, spec=ModelSpec(name="llama-30M", model="llama-30M", device="cpu", dtype="float32"),
        device=torch.device("cpu"), dtype=torch.float32, n_layers=cfg["num_hidden_layers"], hidden_size=cfg["hidden_size"],
        uses_chat_template=True, source="random", revision=None,
    )


def _import_peers():
    import numpy as np
    import steering_vectors

    if not hasattr(np, "float_"):  # repeng 0.4.0 annotates with np.float_, removed in numpy 2
        np.float_ = np.float64
    try:
        import repeng
    except ImportError:
        repeng = None
    return steering_vectors, repeng


def _heldout_accuracy(vector, train_pos, train_neg, val_pos, val_neg) -> float:
    from traitflow.extract.evaluate import score_vector

    v = vector.float() / vector.float().norm()
    threshold = float(((train_pos @ v).mean() + (train_neg @ v).mean()) / 2)
    return score_vector(v, threshold, val_pos, val_neg)[0]


def _bench_model(name: str, loaded, sv, repeng) -> list[dict]:
    import torch

    from traitflow.data.traits import load_trait
    from traitflow.extract.methods import METHODS
    from traitflow.extract.vectors import split_indices
    from traitflow.model.chat import format_prompt, prompt_ids
    from traitflow.model.hooks import capture_pooled

    trait = load_trait(TRAIT, "toy/optimism")
    n_pairs = len(trait.positive)
    labels = torch.cat([torch.ones(n_pairs), torch.zeros(n_pairs)]).long()
    groups = torch.cat([torch.arange(n_pairs), torch.arange(n_pairs)])
    train_idx, _ = split_indices(labels, groups, VAL_SPLIT, SEED)
    train_pairs = sorted(int(g) for g in groups[train_idx].unique())
    val_pairs = sorted(set(range(n_pairs)) - set(train_pairs))
    text = {side: [format_prompt(loaded, s.prompt, s.system_prompt)[0] for s in getattr(trait, side)] for side in ("positive", "negative")}
    layers = list(range(loaded.n_layers))
    model, tokenizer = loaded.model, loaded.tokenizer

    # Activations every direction is evaluated on (untimed): ours, which steering-vectors reproduces.
    all_seqs = [(prompt_ids(loaded, s.prompt, s.system_prompt), []) for s in trait.positive + trait.negative]
    acts = capture_pooled(loaded, all_seqs, layers, ["prompt[-1]"], batch_size=BATCH)["prompt[-1]"]
    pos_acts, neg_acts = acts[:n_pairs], acts[n_pairs:]
    sides = {li: (pos_acts[train_pairs, li], neg_acts[train_pairs, li], pos_acts[val_pairs, li], neg_acts[val_pairs, li]) for li in layers}

    def ours(methods: list[str]) -> dict[str, dict[int, torch.Tensor]]:
        scenarios = [trait.positive[i] for i in train_pairs] + [trait.negative[i] for i in train_pairs]
        seqs = [(prompt_ids(loaded, s.prompt, s.system_prompt), []) for s in scenarios]
        a = capture_pooled(loaded, seqs, layers, ["prompt[-1]"], batch_size=BATCH)["prompt[-1]"]
        p, n = a[: len(train_pairs)], a[len(train_pairs) :]
        return {m: {li: METHODS[m](p[:, li], n[:, li], seed=SEED, paired=True) for li in layers} for m in methods}

    def theirs_sv() -> dict[str, dict[int, torch.Tensor]]:
        samples = [(text["positive"][i], text["negative"][i]) for i in train_pairs]
        p, n = sv.extract_activations(model, tokenizer, samples, layers=layers, read_token_index=-1, batch_size=BATCH)
        return {m: sv.aggregate_activations(p, n, getattr(sv, agg)()) for m, agg in OURS.items()}

    def theirs_repeng() -> dict[int, torch.Tensor]:
        dataset = [repeng.DatasetEntry(text["positive"][i], text["negative"][i]) for i in train_pairs]
        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bars
            vector = repeng.ControlVector.train(model, tokenizer, dataset, hidden_layers=layers, batch_size=BATCH, method="pca_diff")
        return {li: torch.as_tensor(d) for li, d in vector.directions.items()}

    runners = {"traitflow": lambda: ours(list(OURS)), "traitflow-pca": lambda: ours(["pca"]), "steering-vectors": theirs_sv}
    if repeng is not None:
        runners["repeng"] = theirs_repeng
    results, times = {}, {k: [] for k in runners}
    with warnings_quiet():
        for key, fn in runners.items():  # warm-up; the fitted directions are deterministic
            results[key] = fn()
        for _ in range(REPEATS):
            for key, fn in runners.items():
                times[key].append(_timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}

    def acc(vectors: dict[int, torch.Tensor], use_layers) -> float:
        return statistics.mean(_heldout_accuracy(vectors[li], *sides[li]) for li in use_layers)

    def cos(a: dict, b: dict, use_layers) -> list[float]:
        return [round(float(a[li].double() @ b[li].double() / (a[li].double().norm() * b[li].double().norm())), 4) for li in use_layers]

    n_params = sum(p.numel() for p in model.parameters())
    common = f"{n_params / 1e6:.1f}M params, {len(layers)} layers, {len(train_pairs)} train / {len(val_pairs)} held-out pairs, threads {torch.get_num_threads()}, batch {BATCH}, median of {REPEATS}"
    entries = [{
        "name": f"extraction_time_ratio/{name}/steering-vectors",
        "value": med["steering-vectors"] / med["traitflow"],
        "unit": "x",
        "target": ">= 1.0",
        "detail": f"{common}: traitflow {med['traitflow'] * 1e3:.0f} ms (capture + mean_diff, pca, probe), "
                  f"steering-vectors {med['steering-vectors'] * 1e3:.0f} ms (extract_activations + 3 aggregators)",
    }]
    if "repeng" in results:
        entries.append({
            "name": f"extraction_time_ratio/{name}/repeng",
            "value": med["repeng"] / med["traitflow-pca"],
            "unit": "x",
            "target": ">= 1.0",
            "detail": f"{common}: traitflow {med['traitflow-pca'] * 1e3:.0f} ms (capture + pca), repeng {med['repeng'] * 1e3:.0f} ms (ControlVector.train pca_diff)",
        })
    for method in OURS:
        ours_acc, sv_acc = acc(results["traitflow"][method], layers), acc(results["steering-vectors"][method], layers)
        entries.append({
            "name": f"heldout_acc_ratio/{name}/{method}",
            "value": ours_acc / sv_acc if sv_acc else float("nan"),
            "unit": "x",
            "target": ">= 0.98",
            "detail": f"held-out accuracy (mean over layers) traitflow {ours_acc:.3f}, steering-vectors {OURS[method]} {sv_acc:.3f}; "
                      f"cosine per layer (their aggregator on the raw activations) {cos(results['traitflow'][method], results['steering-vectors'][method], layers)}",
        })
    if "repeng" in results:
        inner = layers[:-1]
        ours_acc, rp_acc = acc(results["traitflow"]["pca"], inner), acc(results["repeng"], inner)
        entries.append({
            "name": f"heldout_acc_ratio/{name}/pca-vs-repeng",
            "value": ours_acc / rp_acc if rp_acc else float("nan"),
            "unit": "x",
            "target": ">= 0.98",
            "detail": f"held-out accuracy (mean over layers 0-{inner[-1]}) traitflow pca {ours_acc:.3f}, repeng pca_diff {rp_acc:.3f}; "
                      f"|cosine| per layer {[abs(c) for c in cos(results['traitflow']['pca'], results['repeng'], inner)]}",
        })
    return entries


@contextlib.contextmanager
def warnings_quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def run() -> list[dict]:

    try:
        sv, repeng = _import_peers()
    except ImportError as exc:
        print(f"bench_extraction: skipped, steering-vectors is not installed ({exc}); "
              "pip install --no-deps steering-vectors==0.12.2 repeng==0.4.0 && pip install scikit-learn gguf")
        return []
    with bench_threads():
        entries: list[dict] = []
        for name, loaded in _models():
            entries += _bench_model(name, loaded, sv, repeng)
        return entries


if __name__ == "__main__":
    for entry in run():
        print(entry)
