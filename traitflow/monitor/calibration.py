"""Calibration statistics of a model variant on a neutral prompt set: massive dims and mean norms.

One batched forward pass per batch of neutral prompts, with hooks on every requested component
at every layer. Inside the hooks only running sums are kept (sum of ``h`` per dimension and sum
of ``‖h‖`` over real tokens; padding excluded); full activations never outlive a hook call.

Per layer the record holds:

- ``components[comp]["mean_norm"][i]``: mean token norm ``‖h‖`` at ``layers[i]``.
- ``massive``: for the residual stream, the ``top_k`` dimensions by ``|mean_t h_t[d]|`` (the
  absolute value of the per-dimension mean over tokens), each with that value and its ratio to
  the median of the statistic over all dimensions (when the median is exactly zero, the median of
  the non-zero values is used; ``ratio_to_median`` is ``None`` when every value is zero).
- ``recurring_dims``: residual dims that are in the per-layer top_k at ``>= min_layers`` layers
  (default 3), sorted ascending.

Note: this ranks by ``|mean|`` (a signed mean, so a dim that flips sign across tokens scores low),
whereas :func:`traitflow.extract.massive.find_massive_dims` ranks by ``mean |h|``. Massive dims
are nearly constant in sign, so the two agree on them.

Example:
    >>> ps = load_neutral_prompts()
    >>> record = calibrate(loaded, neutral_prompt_ids(loaded, ps))
    >>> record["recurring_dims"]               # e.g. [1415, 2533]
    >>> record["components"]["residual"]["mean_norm"]
"""

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from traitflow.data.prompts import PromptSet, load_prompt_set

__all__ = [
    "NEUTRAL_PROMPTS_PATH",
    "calibrate",
    "load_neutral_prompts",
    "massive_dims",
    "mean_norms",
    "neutral_prompt_ids",
]

NEUTRAL_PROMPTS_PATH = Path(__file__).resolve().parents[1] / "data" / "neutral_prompts.json"
NEUTRAL_SET_NAME = "traitflow/neutral"


def load_neutral_prompts() -> PromptSet:
    """The neutral prompt set shipped with traitflow (``traitflow/data/neutral_prompts.json``)."""
    return load_prompt_set(NEUTRAL_PROMPTS_PATH, NEUTRAL_SET_NAME)


def neutral_prompt_ids(loaded: Any, prompt_set: PromptSet | None = None) -> list[list[int]]:
    """Token ids of each prompt as the model sees it before its response (chat template applied)."""
    from traitflow.model.chat import prompt_ids

    ps = prompt_set if prompt_set is not None else load_neutral_prompts()
    return [prompt_ids(loaded, p.text, p.system_prompt) for p in ps.prompts]


def calibrate(
    loaded: Any,
    prompt_ids_list: Sequence[Sequence[int]],
    components: tuple[str, ...] = ("residual", "attn_out", "mlp_out"),
    top_k: int = 8,
    batch_size: int = 16,
    min_layers: int = 3,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Massive dims per layer and mean norms per layer and component, over all real tokens.

    Args:
        loaded: a LoadedModel.
        prompt_ids_list: token id lists (e.g. from :func:`neutral_prompt_ids`); every token of
            every list is counted.
        components: components to hook (see :mod:`traitflow.model.arch`); ``residual`` is always
            included (the massive dims come from it).
        top_k: massive dims reported per layer.
        batch_size: sequences per forward pass.
        min_layers: a dim is "recurring" when it is in the top_k at at least this many layers.
        progress: called as ``progress(done, total)`` after each batch.

    Returns:
        A JSON-able dict ``{"layers", "components": {comp: {"mean_norm": [...]}}, "massive":
        [{"layer", "dims": [{"dim", "abs_mean", "ratio_to_median"}]}], "recurring_dims",
        "n_tokens", "top_k", "min_layers"}``.
    """
    import torch

    from traitflow.errors import TraitflowError
    from traitflow.model.arch import component_module
    from traitflow.model.hooks import add_hooks, left_pad_batch, model_lock, output_tensor, run_forward

    if top_k < 1:
        raise ValueError(f"top_k must be positive, got {top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    comps = ["residual", *[c for c in dict.fromkeys(components) if c != "residual"]]
    seqs = [[int(t) for t in s] for s in prompt_ids_list]
    if not seqs:
        raise TraitflowError("calibration needs at least one prompt")
    if any(len(s) == 0 for s in seqs):
        raise TraitflowError(f"prompt {next(i for i, s in enumerate(seqs) if not s)} is empty")

    n_layers = loaded.n_layers
    hidden = loaded.hidden_size
    device = loaded.device
    layers = list(range(n_layers))
    # [component, layer, hidden] sums of h and [component, layer] sums of ‖h‖, float64 on the CPU
    sum_h = torch.zeros((len(comps), n_layers, hidden), dtype=torch.float64)
    sum_norm = torch.zeros((len(comps), n_layers), dtype=torch.float64)
    n_tokens = 0
    state: dict[str, Any] = {}
    last_residual = component_module(loaded.model, n_layers - 1, "residual")

    def make_hook(ci: int, layer: int) -> Callable[[Any, Any, Any], None]:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            h = output_tensor(output).float()  # [B, T, H]; on its block's device (`device_map: auto`)
            mask = state["mask"].to(h.device)  # [B, T] float, 1 on real tokens
            state["sum_h"][ci, layer] += torch.einsum("bth,bt->h", h, mask).to(state["sum_h"].device)
            state["sum_norm"][ci, layer] += (h.norm(dim=-1) * mask).sum().to(state["sum_norm"].device)

        return hook

    hooks = []
    for ci, comp in enumerate(comps):
        for layer in layers:
            module = component_module(loaded.model, layer, comp)
            hooks.append((module, make_hook(ci, layer)))
    # The last block's output is the last thing we need: stop there (skips the final norm and
    # unembedding). Its hook is registered last so that every other hook on it has run first.
    hooks.append((last_residual, _stop))

    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    done = 0
    with model_lock(loaded.model), torch.inference_mode(), add_hooks(hooks):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = left_pad_batch([seqs[i] for i in chunk], loaded.pad_token_id, device)
            state["mask"] = batch.attention_mask.float()
            state["sum_h"] = torch.zeros((len(comps), n_layers, hidden), dtype=torch.float32, device=device)
            state["sum_norm"] = torch.zeros((len(comps), n_layers), dtype=torch.float32, device=device)
            run_forward(loaded, batch)
            sum_h += state["sum_h"].double().cpu()
            sum_norm += state["sum_norm"].double().cpu()
            n_tokens += int(batch.attention_mask.sum())
            done += len(chunk)
            if progress is not None:
                progress(done, len(seqs))
    state.clear()

    mean_h = sum_h / n_tokens
    mean_norm = sum_norm / n_tokens
    massive = []
    counts: Counter[int] = Counter()
    for layer in layers:
        stat = mean_h[0, layer].abs()
        median = float(stat.median())
        if median == 0:
            nonzero = stat[stat > 0]
            median = float(nonzero.median()) if len(nonzero) else 0.0
        k = min(top_k, hidden)
        top = torch.topk(stat, k)
        dims = []
        for value, dim in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            dims.append({
                "dim": int(dim),
                "abs_mean": float(value),
                "ratio_to_median": (float(value) / median) if median > 0 else None,
            })
            counts[int(dim)] += 1
        massive.append({"layer": layer, "dims": dims})
    recurring = sorted(d for d, c in counts.items() if c >= min_layers)
    return {
        "layers": layers,
        "components": {comp: {"mean_norm": [float(v) for v in mean_norm[ci]]} for ci, comp in enumerate(comps)},
        "massive": massive,
        "recurring_dims": recurring,
        "n_tokens": n_tokens,
        "top_k": int(top_k),
        "min_layers": int(min_layers),
    }


def mean_norms(record: dict, component: str = "residual") -> dict[int, float]:
    """``{layer: mean ‖h‖}`` from a :func:`calibrate` record (the ``mean_norms`` of projections)."""
    return dict(zip(record["layers"], record["components"][component]["mean_norm"], strict=True))


def massive_dims(record: dict, min_ratio: float | None = None) -> dict[int, list[int]]:
    """``{layer: dims}`` from a :func:`calibrate` record (the ``clean_dims`` of projections).

    With ``min_ratio``, only dims whose ``ratio_to_median`` is at least that are kept.
    """
    out = {}
    for entry in record["massive"]:
        out[int(entry["layer"])] = sorted(
            d["dim"] for d in entry["dims"]
            if min_ratio is None or (d["ratio_to_median"] is not None and d["ratio_to_median"] >= min_ratio)
        )
    return out


def _stop(module: Any, inputs: Any, output: Any) -> None:
    from traitflow.model.hooks import StopForward

    raise StopForward
