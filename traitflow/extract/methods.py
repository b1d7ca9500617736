"""Vector methods: from positive and negative activations at one layer to one unit direction.

Each method takes float32 tensors `pos [n_pos, hidden]`, `neg [n_neg, hidden]` and returns a unit
vector oriented so that positives project higher than negatives on the training data.
"""

from collections.abc import Callable

import torch


def _unit(vector: torch.Tensor) -> torch.Tensor:
    norm = vector.norm()
    if not torch.isfinite(norm) or norm == 0:
        return torch.zeros_like(vector)
    return vector / norm


def _orient(vector: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    return vector if (pos @ vector).mean() >= (neg @ vector).mean() else -vector


def mean_diff(pos: torch.Tensor, neg: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Difference of class means, computed in float32."""
    return _unit(pos.float().mean(0) - neg.float().mean(0))


def probe(pos: torch.Tensor, neg: torch.Tensor, seed: int = 0, l2: float = 1.0, max_iter: int = 200) -> torch.Tensor:
    """L2-regularised logistic regression on row-normalised activations; the weight direction.

    Rows are scaled to unit norm first so the probe sees directions, not the (layer-dependent)
    activation magnitude; `l2` matches scikit-learn's default C=1 (penalty 0.5·‖w‖²/C on the summed loss).
    """
    x = torch.cat([pos, neg]).double()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, reduction="sum")
        loss = loss + 0.5 * (w @ w) / l2
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return _orient(_unit(w.detach().float()), pos.float(), neg.float())


METHODS: dict[str, Callable[..., torch.Tensor]] = {"mean_diff": mean_diff, "probe": probe}


def get_method(name: str) -> Callable[..., torch.Tensor]:
    from traitflow.errors import TraitflowError

    try:
        return METHODS[name]
    except KeyError:
        raise TraitflowError(f"vector method {name!r} is not available; expected one of {sorted(METHODS)}") from None
