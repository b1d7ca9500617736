"""Scoring benchmarks under interventions: what steering and ablation cost a model's capabilities.

- :func:`score_choices` scores multiple-choice items by length-normalised log-likelihood (the mean
  per-token log-prob of each choice's tokens given the context; the prediction is the argmax),
  once per intervention configuration.
- :func:`score_ce` measures next-token cross-entropy on neutral text and the KL divergence of each
  configuration's next-token distribution from the base configuration's.
- :func:`bootstrap_ci` / :func:`summarize`: accuracy with a percentile-bootstrap 95% interval.

**Tokens.** A context is tokenised once, as the model sees a text (``tokenizer(context)``, so
with its BOS when it has one). A choice's tokens are, as in lm-evaluation-harness, the tokens of
``context + choice`` past the context's own (choices carry their leading space, ``" Paris"``), so a
SentencePiece tokenizer's dummy-prefix piece does not end up in every choice; when the joint text
does not start with the context's tokens (a merge across the boundary), the choice is tokenised
alone (``add_special_tokens=False``). The scored sequence is ``context_ids + choice_ids``. A
chat-templated item (``context_ids`` given) tokenises its choices alone: they begin the reply.
An item longer than the model's context (:func:`~traitflow.model.generate.context_length`) keeps
its choices whole and loses the context's oldest tokens after a leading BOS, enough for its
longest choice (the harness cuts per choice; one log line says how many items were cut).

**Shared context (KV cache).** Per batch of items, the left-padded contexts are pre-filled once
(``use_cache=True``, position ids counting real tokens as
:func:`~traitflow.model.hooks.left_pad_batch` computes them, logits of the last position only):
that position's log-softmax gives every choice's first token. Every choice's remaining tokens
then run in ONE forward on that cache, in one of two layouts:

- *packed* (the default): one row per item, its choices' tokens ``choice[:-1]`` side by side
  after the context, each choice's position ids continuing from the item's real context length,
  and a 4D additive attention mask that lets a choice token see the item's real context and the
  earlier tokens of its own choice only. The cache is used as it is, one row per item, so the
  keys of a context are stored once however many choices it has, and a row's padding is what its
  choices' lengths add up to short of the batch's longest row (a 60-token context with four
  12-token choices costs 60 + 4·11 token positions instead of 4·72).
- *gathered*, for models where one mask cannot describe the attention: a sliding-window or other
  non-full cache layer (it keeps only its window, so its keys do not line up with the mask), an
  attention implementation that takes no arbitrary mask (flash attention), or a model type not
  known to take a custom mask as given (``PACKED_MODEL_TYPES``; GPT-Neo's local attention and
  ALiBi models read the key's column). The cache is gathered
  to one row per (item, choice) (``DynamicCache.batch_select_indices``), and the choices run
  right-padded, one row each, attention mask ``context mask ++ choice mask``.

Both give the log-probs a separate forward of each ``context + choice`` gives (to float
rounding). Items whose choices are all single tokens (MMLU letters) need no cache and no second
forward: one pass over the context, the letters' log-probs at its last position.

**Interventions.** Each forward runs inside :func:`~traitflow.steer.interventions.intervene`
with one configuration for all rows. The context forward is the "prompt" (its real positions,
padding untouched); the choice forward is a fresh ``intervene`` whose
:class:`~traitflow.steer.interventions.StepState` is advanced past the context
(``state.seen = state.width``), so every choice position is a "response" position, exactly as
in KV-cache generation: ``Steer(..., positions="all")`` steers every real context and choice
token, ``positions="response"`` the last context token and every choice token (as in steered
generation), and ``Ablate`` every real token. Scoring a choice is thus teacher-forced steered
generation of it.

**Batch size and memory.** Items are processed longest first in batches of ``batch_size``.
A batch that runs out of device memory (``torch.OutOfMemoryError``), or whose estimated peak
(:func:`batch_bytes`) exceeds ``memory_budget_mb`` before it runs, is retried at half the size
(one log line, ``"out of memory at batch size 16; trying 8"``); the smaller size is kept for the
rest of the call. A single item that does not fit is a TraitflowError. Each row's arithmetic does
not depend on the other rows of its batch, so results agree whatever the batch size (to float
rounding: matrix kernels may block differently for other batch shapes, ~1e-6 in float32).

torch is imported inside functions.

Example:
    >>> cfgs = [(), (Steer(v, layer=6, coefficient=8.0, positions="all"),), (Ablate(v),)]
    >>> results = score_choices(loaded, items, cfgs)
    >>> [summarize(r)["accuracy"] for r in results]
"""

import gc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from traitflow.errors import TraitflowError

__all__ = ["batch_bytes", "bootstrap_ci", "paired_delta", "score_ce", "score_choices", "summarize"]

# Positions of logits turned into float32 log-probs at once (bounds the temporaries for a
# 128k vocabulary to ~64 MB per tensor).
_CHUNK_FLOATS = 1 << 24


# --------------------------------------------------------------------------- memory
@dataclass(frozen=True)
class _Geometry:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    elem: int  # bytes per activation element


def _geometry(loaded: Any) -> _Geometry:
    import torch

    config = loaded.model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    hidden = int(loaded.hidden_size)
    heads = int(getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None) or 1)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    intermediate = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden)
    vocab = int(getattr(config, "vocab_size", None) or len(loaded.tokenizer))
    dtype = loaded.dtype if isinstance(loaded.dtype, torch.dtype) else torch.float32
    elem = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    return _Geometry(int(loaded.n_layers), hidden, heads, kv_heads, head_dim, intermediate, vocab, elem)


def batch_bytes(loaded: Any, rows: int, tokens: int, past: int = 0, logit_positions: int | None = None,
                cache: bool = False, extra_logits: int = 0) -> int:
    """Estimated peak working memory of one forward pass, in bytes (the weights not counted).

    With ``R`` rows, ``T`` new tokens, ``P`` cached tokens, ``N`` = rows × logit positions, ``L``
    layers, hidden ``H``, MLP width ``I``, ``h`` heads, ``k`` key/value heads of width ``d``,
    vocabulary ``V`` and ``s`` bytes per element of the model's dtype::

        kv          = 2 · L · R · (P + T) · k · d · s      (the whole cache when it is kept,
                                                             else one layer's keys and values)
        activations = R · T · (4H + 3I) · s                 (residual, q/k/v/o, MLP gate/up/act)
                    + R · h · T · (P + T) · 4               (attention scores, float32)
        logits      = N · V · (s + 8)                       (the logits + float32 log-softmax temporaries,
                                                             chunked to 2^24 floats at most)
                    + extra_logits · V · s                  (logits kept from another forward)

    The sum is what ``memory_budget_mb`` is compared with. It is deliberately simple: a model's
    real peak depends on its attention kernel and allocator, so a budget is a cap to tune, not
    an exact fit.
    """
    g = _geometry(loaded)
    total = past + tokens
    n_logits = rows * (tokens if logit_positions is None else logit_positions)
    kv = 2 * (g.layers if cache else 1) * rows * total * g.kv_heads * g.head_dim * g.elem
    act = rows * tokens * (4 * g.hidden + 3 * g.intermediate) * g.elem + rows * g.heads * tokens * total * 4
    chunk = min(n_logits, max(1, _CHUNK_FLOATS // g.vocab))
    logits = n_logits * g.vocab * g.elem + chunk * g.vocab * 8 + extra_logits * g.vocab * g.elem
    return int(kv + act + logits)


class _OverBudget(Exception):
    def __init__(self, need: int):
        self.need = need


def _is_oom(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()  # MPS and older backends


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class _Batcher:
    """Runs index batches, halving the batch size on out-of-memory (real or over the budget)."""

    size: int
    budget_mb: float | None
    log: Callable[[str], Any]

    def __post_init__(self) -> None:
        if int(self.size) < 1:
            raise TraitflowError(f"batch_size must be at least 1, got {self.size}")
        self.size = int(self.size)
        if self.budget_mb is not None and not self.budget_mb > 0:
            raise TraitflowError(f"memory_budget_mb must be positive, got {self.budget_mb}")

    def run(self, order: Sequence[int], estimate: Callable[[list[int]], int], body: Callable[[list[int]], None]) -> None:
        """``body(chunk)`` for consecutive chunks of ``order``; a chunk that does not fit is retried
        smaller, from the same place. ``body`` must only commit its results once it is done."""
        start = 0
        while start < len(order):
            chunk = list(order[start : start + self.size])
            need = None
            failed = False
            try:
                if self.budget_mb is not None:
                    need = estimate(chunk)
                    if need > self.budget_mb * 2**20:
                        raise _OverBudget(need)
                body(chunk)
            except _OverBudget:
                failed = True
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                failed = True
            if not failed:
                start += len(chunk)
                continue
            _free_memory()  # outside the except block: the traceback no longer pins the batch's tensors
            if len(chunk) == 1:
                if need is not None and need > self.budget_mb * 2**20:
                    raise TraitflowError(
                        f"out of memory at batch size 1: one item needs ~{need / 2**20:.0f} MB, "
                        f"over the memory budget of {self.budget_mb:g} MB"
                    )
                raise TraitflowError("out of memory at batch size 1: a single item does not fit on this device")
            self.size = max(1, len(chunk) // 2)
            self.log(f"out of memory at batch size {len(chunk)}; trying {self.size}")


# --------------------------------------------------------------------------- helpers
def _token_logprobs(logits: Any, targets: Any) -> Any:
    """``log_softmax(logits)[..., target]`` in float32, in chunks of positions (no [N, V] float32
    copy of the whole thing)."""
    import torch

    shape = targets.shape
    flat = logits.reshape(-1, logits.shape[-1])
    tgt = targets.reshape(-1).to(flat.device)
    out = torch.empty(tgt.shape[0], dtype=torch.float32, device=flat.device)
    step = max(1, _CHUNK_FLOATS // flat.shape[-1])
    for a in range(0, flat.shape[0], step):
        block = flat[a : a + step].float()
        out[a : a + step] = block.gather(-1, tgt[a : a + step, None])[:, 0] - torch.logsumexp(block, dim=-1)
    return out.reshape(shape)


@dataclass
class _Tokens:
    context: list[int]
    choices: list[list[int]]


def _tokenize_items(loaded: Any, items: Sequence[Any], log: Callable[[str], Any] = print) -> list[_Tokens]:
    from traitflow.model.generate import context_length

    tokenizer = loaded.tokenizer
    limit = context_length(loaded)
    special = set(tokenizer.all_special_ids)
    cut = 0
    contexts = tokenizer([it.context for it in items])["input_ids"] if items else []
    out = []
    for item, ctx in zip(items, contexts, strict=True):
        if item.context_ids is not None:  # already tokenised (a chat-templated question)
            ctx = item.context_ids
        ctx = [int(t) for t in ctx]
        if not ctx:
            raise TraitflowError(f"item {item.id!r}: the context has no tokens")
        if not 0 <= item.label < len(item.choices):
            raise TraitflowError(f"item {item.id!r}: label {item.label} is out of range for {len(item.choices)} choices")
        choice_ids = tokenizer(list(item.choices), add_special_tokens=False)["input_ids"]
        if item.context_ids is None:
            # As the harness does: a choice's tokens are what context + choice tokenise to past the
            # context's own tokens (a SentencePiece tokenizer would otherwise give each choice its
            # stray dummy-prefix piece); a tokenizer that merges across the boundary keeps the
            # choice's own tokens.
            joint = tokenizer([item.context + c for c in item.choices])["input_ids"]
            choice_ids = [list(whole[len(ctx):]) if list(whole[: len(ctx)]) == ctx and len(whole) > len(ctx) else alone
                          for whole, alone in zip(joint, choice_ids, strict=True)]
        choices = []
        for j, ids in enumerate(choice_ids):
            if not ids:
                raise TraitflowError(f"item {item.id!r}: choice {j} ({item.choices[j]!r}) has no tokens")
            choices.append([int(t) for t in ids])
        longest = max(map(len, choices))
        # The model reads the context and every choice token but the last; when that is longer than
        # its context, the context loses its oldest tokens (a leading BOS stays) and the choices
        # stay whole.
        if limit is not None and len(ctx) + longest - 1 > limit:
            head = ctx[:1] if ctx[0] in special else []
            keep = limit - longest + 1 - len(head)
            if keep < 1:
                raise TraitflowError(f"item {item.id!r}: a choice of {longest} tokens leaves no room for the "
                                     f"context in model {loaded.spec.name}'s {limit}-token context")
            ctx = head + ctx[len(ctx) - keep :]
            cut += 1
        out.append(_Tokens(ctx, choices))
    if cut:
        log(f"{cut} item(s) longer than model {loaded.spec.name}'s {limit}-token context: their contexts lose their oldest tokens")
    return out


# --------------------------------------------------------------------------- multiple choice
def score_choices(
    loaded: Any,
    items: Sequence[Any],
    configs: Sequence[Sequence[Any]],
    batch_size: int = 16,
    memory_budget_mb: float | None = None,
    log: Callable[[str], Any] = print,
) -> list[list[dict[str, Any]]]:
    """Score multiple-choice items under each intervention configuration.

    Args:
        loaded: a :class:`~traitflow.model.loading.LoadedModel`.
        items: :class:`~traitflow.capability.items.ChoiceItem` s.
        configs: configurations as :func:`~traitflow.steer.interventions.intervene` takes them:
            ``()`` is the unsteered model, ``(Steer(v, layer, c, positions="all"),)`` steering,
            ``(Ablate(v),)`` directional ablation.
        batch_size: items per batch (their choices all run in the same forward); halved on
            out-of-memory.
        memory_budget_mb: when given, a batch whose :func:`batch_bytes` estimate exceeds it is
            treated as out of memory before it runs.
        log: where the "out of memory at batch size …" lines go.

    Returns:
        Per configuration, per item (input order): ``{"id", "label", "pred", "correct",
        "logprobs"}``, ``logprobs`` the mean per-token log-prob of each choice given the context
        (length-normalised log-likelihood) and ``pred`` its argmax (the first on a tie).

    Raises:
        TraitflowError for an empty context or choice, a label out of range, or a single item
        that does not fit in memory.
    """
    toks = _tokenize_items(loaded, items, log)
    n = len(items)
    order = sorted(range(n), key=lambda i: (-(len(toks[i].context) + max(map(len, toks[i].choices))), i))
    batcher = _Batcher(batch_size, memory_budget_mb, log)
    results: list[list[dict[str, Any]]] = []

    packed = _packs_choices(loaded)

    def estimate(chunk: list[int]) -> int:
        width = max(len(toks[i].context) for i in chunk)
        multi = [len(c) - 1 for i in chunk for c in toks[i].choices if len(c) > 1]
        prefill = batch_bytes(loaded, len(chunk), width, logit_positions=1, cache=bool(multi))
        if not multi:
            return prefill
        if packed:
            rows, w = len(chunk), max(sum(len(c) - 1 for c in toks[i].choices) for i in chunk)
        else:
            rows, w = len(multi), max(multi)
        return max(prefill, batch_bytes(loaded, rows, w, past=width, cache=True, extra_logits=len(chunk)))

    for config in configs:
        out: list[dict[str, Any] | None] = [None] * n

        def body(chunk: list[int], config: Sequence[Any] = config, out: list = out) -> None:
            logprobs = _choice_batch(loaded, config, [toks[i] for i in chunk], packed)
            for i, lps in zip(chunk, logprobs, strict=True):
                pred = max(range(len(lps)), key=lambda j: (lps[j], -j))
                label = int(items[i].label)
                out[i] = {"id": items[i].id, "label": label, "pred": pred, "correct": pred == label, "logprobs": lps}

        batcher.run(order, estimate, body)
        results.append(out)  # type: ignore[arg-type]
    return results


# Model types whose attention takes a custom 4D mask as given, with positions from position ids
# alone (checked against separate forwards in tests/test_capability_engine.py). Others (GPT-Neo's
# local layers, ALiBi models such as Bloom and Falcon, which build their bias from a 2D mask and
# the key's column) take the gathered layout.
PACKED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3", "gemma3_text",
                                "gpt2", "gpt_neox"})


def _packs_choices(loaded: Any) -> bool:
    """Whether a batch's choices can run *packed* (module docstring): a model type known to take a
    custom 4D mask (``PACKED_MODEL_TYPES``), attention that takes an additive mask (eager or
    sdpa), and a cache of full-attention layers only (a sliding-window layer keeps only its
    window, so its keys would not line up with one mask)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = loaded.model.config
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if getattr(text, "model_type", None) not in PACKED_MODEL_TYPES:
        return False
    if getattr(text, "_attn_implementation", None) not in ("eager", "sdpa"):
        return False
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # a config DynamicCache cannot read: take the layout that needs no mask
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _choice_batch(loaded: Any, config: Sequence[Any], toks: list[_Tokens], packed: bool) -> list[list[float]]:
    """Mean per-token log-prob of every choice of a batch of items, under one configuration.

    One prefill over the left-padded contexts (cache kept only when some choice has more than
    one token), then one forward over every multi-token choice's remaining tokens on the cache,
    packed or gathered (module docstring).
    """
    import torch

    from traitflow.model.hooks import forward_kwargs, left_pad_batch
    from traitflow.steer.interventions import intervene

    model = loaded.model
    cfgs = [tuple(config)]
    ctx_lens = [len(t.context) for t in toks]
    batch = left_pad_batch([t.context for t in toks], loaded.pad_token_id, loaded.device)
    multi = any(len(c) > 1 for t in toks for c in t.choices)
    extra = forward_kwargs(model)  # logits of the last position only, where the model takes that
    with torch.inference_mode():
        with intervene(loaded, cfgs, [0] * len(toks), ctx_lens):
            out = model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=multi,
                **extra,
            )
        last = out.logits[:, -1, :].float().log_softmax(-1)  # [B, V]: predicts each choice's first token
        cache = out.past_key_values if multi else None
        del out
        sums = [[0.0] * len(t.choices) for t in toks]
        for b, t in enumerate(toks):
            firsts = torch.tensor([c[0] for c in t.choices], device=last.device)
            for j, value in enumerate(last[b, firsts].double().tolist()):
                sums[b][j] = value
        del last
        if multi:
            rest_of = _packed_rest if packed else _gathered_rest
            rest = rest_of(loaded, cfgs, toks, batch, ctx_lens, cache)
            del cache
            for b, values in enumerate(rest):
                for j, value in enumerate(values):
                    sums[b][j] += value
    return [[s / len(c) for s, c in zip(sums[b], t.choices, strict=True)] for b, t in enumerate(toks)]


def _packed_rest(loaded: Any, cfgs: list, toks: list[_Tokens], batch: Any, ctx_lens: list[int], cache: Any) -> list[list[float]]:
    """Summed log-probs of every choice's tokens after its first: one row per item, its choices
    side by side behind the context, kept apart by a 4D attention mask."""
    import torch

    from traitflow.steer.interventions import intervene

    device = loaded.device
    rows = len(toks)
    width = max(sum(len(c) - 1 for c in t.choices) for t in toks)
    ids = torch.full((rows, width), int(loaded.pad_token_id), dtype=torch.long)
    targets = torch.zeros((rows, width), dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    segment = torch.full((rows, width), -1, dtype=torch.long)  # which choice a column belongs to (-1: padding)
    spans: list[list[tuple[int, int]]] = []
    for b, t in enumerate(toks):
        at, row_spans = 0, []
        for j, c in enumerate(t.choices):
            n = len(c) - 1
            ids[b, at : at + n] = torch.as_tensor(c[:-1], dtype=torch.long)
            targets[b, at : at + n] = torch.as_tensor(c[1:], dtype=torch.long)
            positions[b, at : at + n] = ctx_lens[b] + torch.arange(n)
            segment[b, at : at + n] = j
            row_spans.append((at, n))
            at += n
        spans.append(row_spans)
    real = segment >= 0
    own_choice = (segment[:, :, None] == segment[:, None, :]) & real[:, :, None]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    # A padding column sees itself only, so no softmax row is empty (it is never read).
    sees_choices = (own_choice & causal) | torch.eye(width, dtype=torch.bool)
    sees_context = batch.attention_mask.bool().cpu()[:, None, :] & real[:, :, None]
    allowed = torch.cat([sees_context, sees_choices], dim=2)[:, None]  # [B, 1, W, context + W]
    dtype = loaded.dtype if getattr(loaded.dtype, "is_floating_point", False) else torch.float32  # the activations' dtype
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    with intervene(loaded, cfgs, [0] * rows, ctx_lens) as state:
        state.seen = state.width  # past the context: every choice position is a response position
        logits = loaded.model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            past_key_values=cache,
            use_cache=True,
        ).logits
    lp = (_token_logprobs(logits, targets.to(logits.device)) * real.to(logits.device)).double().cpu()
    del logits
    return [[float(lp[b, a : a + n].sum()) for a, n in row_spans] for b, row_spans in enumerate(spans)]


def _gathered_rest(loaded: Any, cfgs: list, toks: list[_Tokens], batch: Any, ctx_lens: list[int], cache: Any) -> list[list[float]]:
    """Summed log-probs of every choice's tokens after its first: the cache gathered to one row per
    (item, choice), each choice right-padded in its own row."""
    import torch

    from traitflow.steer.interventions import intervene

    device = loaded.device
    if not hasattr(cache, "batch_select_indices"):
        raise TraitflowError(f"model {loaded.spec.name or loaded.spec.model!r}: its cache ({type(cache).__name__}) cannot be shared between choices")
    multi = [(b, j) for b, t in enumerate(toks) for j, c in enumerate(t.choices) if len(c) > 1]
    # On the CPU: the cache's layers may sit on several devices (device_map: auto), and a CPU
    # index works on any of them.
    rows = torch.tensor([b for b, _ in multi], dtype=torch.long)
    cache.batch_select_indices(rows)  # one cache row per (item, choice), gathered from its item
    width = max(len(toks[b].choices[j]) - 1 for b, j in multi)
    ids = torch.full((len(multi), width), int(loaded.pad_token_id), dtype=torch.long)
    targets = torch.zeros((len(multi), width), dtype=torch.long)
    choice_mask = torch.zeros((len(multi), width), dtype=torch.long)
    for r, (b, j) in enumerate(multi):
        c = toks[b].choices[j]
        ids[r, : len(c) - 1] = torch.as_tensor(c[:-1])
        targets[r, : len(c) - 1] = torch.as_tensor(c[1:])
        choice_mask[r, : len(c) - 1] = 1
    choice_mask = choice_mask.to(device)
    mask = torch.cat([batch.attention_mask[rows], choice_mask], dim=1)
    starts = torch.tensor([ctx_lens[b] for b, _ in multi], dtype=torch.long, device=device)
    positions = starts[:, None] + torch.arange(width, device=device)[None, :]
    with intervene(loaded, cfgs, [0] * len(multi), [ctx_lens[b] for b, _ in multi]) as state:
        state.seen = state.width  # past the context: every choice position is a response position
        logits = loaded.model(
            input_ids=ids.to(device),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).logits
    lp = _token_logprobs(logits, targets.to(logits.device)) * choice_mask.to(logits.device)
    values = lp.double().sum(-1).tolist()
    del logits, lp
    rest = [[0.0] * len(t.choices) for t in toks]
    for (b, j), value in zip(multi, values, strict=True):
        rest[b][j] = value
    return rest


# --------------------------------------------------------------------------- cross-entropy and KL
def score_ce(
    loaded: Any,
    texts: Sequence[str],
    configs: Sequence[Sequence[Any]],
    batch_size: int = 8,
    memory_budget_mb: float | None = None,
    max_tokens: int = 512,
    log: Callable[[str], Any] = print,
) -> list[dict[str, Any]]:
    """Next-token cross-entropy of each configuration on neutral texts, and its KL from the base.

    Args:
        loaded: a LoadedModel.
        texts: neutral paragraphs (:func:`~traitflow.capability.items.load_texts`); each is
            tokenised as the model sees a text (with its BOS) and cut to ``max_tokens`` tokens (or
            the model's context, when that is shorter);
            a text of fewer than two tokens predicts nothing and is skipped.
        configs: intervention configurations; ``configs[0]`` is the base the KL is taken from
            (pass the unsteered ``()``). Every configuration's interventions apply at every real
            position (the text is a "prompt"; a ``Steer`` needs ``positions="all"`` or
            ``"prompt"`` to act everywhere).
        batch_size, memory_budget_mb, log: as :func:`score_choices` (texts per batch).
        max_tokens: tokens kept per text.

    Returns:
        Per configuration ``{"ce", "kl", "tokens"}``: the mean of ``-log p(token | prefix)`` over
        every predicted token, the mean over the same tokens of ``KL(P_config ‖ P_base)`` in nats
        (exactly 0.0 for the base), and the number of predicted tokens.

    Per batch the base runs first and its logits stay while each other configuration runs; the
    log-softmaxes, the cross-entropy and the KL are computed in chunks of positions, so at most
    two batches' logits (plus a chunk of float32 temporaries) are alive at once.
    """
    import torch

    from traitflow.model.generate import context_length

    if not configs:
        raise TraitflowError("score_ce needs at least one configuration (the base)")
    if max_tokens < 2:
        raise TraitflowError(f"max_tokens must be at least 2, got {max_tokens}")
    encoded = loaded.tokenizer(list(texts))["input_ids"] if texts else []
    limit = context_length(loaded)
    keep = max_tokens if limit is None else min(max_tokens, limit)
    seqs = [[int(t) for t in ids[:keep]] for ids in encoded]
    seqs = [s for s in seqs if len(s) >= 2]
    order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i))
    k = len(configs)
    nll = [0.0] * k
    kl = [0.0] * k
    tokens = 0
    batcher = _Batcher(batch_size, memory_budget_mb, log)

    def estimate(chunk: list[int]) -> int:
        width = max(len(seqs[i]) for i in chunk)
        return batch_bytes(loaded, len(chunk), width, extra_logits=len(chunk) * width if k > 1 else 0)

    def body(chunk: list[int]) -> None:
        nonlocal tokens
        part_nll, part_kl, count = _ce_batch(loaded, configs, [seqs[i] for i in chunk])
        for j in range(k):  # committed only once the whole batch ran (a retry does not count twice)
            nll[j] += part_nll[j]
            kl[j] += part_kl[j]
        tokens += count

    with torch.inference_mode():
        batcher.run(order, estimate, body)
    return [
        {"ce": nll[j] / tokens if tokens else math.nan, "kl": (kl[j] / tokens if tokens else math.nan) if j else 0.0, "tokens": tokens}
        for j in range(k)
    ]


def _ce_batch(loaded: Any, configs: Sequence[Sequence[Any]], seqs: list[list[int]]) -> tuple[list[float], list[float], int]:
    """Summed NLL and KL per configuration over one batch, and its number of predicted tokens."""
    import torch

    from traitflow.model.hooks import left_pad_batch
    from traitflow.steer.interventions import intervene

    device = loaded.device
    lens = [len(s) for s in seqs]
    batch = left_pad_batch(seqs, loaded.pad_token_id, device)
    padded = min(lens) != max(lens)
    # Without padding the plain causal mask is exact: let the attention kernel take its fast path.
    kwargs = {"attention_mask": batch.attention_mask, "position_ids": batch.position_ids} if padded else {}
    width = max(lens)
    # position t predicts token t+1: both must be real tokens (left padding: everything right of the pad)
    valid = (batch.attention_mask[:, :-1] * batch.attention_mask[:, 1:]).bool()
    flat = torch.arange(len(seqs) * width, device=device).reshape(len(seqs), width)[:, :-1][valid]
    targets = batch.input_ids[:, 1:][valid]
    count = int(flat.numel())
    nll, kl = [], []
    base = None
    for j, config in enumerate(configs):
        with intervene(loaded, [tuple(config)], [0] * len(seqs), lens):
            logits = loaded.model(input_ids=batch.input_ids, use_cache=False, **kwargs).logits
        logits = logits.reshape(-1, logits.shape[-1])
        step = max(1, _CHUNK_FLOATS // logits.shape[-1])
        total_nll = torch.zeros((), dtype=torch.float64, device=logits.device)
        total_kl = torch.zeros((), dtype=torch.float64, device=logits.device)
        for a in range(0, count, step):
            index = flat[a : a + step].to(logits.device)
            lp = logits[index].float().log_softmax(-1)
            total_nll -= lp.gather(-1, targets[a : a + step, None].to(logits.device)).double().sum()
            if base is not None:
                lb = base[index.to(base.device)].float().log_softmax(-1).to(lp.device)
                total_kl += (lp.exp() * (lp - lb)).sum(-1).double().sum()
            del lp
        nll.append(float(total_nll))
        kl.append(float(total_kl))
        if j == 0 and len(configs) > 1:
            base = logits
        del logits
    return nll, kl, count


# --------------------------------------------------------------------------- summaries
def bootstrap_ci(correct: Sequence[bool], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the accuracy of ``correct``.

    Resampling ``n`` booleans with replacement and counting the Trues draws exactly from
    ``Binomial(n, k/n)`` (``k`` the Trues), so each of the ``n_boot`` resampled accuracies is one
    binomial draw — the same distribution as the index-resampling bootstrap at O(n_boot) cost.
    Deterministic for a seed (numpy's PCG64). The interval is the ``(1−level)/2`` and
    ``(1+level)/2`` quantiles of the resampled accuracies.
    """
    import numpy as np

    n = len(correct)
    if n == 0:
        raise TraitflowError("bootstrap_ci: no items")
    if not 0 < level < 1:
        raise TraitflowError(f"bootstrap_ci: level must be between 0 and 1, got {level}")
    p = sum(bool(c) for c in correct) / n
    rng = np.random.default_rng(seed)
    accs = rng.binomial(n, p, size=int(n_boot)) / n
    lo, hi = np.quantile(accs, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_delta(base: Sequence[bool], other: Sequence[bool], n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict[str, Any]:
    """``{"delta", "ci95"}``: accuracy of ``other`` minus that of ``base`` on the same items, with a
    paired percentile-bootstrap interval.

    Each item contributes ``other − base`` ∈ {−1, 0, +1}; resampling the items with replacement
    draws the counts of the three from ``Multinomial(n, observed shares)``, so each resample is
    one multinomial draw (as :func:`bootstrap_ci` does for one condition). Pairing matters: the
    items that both conditions get right (or wrong) add no noise, so the interval is narrower than
    comparing the two conditions' own intervals, and a small but consistent tax shows.
    """
    import numpy as np

    if len(base) != len(other):
        raise TraitflowError(f"paired_delta: {len(base)} and {len(other)} items; the conditions must score the same items")
    n = len(base)
    if n == 0:
        raise TraitflowError("paired_delta: no items")
    diffs = [int(bool(o)) - int(bool(b)) for b, o in zip(base, other, strict=True)]
    shares = [diffs.count(-1) / n, diffs.count(0) / n, diffs.count(1) / n]
    counts = np.random.default_rng(seed).multinomial(n, shares, size=int(n_boot))
    deltas = (counts[:, 2] - counts[:, 0]) / n
    lo, hi = np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2])
    return {"delta": sum(diffs) / n, "ci95": [float(lo), float(hi)]}


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{"accuracy", "ci95": [lo, hi], "n"}`` of one configuration's :func:`score_choices` results
    (accuracy and interval None when there are no items)."""
    correct = [bool(r["correct"]) for r in results]
    if not correct:
        return {"accuracy": None, "ci95": [None, None], "n": 0}
    lo, hi = bootstrap_ci(correct)
    return {"accuracy": sum(correct) / len(correct), "ci95": [lo, hi], "n": len(correct)}
