"""Activation-capture overhead: ``capture_pooled`` (all layers, one position) vs a plain forward.

For each model — the toy-sized Llama (6 layers, hidden 192) and a ~30M-parameter Llama, both
random-initialised — one batch of 16 left-padded prompt+response sequences is timed:

- ``forward``: ``model(input_ids, attention_mask, position_ids, use_cache=False)`` on tensors
  built beforehand — the plain forward pass a user would write (logits for every position);
- ``forward_last``: the same with ``logits_to_keep=1`` (only the last position's logits);
- ``capture``: ``capture_pooled(...)`` end to end (padding, index building, hooks pooling
  ``response[:5]`` at every layer, copy to CPU) with its default early stop after the last
  layer (so no unembedding);
- ``capture_full``: the same with ``stop_early=False`` (the whole model runs, with
  ``logits_to_keep=1`` as capture passes it).

Entries: ``capture_vs_forward`` = capture / forward (what a user pays over a plain pass), and
``capture_hook_overhead`` = capture_full / forward_last (hooks and bookkeeping alone, same
work otherwise). Timings are interleaved, median of several repeats. Target: <= 1.15.

On CPU the bench runs torch with ``TRAITFLOW_BENCH_THREADS`` intra-op threads (default 1,
restored afterwards): on a busy 2-core machine a second thread makes every small op spin and
the timings meaningless.
"""

from dataclasses import dataclass

from bench.common import LLAMA_30M, bench_threads, interleaved_medians

BATCH = 16
REPEATS = 9
WARMUP = 2

MODELS = {
    "toy-llama-6L-h192": dict(
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=1300,
        tie_word_embeddings=False,
    ),
    "llama-30M": LLAMA_30M,
}


@dataclass
class _Tok:
    pad_token_id: int = 0
    eos_token_id: int = 1


def _loaded(name: str, cfg: dict):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from traitflow.model.loading import LoadedModel, resolve_device
    from traitflow.specs.models import ModelSpec

    torch.manual_seed(0)
    device = resolve_device("auto")
    model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=512, **cfg)).eval().to(device)
    n_params = sum(p.numel() for p in model.parameters())
    loaded = LoadedModel(
        model=model,
        tokenizer=_Tok(),
        spec=ModelSpec(name=name, model=name),
        device=device,
        dtype=torch.float32,
        n_layers=cfg["num_hidden_layers"],
        hidden_size=cfg["hidden_size"],
        uses_chat_template=False,
        source=name,
        revision=None,
    )
    return loaded, n_params


def _sequences(vocab: int):
    import torch

    g = torch.Generator().manual_seed(1)
    seqs = []
    for _ in range(BATCH):
        p = int(torch.randint(24, 48, (1,), generator=g))
        r = 16
        ids = torch.randint(2, vocab, (p + r,), generator=g).tolist()
        seqs.append((ids[:p], ids[p:]))
    return seqs



def _bench_model(name: str, cfg: dict) -> list[dict]:
    import torch

    from traitflow.model.hooks import capture_pooled, left_pad_batch

    loaded, n_params = _loaded(name, cfg)
    seqs = _sequences(cfg["vocab_size"])
    layers = list(range(loaded.n_layers))
    positions = ["response[:5]"]
    batch = left_pad_batch([p + r for p, r in seqs], loaded.pad_token_id, loaded.device)

    def forward() -> None:
        with torch.inference_mode():
            loaded.model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
            )

    def capture() -> None:
        capture_pooled(loaded, seqs, layers, positions, batch_size=BATCH)

    def capture_full() -> None:
        capture_pooled(loaded, seqs, layers, positions, batch_size=BATCH, stop_early=False)

    def forward_last() -> None:
        with torch.inference_mode():
            loaded.model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
                logits_to_keep=1,
            )

    fns = {"forward": forward, "forward_last": forward_last, "capture": capture, "capture_full": capture_full}
    med = interleaved_medians(fns, loaded.device, REPEATS, WARMUP)
    detail = (
        f"{n_params / 1e6:.1f}M params, device {loaded.device}, threads {torch.get_num_threads()}, batch {BATCH}, "
        f"median of {REPEATS}: forward {med['forward'] * 1e3:.2f} ms, forward_last {med['forward_last'] * 1e3:.2f} ms, "
        f"capture {med['capture'] * 1e3:.2f} ms, capture_full {med['capture_full'] * 1e3:.2f} ms"
    )
    return [
        {
            "name": f"capture_vs_forward/{name}",
            "value": med["capture"] / med["forward"],
            "unit": "x",
            "target": "<= 1.15",
            "detail": detail,
        },
        {
            "name": f"capture_hook_overhead/{name}",
            "value": med["capture_full"] / med["forward_last"],
            "unit": "x",
            "target": "<= 1.15",
            "detail": detail,
        },
    ]


def run() -> list[dict]:
    with bench_threads():
        entries: list[dict] = []
        for name, cfg in MODELS.items():
            entries += _bench_model(name, cfg)
        return entries


if __name__ == "__main__":
    print(run())
