"""Steered generation: hook overhead, K configurations in one batch, and steering-vectors' ``apply``.

Two models: the trained toy chat model (``datasets/models/toy-chat``, 6 layers, hidden 192) and a
random-initialised ~30M-parameter Llama (8 layers, hidden 512) that uses the toy tokenizer and
chat template. Prompts: the first ``N_PROMPTS`` of ``datasets/inference/toy/general.json`` through
the chat template. Greedy, ``NEW_TOKENS`` new tokens; end-of-sequence is switched off for the
bench (on private model copies) so every variant generates exactly the same number of tokens,
whatever the steering does to the text.

Timed interleaved (the order rotates each round), median of ``REPEATS`` after one warm-up
round, same torch thread count for all:

- ``plain``: :func:`traitflow.model.generate.generate`, one batch of all prompts;
- ``steered``: :func:`traitflow.steer.steered_generate` with one ``Steer`` at the middle layer
  (``positions="response"``, the default), same batch;
- ``steered_all``: the same with ``positions="all"`` (what steering-vectors does);
- ``sv_apply``: ``generate`` inside steering-vectors 0.12.2 ``SteeringVector.apply`` (same layer,
  same ``c · v̂``, ``min_token_index=0``: every position, padding included);
- ``k_batched``: K = 8 configurations (different layers and coefficients, one ``Ablate`` and one
  ``Cap`` among them) × all prompts in one ``steered_generate`` call (one batch of K × prompts);
- ``k_sequential``: the same 8 configurations run one after another (8 calls, one batch each).

Entries (each the median over rounds of the ratio of two times taken in the same round):

- ``steered_vs_plain/<model>`` = steered / plain (target <= 1.05); its detail also gives the time
  spent inside the steering arithmetic itself, measured directly (end-to-end ratios on a shared
  2-core machine move by several per cent from run to run; the hooks' own share does not);
- ``k8_batched_speedup/<model>`` = k_sequential / k_batched (report; higher is better);
- ``hook_overhead_vs_steering_vectors/<model>`` = steered_all / sv_apply (same work on the same
  model; target <= 1.05). The detail carries each one's overhead over plain.

On CPU, torch runs with ``TRAITFLOW_BENCH_THREADS`` intra-op threads (default 1, restored
afterwards) for every variant.
"""

import json
import statistics
import time
from typing import Any

from bench.common import LLAMA_30M, ROOT, TOY, bench_threads

PROMPT_SET = ROOT / "datasets" / "inference" / "toy" / "general.json"
N_PROMPTS = {"toy-chat": 12, "llama-30M": 8}
NEW_TOKENS = {"toy-chat": 32, "llama-30M": 24}
K = 8
REPEATS = 9
K_REPEATS = 3


class _NoEosTokenizer:
    """The tokenizer with no end-of-sequence id, so generation always runs to max_new_tokens."""

    eos_token_id = None

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer(*args, **kwargs)


def _without_eos(loaded: Any) -> Any:
    import dataclasses

    loaded.model.generation_config.eos_token_id = None  # private copy of the model
    loaded.model.config.eos_token_id = None
    return dataclasses.replace(loaded, tokenizer=_NoEosTokenizer(loaded.tokenizer))


def _models():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from traitflow.model.loading import LoadedModel, load_model
    from traitflow.specs.models import ModelSpec

    toy = load_model(ModelSpec(name="chat", model=TOY, device="cpu", dtype="float32"), ROOT)
    yield "toy-chat", _without_eos(toy)
    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=512, pad_token_id=toy.pad_token_id, **LLAMA_30M)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = toy.pad_token_id
    for p in model.parameters():
        p.requires_grad_(False)
    big = LoadedModel(
        model=model,
        tokenizer=toy.tokenizer,
        spec=ModelSpec(name="llama-30M", model="llama-30M", device="cpu", dtype="float32"),
        device=torch.device("cpu"),
        dtype=torch.float32,
        n_layers=LLAMA_30M["num_hidden_layers"],
        hidden_size=LLAMA_30M["hidden_size"],
        uses_chat_template=True,
        source="random",
        revision=None,
    )
    yield "llama-30M", _without_eos(big)


def _prompts(loaded: Any, n: int) -> list[list[int]]:
    from traitflow.model.chat import prompt_ids

    texts = [p["text"] for p in json.loads(PROMPT_SET.read_text())["prompts"][:n]]
    return [prompt_ids(loaded, text) for text in texts]


def _median_norm(loaded: Any, prompts: list[list[int]], layer: int) -> float:
    import torch

    from traitflow.model.hooks import project_tokens

    proj = project_tokens(loaded, [(p, []) for p in prompts], [layer], torch.ones(1, 1, loaded.hidden_size))
    return float(torch.cat([p.norms[0] for p in proj]).median())



def _time_interleaved(fns: dict[str, Any], repeats: int) -> dict[str, list[float]]:
    """Per-round times of each function: one warm-up round, then rounds in a rotating order."""
    keys = list(fns)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(1 + repeats):
        for key in keys[i % len(keys) :] + keys[: i % len(keys)]:
            start = time.perf_counter()
            fns[key]()
            if i > 0:
                times[key].append(time.perf_counter() - start)
    return times


def _ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of a/b timed in the same round (robust to a neighbour's load drifting)."""
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def _time_in_hooks(fn: Any) -> float:
    """Seconds spent in the steering arithmetic (``interventions._apply``) while ``fn`` runs.

    A direct measure of the hooks' cost, immune to a busy machine's noise in end-to-end times
    (it leaves out only block 0's few-op position bookkeeping at each forward).
    """
    from traitflow.steer import interventions

    original = interventions._apply
    spent = [0.0]

    def timed(*args: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args)
        finally:
            spent[0] += time.perf_counter() - start

    interventions._apply = timed
    try:
        fn()
    finally:
        interventions._apply = original
    return spent[0]


def _bench_model(name: str, loaded: Any, threads: int) -> list[dict]:
    import torch
    from steering_vectors import SteeringVector

    from traitflow.model.generate import generate
    from traitflow.steer import Ablate, Cap, Steer, steered_generate

    prompts = _prompts(loaded, N_PROMPTS[name])
    n, new = len(prompts), NEW_TOKENS[name]
    mid = loaded.n_layers // 2
    coefficient = 0.5 * _median_norm(loaded, prompts, mid)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(loaded.hidden_size, generator=g)
    unit = v / v.norm()
    one = [(Steer(v, mid, coefficient),)]
    one_all = [(Steer(v, mid, coefficient, "all"),)]
    sv = SteeringVector({mid: coefficient * unit}, "decoder_block")

    configs = []
    for k in range(K - 2):
        w = torch.randn(loaded.hidden_size, generator=g)
        configs.append((Steer(w, k % loaded.n_layers, coefficient * (k - 2) / 4),))  # incl. coefficient 0
    configs.append((Ablate(v),))
    configs.append((Cap(v, mid, floor=-1.0, ceiling=1.0),))
    rows = [k for k in range(K) for _ in prompts]

    def plain() -> Any:
        return generate(loaded, prompts, new, batch_size=n)

    def steered() -> Any:
        return steered_generate(loaded, prompts, one, [0] * n, new, batch_size=n)

    def steered_all() -> Any:
        return steered_generate(loaded, prompts, one_all, [0] * n, new, batch_size=n)

    def sv_apply() -> Any:
        with sv.apply(loaded.model, multiplier=1.0, min_token_index=0):
            return generate(loaded, prompts, new, batch_size=n)

    def k_batched() -> Any:
        return steered_generate(loaded, prompts * K, configs, rows, new, batch_size=K * n)

    def k_sequential() -> Any:
        return [steered_generate(loaded, prompts, [c], [0] * n, new, batch_size=n) for c in configs]

    # sanity: every variant generates exactly `new` tokens; steering-vectors and ours agree
    assert all(len(x.response_ids) == new for x in plain())
    ours_all, theirs = steered_all(), sv_apply()
    agree = sum(a.response_ids == b.response_ids for a, b in zip(ours_all, theirs, strict=True))
    batched_ids = [x.response_ids for x in k_batched()]
    sequential_ids = [x.response_ids for gens in k_sequential() for x in gens]
    k_equal = sum(a == b for a, b in zip(batched_ids, sequential_ids, strict=True))

    times = _time_interleaved({"plain": plain, "steered": steered, "steered_all": steered_all, "sv_apply": sv_apply}, REPEATS)
    times.update(_time_interleaved({"k_batched": k_batched, "k_sequential": k_sequential}, K_REPEATS))
    med = {k: statistics.median(v) for k, v in times.items()}
    in_hooks = statistics.median(_time_in_hooks(steered) for _ in range(3))
    n_params = sum(p.numel() for p in loaded.model.parameters())
    base = (
        f"{n_params / 1e6:.1f}M params, {loaded.n_layers} layers, device {loaded.device}, threads {threads}, "
        f"{n} prompts x {new} new tokens, steer layer {mid} coef {coefficient:.1f} (0.5x median norm)"
    )
    ms = {k: f"{t * 1e3:.0f} ms" for k, t in med.items()}
    return [
        {
            "name": f"steered_vs_plain/{name}",
            "value": _ratio(times, "steered", "plain"),
            "unit": "x",
            "target": "<= 1.05",
            "detail": (
                f"{base}; median of {REPEATS}: plain {ms['plain']}, steered {ms['steered']}; time inside the steering "
                f"hooks {in_hooks * 1e3:.2f} ms = {in_hooks / med['plain'] * 100:.2f}% of plain"
            ),
        },
        {
            "name": f"k8_batched_speedup/{name}",
            "value": _ratio(times, "k_sequential", "k_batched"),
            "unit": "x",
            "target": "report (higher is better)",
            "detail": (
                f"{base}; {K} configs (6 steers at layers 0-{min(K - 3, loaded.n_layers - 1)} incl. coef 0, 1 ablate, 1 cap); "
                f"median of {K_REPEATS}: one batch of {K * n} rows {ms['k_batched']}, {K} x {n} rows one after another "
                f"{ms['k_sequential']}; batched ids equal sequential for {k_equal}/{len(batched_ids)} rows"
            ),
        },
        {
            "name": f"hook_overhead_vs_steering_vectors/{name}",
            "value": _ratio(times, "steered_all", "sv_apply"),
            "unit": "x",
            "target": "<= 1.05",
            "detail": (
                f"{base}; positions=all vs steering-vectors apply(min_token_index=0); median of {REPEATS}: "
                f"traitflow {ms['steered_all']} ({(_ratio(times, 'steered_all', 'plain') - 1) * 100:+.1f}% over plain), "
                f"steering-vectors {ms['sv_apply']} ({(_ratio(times, 'sv_apply', 'plain') - 1) * 100:+.1f}%); "
                f"same ids for {agree}/{n} prompts"
            ),
        },
    ]


def run() -> list[dict]:
    entries: list[dict] = []
    with bench_threads() as threads:
        for name, loaded in _models():
            entries += _bench_model(name, loaded, threads)
    return entries


if __name__ == "__main__":
    for entry in run():
        print(json.dumps(entry))
