"""Massive activation dimensions: find them, and zero them before fitting a vector.

Large language models keep a handful of residual-stream dimensions whose activations are orders
of magnitude larger than the rest, nearly constant across inputs (Sun et al. 2024, "Massive
Activations in Large Language Models"). They dominate norms and inner products, so a direction
fitted on raw activations can be mostly "massive dim" and little trait. Cleaning zeroes those
dimensions in the activations before any method runs; the fitted vector then has zeros there and
stays in the model's original coordinates (usable for steering and projection as is).

A dimension ``j`` is massive when its mean absolute activation over the given rows is at least
``ratio`` times the median of that statistic over all dimensions (Sun et al. call single
activations massive at ~1000× the median; per-dimension means over many tokens are smoother, so
the default here is 100×). At most ``top_k`` dimensions (the largest) are returned. When more
than half the dimensions are exactly zero, the median is taken over the non-zero ones.

Example:
    >>> dims = find_massive_dims(train_acts[:, layer])      # e.g. [1512, 2533]
    >>> cleaned = clean_massive_dims(train_acts[:, layer], dims)
"""

from collections.abc import Sequence

import torch

__all__ = ["DEFAULT_RATIO", "DEFAULT_TOP_K", "clean_massive_dims", "find_massive_dims"]

DEFAULT_RATIO = 100.0
DEFAULT_TOP_K = 10


def find_massive_dims(acts: torch.Tensor, ratio: float = DEFAULT_RATIO, top_k: int | None = DEFAULT_TOP_K) -> list[int]:
    """Dimensions whose mean |activation| is at least ``ratio`` × the median dimension's.

    Args:
        acts: ``[n, hidden]`` activations of one layer (e.g. the training rows of both classes).
        ratio: threshold relative to the median over dimensions of the per-dimension mean |activation|.
        top_k: keep at most this many (the largest); ``None`` for no cap.

    Returns:
        Dimension indices, sorted ascending (empty when there are none or ``acts`` has no rows).
    """
    if acts.ndim != 2:
        raise ValueError(f"acts must be [n, hidden], got shape {tuple(acts.shape)}")
    if ratio <= 0:
        raise ValueError(f"ratio must be positive, got {ratio}")
    if acts.shape[0] == 0 or acts.shape[1] == 0:
        return []
    magnitude = acts.detach().double().abs().mean(0)
    median = magnitude.median()
    if median == 0:  # more than half the dimensions are exactly zero: compare with the non-zero ones
        nonzero = magnitude[magnitude > 0]
        if len(nonzero) == 0:
            return []
        median = nonzero.median()
    candidates = (magnitude >= ratio * median).nonzero().flatten()
    order = candidates[magnitude[candidates].argsort(descending=True, stable=True)]
    if top_k is not None:
        order = order[: max(0, int(top_k))]
    return sorted(int(d) for d in order)


def clean_massive_dims(acts: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """A copy of ``acts`` (``[..., hidden]``) with the given dimensions set to zero."""
    out = acts.clone()
    if len(dims):
        out[..., torch.as_tensor(list(dims), dtype=torch.long)] = 0
    return out
