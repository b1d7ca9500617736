"""Held-out evaluation of trait vectors and the rule that picks the best one.

In memory, an undefined AUROC or Cohen's d is NaN (and d is ±inf when neither side varies but their
means differ). JSON has no such numbers: a row stores ``null`` and ``<name>_reason`` (one of
:data:`UNDEFINED`), and :meth:`VectorScore.from_dict` restores the float, so ranking is the same
before and after a round trip.
"""

import math
from dataclasses import asdict, dataclass

import torch

# Why a held-out metric has no finite value, keyed by the float it has in memory.
UNDEFINED = {
    "auroc": {"nan": "no held-out example on one side"},
    "cohens_d": {"nan": "fewer than 2 held-out examples on a side",
                 "inf": "unbounded: neither side varies, positives project higher",
                 "-inf": "unbounded: neither side varies, negatives project higher"},
}


@dataclass(frozen=True)
class VectorScore:
    position: str
    component: str
    method: str
    layer: int
    val_accuracy: float
    auroc: float
    cohens_d: float
    polarity: int  # +1 when held-out positives project higher than negatives, else -1
    n_val: int

    @property
    def combined(self) -> float:
        """One number per vector in [0, 1]: the mean of held-out accuracy and Cohen's d scaled so
        that d >= 4 counts fully (d <= 0, the wrong polarity, adds nothing)."""
        d = self.cohens_d if self.cohens_d == self.cohens_d else 0.0
        return 0.5 * self.val_accuracy + 0.5 * min(1.0, max(0.0, d / 4.0))

    def as_dict(self) -> dict:
        """JSON-ready: an undefined metric is ``None`` with a ``<name>_reason``."""
        row = {**asdict(self), "combined": self.combined}
        for name, reasons in UNDEFINED.items():
            if not math.isfinite(row[name]):
                row[name], row[f"{name}_reason"] = None, reasons[str(row[name])]
        return row

    @classmethod
    def from_dict(cls, row: dict) -> "VectorScore":
        fields = {k: v for k, v in row.items() if k != "combined" and not k.endswith("_reason")}
        for name, reasons in UNDEFINED.items():
            if fields.get(name) is None:
                fields[name] = next((float(k) for k, r in reasons.items() if r == row.get(f"{name}_reason")), math.nan)
        return cls(**fields)


def auroc(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    if len(pos_scores) == 0 or len(neg_scores) == 0:
        return float("nan")
    diff = pos_scores[:, None] - neg_scores[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def cohens_d(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> float:
    """Standardised mean difference with the pooled standard deviation."""
    n1, n2 = len(pos_scores), len(neg_scores)
    if n1 < 2 or n2 < 2:
        return float("nan")
    var = ((n1 - 1) * pos_scores.double().var() + (n2 - 1) * neg_scores.double().var()) / (n1 + n2 - 2)
    std = float(var.sqrt())
    delta = float(pos_scores.double().mean() - neg_scores.double().mean())
    return delta / std if std > 0 else (float("inf") if delta > 0 else float("-inf") if delta < 0 else 0.0)


def score_vector(
    vector: torch.Tensor, threshold: float, val_pos: torch.Tensor, val_neg: torch.Tensor
) -> tuple[float, float, float, int]:
    """(accuracy, AUROC, Cohen's d, polarity) of one unit vector on held-out activations.

    Classification thresholds the projection at the training classes' midpoint.
    """
    p, n = val_pos.float() @ vector, val_neg.float() @ vector
    correct = int((p > threshold).sum()) + int((n <= threshold).sum())
    accuracy = correct / max(1, len(p) + len(n))
    polarity = 1 if float(p.mean()) >= float(n.mean()) else -1
    return accuracy, auroc(p, n), cohens_d(p, n), polarity


def best_score(scores: list[VectorScore]) -> VectorScore:
    """The best vector: highest held-out accuracy; ties (common: accuracy saturates at 1.0 on
    easy traits) go to the larger held-out Cohen's d, then to the earlier layer, then the method name."""
    def key(s: VectorScore) -> tuple:
        d = s.cohens_d if s.cohens_d == s.cohens_d else float("-inf")  # NaN sorts last
        return (-s.val_accuracy, -d, s.layer, s.method)

    return min(scores, key=key)
