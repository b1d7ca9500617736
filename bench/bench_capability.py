"""Capability scoring: multiple-choice items with the context's KV cache shared, and ``ce_loss``.

Model: a random-initialised ~30M-parameter Llama (``bench.common.LLAMA_30M``) with the toy
tokenizer, saved to a temporary folder and loaded through :func:`traitflow.model.loading.load_model`
(float32; cuda when there is one, else cpu). Text: windows of the toy corpus's replies
(``traitflow.toy.corpus.generate``), decoded back to strings.

Multiple choice: ``N_ITEMS`` synthetic 4-way items, contexts of ~``CONTEXT_TOKENS`` tokens and
choices of ~``CHOICE_TOKENS`` tokens, random labels. Timed interleaved (median of ``REPEATS``
rounds, 2 on cpu and 7 on cuda, after a warm-up on a few items; same torch thread count for all):

- ``shared``: :func:`traitflow.capability.score_choices` with ``batch_size=BATCH`` (one prefill
  per batch of contexts, then every choice of the batch in one forward on that cache);
- ``one_item_at_a_time``: how a per-benchmark script scores (the reference toolkit's
  ``score_completions`` loop): item after item, each context+choice its own forward pass of one
  sequence, full logits, log-softmax over the choice's positions;
- ``one_item_shared``: ``score_choices`` with ``batch_size=1`` (one item at a time, but its
  choices still share the context's cache): isolates what batching alone buys;
- ``batched_unshared``: each context+choice as its own sequence, no cache sharing, ``BATCH × 4``
  sequences per left-padded forward (the same rows per forward as ``shared``), full logits:
  isolates what sharing the context alone buys.

Entries: ``choices_speedup_vs_one_item_at_a_time`` = one_item_at_a_time / shared (target >= 3);
``choices_speedup_vs_one_item_shared`` and ``choices_speedup_vs_batched_unshared`` (report);
items/s in the detail, and the four accuracies (equal to 4 decimals, or the entry's detail says
MISMATCH).

Cross-entropy: ``ce_loss`` = :func:`traitflow.capability.score_ce` with only the unsteered
configuration on ``N_TEXTS`` paragraphs of ~``TEXT_TOKENS`` tokens, vs ``plain``:
``model(input_ids)`` alone over the very same left-padded token batches (what the forward
passes cost before anything is scored). Entry ``ce_vs_forward`` = ce / plain (target <= 1.1),
tokens/s in the detail.

On CPU, torch runs with ``TRAITFLOW_BENCH_THREADS`` intra-op threads (default 1, restored
afterwards).
"""

import random
import tempfile
from pathlib import Path
from typing import Any

from bench.common import LLAMA_30M, ROOT, TOY, bench_threads, interleaved_medians

N_ITEMS = 64
N_CHOICES = 4
CONTEXT_TOKENS = 60
CHOICE_TOKENS = 12
BATCH = 16
N_TEXTS = 16
TEXT_TOKENS = 160
CE_BATCH = 8
REPEATS = {"cpu": 2, "cuda": 7}  # a CPU round of the four choice variants takes ~60 s on one thread


def _load(tmp: Path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from traitflow.model.loading import load_model
    from traitflow.specs.models import ModelSpec

    toy = load_model(ModelSpec(name="toy", model=TOY, device="cpu", dtype="float32"), ROOT)
    torch.manual_seed(0)
    cfg = dict(LLAMA_30M, pad_token_id=toy.pad_token_id, eos_token_id=toy.tokenizer.eos_token_id)
    model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=512, **cfg)).eval()
    model.save_pretrained(tmp / "llama-30M")
    toy.tokenizer.save_pretrained(tmp / "llama-30M")
    del model
    return load_model(ModelSpec(name="llama-30M", model="llama-30M", device="auto", dtype="float32"), tmp)


def _token_stream(tokenizer: Any, n_tokens: int) -> list[int]:
    from traitflow.toy.corpus import generate

    ids: list[int] = []
    for conversation in generate(max(64, n_tokens // 10), seed=7):
        ids += tokenizer(" " + conversation.messages()[-1]["content"], add_special_tokens=False)["input_ids"]
        if len(ids) >= n_tokens:
            break
    return ids


def _items(loaded: Any) -> list:
    from traitflow.capability import ChoiceItem

    tok = loaded.tokenizer
    stream = _token_stream(tok, N_ITEMS * (CONTEXT_TOKENS + N_CHOICES * CHOICE_TOKENS) + 1000)
    rng = random.Random(0)
    items, at = [], 0
    for i in range(N_ITEMS):
        n_ctx = CONTEXT_TOKENS + rng.randint(-8, 8)
        context = tok.decode(stream[at : at + n_ctx]).strip()
        at += n_ctx
        choices = []
        for _ in range(N_CHOICES):
            n = CHOICE_TOKENS + rng.randint(-3, 3)
            choices.append(" " + tok.decode(stream[at : at + n]).strip())
            at += n
        items.append(ChoiceItem(f"b{i}", context, tuple(choices), rng.randrange(N_CHOICES)))
    return items


def _texts(loaded: Any) -> list[str]:
    tok = loaded.tokenizer
    stream = _token_stream(tok, N_TEXTS * TEXT_TOKENS * 2)
    rng = random.Random(1)
    texts, at = [], 0
    for _ in range(N_TEXTS):
        n = TEXT_TOKENS + rng.randint(-TEXT_TOKENS // 4, TEXT_TOKENS // 4)
        texts.append(tok.decode(stream[at : at + n]).strip())
        at += n
    return texts


def _one_item_at_a_time(loaded: Any, items: list) -> list[list[float]]:
    """Mean log-prob of every choice, item after item and choice after choice: one sequence per
    forward pass, as a per-benchmark script does it."""
    import torch

    from traitflow.capability.score import _tokenize_items

    out: list[list[float]] = []
    with torch.inference_mode():
        for toks in _tokenize_items(loaded, items):
            ctx = toks.context
            scores = []
            for ids in toks.choices:
                full = torch.tensor([ctx + ids], device=loaded.device)
                logits = loaded.model(input_ids=full, use_cache=False).logits[0]
                lp = logits[len(ctx) - 1 : -1].float().log_softmax(-1)
                scores.append(float(lp.gather(-1, full[0, len(ctx) :, None]).double().mean()))
            out.append(scores)
    return out


def _batched_unshared(loaded: Any, items: list) -> list[list[float]]:
    """Mean log-prob of every choice, each context+choice its own sequence (no cache sharing)."""
    import torch

    from traitflow.capability.score import _tokenize_items
    from traitflow.model.hooks import left_pad_batch

    rows = [(toks.context, ids) for toks in _tokenize_items(loaded, items) for ids in toks.choices]
    scores: list[float] = []
    step = BATCH * N_CHOICES
    with torch.inference_mode():
        for a in range(0, len(rows), step):
            chunk = rows[a : a + step]
            batch = left_pad_batch([c + x for c, x in chunk], loaded.pad_token_id, loaded.device)
            logits = loaded.model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False
            ).logits
            for r, (ctx, choice) in enumerate(chunk):
                start = batch.pads[r] + len(ctx) - 1
                lp = logits[r, start : start + len(choice)].float().log_softmax(-1)
                target = torch.tensor(choice, device=lp.device)
                scores.append(float(lp.gather(-1, target[:, None]).double().mean()))
    return [scores[i * N_CHOICES : (i + 1) * N_CHOICES] for i in range(len(items))]


def _accuracy_of(logprobs: list[list[float]], items: list) -> float:
    return sum(max(range(len(lp)), key=lambda j: (lp[j], -j)) == it.label for lp, it in zip(logprobs, items, strict=True)) / len(items)


def _bench_choices(loaded: Any) -> list[dict]:
    from traitflow.capability import score_choices, summarize

    items = _items(loaded)
    ctx_tokens = sum(len(loaded.tokenizer(it.context)["input_ids"]) for it in items) / len(items)
    choice_tokens = sum(len(loaded.tokenizer(c, add_special_tokens=False)["input_ids"]) for it in items for c in it.choices) / (len(items) * N_CHOICES)
    accuracy: dict[str, float] = {}

    def shared() -> None:
        accuracy["shared"] = summarize(score_choices(loaded, items, [()], batch_size=BATCH)[0])["accuracy"]

    def one_item_at_a_time() -> None:
        accuracy["one_item_at_a_time"] = _accuracy_of(_one_item_at_a_time(loaded, items), items)

    def one_item_shared() -> None:
        accuracy["one_item_shared"] = summarize(score_choices(loaded, items, [()], batch_size=1)[0])["accuracy"]

    def batched_unshared() -> None:
        accuracy["batched_unshared"] = _accuracy_of(_batched_unshared(loaded, items), items)

    score_choices(loaded, items[:4], [()], batch_size=2)  # warm-up (allocator, kernels) on a few items
    _batched_unshared(loaded, items[:4])
    _one_item_at_a_time(loaded, items[:2])
    fns = {"shared": shared, "one_item_at_a_time": one_item_at_a_time, "one_item_shared": one_item_shared, "batched_unshared": batched_unshared}
    med = interleaved_medians(fns, loaded.device, REPEATS.get(loaded.device.type, 2), 0)
    same = len({round(a, 4) for a in accuracy.values()}) == 1
    accs = ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items())
    print(f"  accuracies: {accs} ({'equal' if same else 'MISMATCH'})", flush=True)
    rate = {k: N_ITEMS / v for k, v in med.items()}
    print("  items/s: " + ", ".join(f"{k} {v:.1f}" for k, v in rate.items()), flush=True)
    detail = (
        f"{N_ITEMS} items x {N_CHOICES} choices, context ~{ctx_tokens:.0f} tokens, choices ~{choice_tokens:.1f} tokens, batch {BATCH}, "
        f"device {loaded.device}; items/s: " + ", ".join(f"{k} {v:.1f}" for k, v in rate.items())
        + f"; accuracy {accs} ({'equal to 4 decimals' if same else 'MISMATCH'})"
    )
    return [
        {"name": "choices_speedup_vs_one_item_at_a_time/llama-30M", "value": med["one_item_at_a_time"] / med["shared"], "unit": "x", "target": ">= 3", "detail": detail},
        {"name": "choices_speedup_vs_one_item_shared/llama-30M", "value": med["one_item_shared"] / med["shared"], "unit": "x", "target": "report", "detail": detail},
        {"name": "choices_speedup_vs_batched_unshared/llama-30M", "value": med["batched_unshared"] / med["shared"], "unit": "x", "target": "report", "detail": detail},
    ]


def _bench_ce(loaded: Any) -> list[dict]:
    import torch

    from traitflow.capability import score_ce
    from traitflow.model.hooks import left_pad_batch

    texts = _texts(loaded)
    seqs = [loaded.tokenizer(t)["input_ids"][:512] for t in texts]
    order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i))  # the batches score_ce forms
    batches = [left_pad_batch([seqs[i] for i in order[a : a + CE_BATCH]], loaded.pad_token_id, loaded.device).input_ids for a in range(0, len(order), CE_BATCH)]
    n_tokens = sum(len(s) - 1 for s in seqs)
    result: dict[str, Any] = {}

    def ce() -> None:
        result["ce"] = score_ce(loaded, texts, [()], batch_size=CE_BATCH)[0]

    def plain() -> None:
        with torch.inference_mode():
            for ids in batches:
                loaded.model(ids)

    med = interleaved_medians({"ce": ce, "plain": plain}, loaded.device, REPEATS.get(loaded.device.type, 2) + 1, 1)
    assert result["ce"]["tokens"] == n_tokens, (result["ce"], n_tokens)
    detail = (
        f"{N_TEXTS} texts, {n_tokens} predicted tokens, batch {CE_BATCH}, device {loaded.device}; tokens/s: "
        f"ce_loss {n_tokens / med['ce']:.0f}, plain forward {n_tokens / med['plain']:.0f}; ce {result['ce']['ce']:.4f}"
    )
    print(f"  tokens/s: ce_loss {n_tokens / med['ce']:.0f}, plain forward {n_tokens / med['plain']:.0f}", flush=True)
    return [{"name": "ce_vs_forward/llama-30M", "value": med["ce"] / med["plain"], "unit": "x", "target": "<= 1.1", "detail": detail}]


def run() -> list[dict]:
    with bench_threads(), tempfile.TemporaryDirectory() as tmp:
        loaded = _load(Path(tmp))
        return _bench_choices(loaded) + _bench_ce(loaded)


if __name__ == "__main__":
    for entry in run():
        print(f"{entry['name']:48} {entry['value']:8.3f} {entry['unit']}  target {entry['target']}")
