"""Live monitoring overhead: ``generate_live`` (projection onto 3 traits every step) vs ``generate``.

For each model — the trained toy chat model (``datasets/models/toy-chat``, 6 layers, hidden 192)
and a random-initialised ~30M-parameter Llama (config as in bench_capture) — one prompt is
generated greedily, batch 1, 32 new tokens:

- ``generate``: :func:`traitflow.model.generate.generate` (``model.generate`` with a KV cache);
- ``live``: :func:`traitflow.monitor.live.generate_live` onto 3 random unit vectors at 3
  different layers (hooks computing ``h·v̂`` for the newest position, incremental detokenising,
  one extra partial forward to score the last token).

The random Llama never emits end-of-sequence (no eos ids), so both produce exactly 32 tokens;
the toy model stops where its greedy reply ends (the same for both, they agree token for token).
Timings are interleaved, median of several repeats. Entry ``live_vs_generate``: target <= 1.10.

``project_tokens_throughput``: :func:`traitflow.model.hooks.project_tokens` over 16 stored
prompt+response sequences (3 traits × 2 layers), in tokens per second (target: report).

On CPU the bench runs torch with ``TRAITFLOW_BENCH_THREADS`` intra-op threads (default 1).
"""

import statistics
import time

from bench.common import LLAMA_30M, ROOT, TOY, bench_threads, interleaved_medians, sync

NEW_TOKENS = 32
N_TRAITS = 3
N_SEQS = 16
REPEATS = 7
WARMUP = 1


class _IdTokenizer:
    """Decodes ids to their numbers: the random model's ids mean nothing to a real tokenizer."""

    pad_token_id = 0
    eos_token_id = None

    def decode(self, ids, skip_special_tokens=True):
        return "".join(f" {int(i)}" for i in ids)


def _models():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from traitflow.model.loading import LoadedModel, load_model
    from traitflow.specs.models import ModelSpec

    toy = load_model(ModelSpec(name="toy-chat", model=TOY, device="auto", dtype="float32"), ROOT)
    yield "toy-chat", toy
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=512, **LLAMA_30M)).eval().to(toy.device)
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    yield "llama-30M", LoadedModel(
        model=model, tokenizer=_IdTokenizer(), spec=ModelSpec(name="llama-30M", model="llama-30M", dtype="float32"),
        device=toy.device, dtype=torch.float32, n_layers=LLAMA_30M["num_hidden_layers"],
        hidden_size=LLAMA_30M["hidden_size"], uses_chat_template=False, source="random", revision=None,
    )



def _bench_model(name: str, loaded) -> list[dict]:
    import torch

    from traitflow.model.chat import prompt_ids
    from traitflow.model.generate import generate
    from traitflow.model.hooks import project_tokens
    from traitflow.monitor.live import generate_live

    g = torch.Generator().manual_seed(0)
    vocab = loaded.model.config.vocab_size
    if name == "toy-chat":
        prompt = prompt_ids(loaded, "Tell me about the weather in spring and what you like to do outside.")
    else:
        prompt = torch.randint(2, vocab, (40,), generator=g).tolist()
    vectors = torch.randn(N_TRAITS, loaded.hidden_size, generator=g)
    vectors = vectors / vectors.norm(dim=-1, keepdim=True)
    n = loaded.n_layers
    layers = [n // 4, n // 2, (3 * n) // 4]

    def plain():
        return generate(loaded, [prompt], max_new_tokens=NEW_TOKENS, batch_size=1)[0].response_ids

    def live():
        return generate_live(loaded, prompt, vectors, layers, max_new_tokens=NEW_TOKENS).response_ids

    ref, got = plain(), live()
    if ref != got:
        raise AssertionError(f"{name}: generate_live disagrees with generate")
    fns = {"generate": plain, "live": live}
    med = interleaved_medians(fns, loaded.device, REPEATS, WARMUP)

    # stored sequences: 16 prompt+response pairs, projected onto 3 traits at 2 layers
    seqs = []
    for _ in range(N_SEQS):
        p = int(torch.randint(24, 48, (1,), generator=g))
        ids = torch.randint(2, vocab, (p + 32,), generator=g).tolist()
        seqs.append((ids[:p], ids[p:]))
    proj_layers = layers[:2]
    stacked = vectors[:, None, :].expand(N_TRAITS, len(proj_layers), loaded.hidden_size).clone()
    n_tokens = sum(len(p) + len(r) for p, r in seqs)
    project_tokens(loaded, seqs, proj_layers, stacked)
    proj = []
    for _ in range(REPEATS):
        sync(loaded.device)
        t0 = time.perf_counter()
        project_tokens(loaded, seqs, proj_layers, stacked)
        sync(loaded.device)
        proj.append(time.perf_counter() - t0)
    proj_med = statistics.median(proj)

    n_params = sum(p.numel() for p in loaded.model.parameters())
    detail = (f"{n_params / 1e6:.1f}M params, device {loaded.device}, threads {torch.get_num_threads()}, batch 1, "
              f"{len(ref)} new tokens, {N_TRAITS} traits at layers {layers}, median of {REPEATS}: "
              f"generate {med['generate'] * 1e3:.1f} ms, live {med['live'] * 1e3:.1f} ms")
    return [
        {"name": f"live_vs_generate/{name}", "value": med["live"] / med["generate"], "unit": "x",
         "target": "<= 1.10", "detail": detail},
        {"name": f"project_tokens_throughput/{name}", "value": n_tokens / proj_med, "unit": "tok/s",
         "target": "report",
         "detail": f"{N_SEQS} sequences, {n_tokens} tokens, {N_TRAITS} traits x {len(proj_layers)} layers, "
                   f"median {proj_med * 1e3:.1f} ms"},
    ]


def run() -> list[dict]:
    with bench_threads():
        entries: list[dict] = []
        for name, loaded in _models():
            entries += _bench_model(name, loaded)
        return entries


if __name__ == "__main__":
    for entry in run():
        print(entry)
