"""Vector methods: from positive and negative activations at one layer to one unit direction.

Every method has the signature::

    fn(pos: Tensor[n_pos, hidden], neg: Tensor[n_neg, hidden], *, seed: int = 0, paired: bool = False) -> Tensor[hidden]

and returns a float32 unit vector (the zero vector only when the data define no direction,
e.g. identical classes). Every method except ``random_baseline`` orients its vector so that,
on the data it was fitted on, the mean positive projection is at least the mean negative one.
With ``paired=True``, ``pos[i]`` and ``neg[i]`` are the two halves of pair ``i`` (equal counts,
same order); methods that do not use pairing accept and ignore the flag.

Methods:

- ``mean_diff``: difference of class means, in float32.
- ``probe``: L2-regularised logistic regression on row-normalised activations (torch L-BFGS,
  float64); the weight direction.
- ``gradient``: a direction optimised with Adam for a fixed number of steps on a logistic
  separation loss (see :func:`gradient`); seeded and bit-for-bit deterministic on CPU.
- ``pca``: first principal direction of the paired differences ``pos_i - neg_i`` (uncentred,
  as in steering-vectors' ``pca_aggregator``); unpaired data use all cross-class differences.
- ``random_baseline``: a seeded random Gaussian direction, not fitted and not oriented — the
  chance-level reference of the held-out evaluation.

Example:
    >>> v = METHODS["pca"](pos_acts, neg_acts, seed=0, paired=True)
    >>> float(v.norm())
    1.0
"""

from collections.abc import Callable

import torch

__all__ = ["METHODS", "get_method", "gradient", "mean_diff", "pca", "probe", "random_baseline"]


def _unit(vector: torch.Tensor) -> torch.Tensor:
    norm = vector.norm()
    if not torch.isfinite(norm) or norm == 0:
        return torch.zeros_like(vector)
    return vector / norm


def _orient(vector: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    return vector if (pos @ vector).mean() >= (neg @ vector).mean() else -vector


def _check_pairs(pos: torch.Tensor, neg: torch.Tensor) -> None:
    if pos.shape != neg.shape:
        raise ValueError(f"paired data need equal shapes, got pos {tuple(pos.shape)} and neg {tuple(neg.shape)}")


def mean_diff(pos: torch.Tensor, neg: torch.Tensor, *, seed: int = 0, paired: bool = False) -> torch.Tensor:
    """Difference of class means, computed in float32, scaled to unit norm.

    For paired data this equals the mean of the paired differences, so ``paired`` changes nothing.
    """
    return _unit(pos.float().mean(0) - neg.float().mean(0))


def probe(
    pos: torch.Tensor,
    neg: torch.Tensor,
    *,
    seed: int = 0,
    paired: bool = False,
    l2: float = 1.0,
    max_iter: int = 200,
) -> torch.Tensor:
    """L2-regularised logistic regression on row-normalised activations; the weight direction.

    Rows are scaled to unit norm first so the probe sees directions, not the (layer-dependent)
    activation magnitude. ``l2`` matches scikit-learn's default C=1 (penalty ``0.5·‖w‖²/C`` on
    the summed loss).

    - unpaired: positives (label 1) against negatives (label 0), with an intercept.
    - paired: each pair is centred on its own midpoint and the model has no intercept — the
      rows ``±(pos_i - neg_i)/2`` with labels ±1, so the probe only sees what differs *within*
      a pair (the topic a pair shares cancels). This is the formulation of steering-vectors'
      ``logistic_aggregator`` (applied here to the row-normalised activations).

    Fitted with L-BFGS in float64 from zero: deterministic, ``seed`` is not used.
    """
    x = torch.cat([pos, neg]).double()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    if paired:
        _check_pairs(pos, neg)
        half = (x[: len(pos)] - x[len(pos) :]) / 2
        params = [w]

        def data_loss() -> torch.Tensor:
            # both centred rows of pair i have y·(w·x) = w·half_i
            return 2 * torch.nn.functional.softplus(-(half @ w)).sum()
    else:
        y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).double()
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        params = [w, b]

        def data_loss() -> torch.Tensor:
            return torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, reduction="sum")

    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = data_loss() + 0.5 * (w @ w) / l2
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return _orient(_unit(w.detach().float()), pos.float(), neg.float())


def gradient(
    pos: torch.Tensor,
    neg: torch.Tensor,
    *,
    seed: int = 0,
    paired: bool = False,
    steps: int = 200,
    lr: float = 0.05,
) -> torch.Tensor:
    """A unit direction optimised by gradient descent on a logistic separation loss.

    Objective: with activations centred on the midpoint of the class means and divided by their
    RMS norm (one scalar, so the geometry is unchanged), projections ``s = x·v`` onto the unit
    direction ``v`` and a learnt scale ``k = exp(log_k)`` (starting at e²), minimise

    - paired data: ``mean_i softplus(-k·(s(pos_i) - s(neg_i)))`` — each positive should project
      above its own negative;
    - unpaired data: ``mean_ij softplus(-k·(s(pos_i) - s(neg_j)))`` over all cross-class pairs
      (a smooth AUROC).

    ``v = w/‖w‖`` with ``w = Xᵀa`` kept in the span of the centred activations (directions
    outside it carry no signal, and a random start there would never decay), so the loss only
    needs the Gram matrix ``X·Xᵀ``. ``a`` starts from a seeded Gaussian draw; Adam runs
    ``steps`` steps at learning rate ``lr`` in float64 on the CPU. Same inputs and seed give a
    bit-identical vector. Cost per step is O(n²) in the number of rows (the Gram matrix, and
    the ``n_pos·n_neg`` pairs when unpaired), independent of the hidden size.
    """
    if paired:
        _check_pairs(pos, neg)
    p, n = pos.detach().double().cpu(), neg.detach().double().cpu()
    mid = (p.mean(0) + n.mean(0)) / 2
    x = torch.cat([p, n]) - mid
    rms = x.pow(2).sum(1).mean().sqrt()
    if not torch.isfinite(rms) or rms == 0:
        return torch.zeros(pos.shape[1], dtype=torch.float32)
    x = x / rms
    gram = x @ x.T
    n_pos = len(p)
    generator = torch.Generator().manual_seed(int(seed))
    a = (torch.randn(len(x), generator=generator, dtype=torch.float64) / len(x) ** 0.5).requires_grad_(True)
    log_k = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([a, log_k], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            proj = gram @ a
            s = proj / (a @ proj).clamp_min(1e-30).sqrt()  # x_i · (w/‖w‖)
            sp, sn = s[:n_pos], s[n_pos:]
            margin = sp - sn if paired else (sp[:, None] - sn[None, :]).flatten()
            loss = torch.nn.functional.softplus(-log_k.exp() * margin).mean()
            loss.backward()
            optimizer.step()
    w = x.T @ a.detach()
    return _orient(_unit(w).float(), pos.float(), neg.float())


def pca(pos: torch.Tensor, neg: torch.Tensor, *, seed: int = 0, paired: bool = False) -> torch.Tensor:
    """First principal direction of the differences between positives and negatives.

    - paired: the top right-singular vector of ``D = pos - neg`` (rows ``pos_i - neg_i``),
      *uncentred* — the direction that carries most of ``Σ d_i d_iᵀ``. Centring would subtract
      the consistent shift that is the trait itself; this is what steering-vectors'
      ``pca_aggregator`` computes (its ±d symmetrisation makes the mean zero).
    - unpaired (fallback, deterministic, no seed): the same for *all* ``n_pos·n_neg`` cross-class
      differences ``pos_i - neg_j``, computed without forming them: their second moment is
      ``n_neg·S_pos + n_pos·S_neg + n_pos·n_neg·δδᵀ`` (``S`` the within-class scatter, ``δ`` the
      difference of means), i.e. the top right-singular vector of the stacked rows
      ``√n_neg·(pos - mean_pos)``, ``√n_pos·(neg - mean_neg)``, ``√(n_pos·n_neg)·δ``.

    Computed in float64; the sign is chosen so that positives project higher on average.
    """
    p, n = pos.double(), neg.double()
    if paired:
        _check_pairs(pos, neg)
        rows = p - n
    else:
        mp, mn = p.mean(0), n.mean(0)
        rows = torch.cat([
            (p - mp) * len(n) ** 0.5,
            (n - mn) * len(p) ** 0.5,
            ((mp - mn) * (len(p) * len(n)) ** 0.5)[None],
        ])
    if not bool(rows.abs().sum() > 0):
        return torch.zeros(pos.shape[1], dtype=torch.float32)
    _, _, vh = torch.linalg.svd(rows, full_matrices=False)
    return _orient(_unit(vh[0]).float(), pos.float(), neg.float())


def random_baseline(pos: torch.Tensor, neg: torch.Tensor, *, seed: int = 0, paired: bool = False) -> torch.Tensor:
    """A seeded random Gaussian unit vector: the chance-level reference.

    It depends only on ``seed`` and the hidden size — not on the activations — and is *not*
    oriented by the training data (orienting it would make it look better than chance), so its
    held-out accuracy is about 0.5 and its polarity is a coin flip.
    """
    generator = torch.Generator().manual_seed(int(seed))
    return _unit(torch.randn(pos.shape[1], generator=generator, dtype=torch.float64)).float()


Method = Callable[..., torch.Tensor]

METHODS: dict[str, Method] = {
    "mean_diff": mean_diff,
    "probe": probe,
    "gradient": gradient,
    "pca": pca,
    "random_baseline": random_baseline,
}


def get_method(name: str) -> Method:
    from traitflow.errors import TraitflowError

    try:
        return METHODS[name]
    except KeyError:
        raise TraitflowError(f"vector method {name!r} is not available; expected one of {sorted(METHODS)}") from None
