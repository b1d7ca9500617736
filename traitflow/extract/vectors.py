"""Stage 3 of extraction: unit vectors per position × method × layer, with a held-out evaluation."""

from dataclasses import dataclass, field

import torch

from traitflow import __version__
from traitflow.extract.capture import ActivationSet
from traitflow.extract.evaluate import VectorScore, best_score, score_vector
from traitflow.extract.methods import get_method

LAYER_NUMBERING = "layer L = residual stream after decoder block L (0-based)"


def split_indices(labels: torch.Tensor, groups: torch.Tensor, val_split: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded train/validation split by group, so both halves of a pair land on the same side."""
    unique = torch.unique(groups)
    generator = torch.Generator().manual_seed(seed)
    order = unique[torch.randperm(len(unique), generator=generator)]
    n_val = int(round(len(unique) * val_split))
    if val_split > 0:
        n_val = min(max(1, n_val), len(unique) - 1)
    val_groups = set(order[:n_val].tolist())
    is_val = torch.tensor([g in val_groups for g in groups.tolist()], dtype=torch.bool)
    return (~is_val).nonzero().flatten(), is_val.nonzero().flatten()


@dataclass
class VectorSet:
    """Unit vectors of one trait × variant, keyed by (position, component, method) with a layer axis.

    `vectors[(pos, comp, method)]` is `[len(layers), hidden]`; `norms[(pos, comp)]` the mean activation
    norm per layer (the scale for steering), `baselines[...]` the class-midpoint projection per layer.
    """

    layers: list[int]
    vectors: dict[tuple[str, str, str], torch.Tensor] = field(default_factory=dict)
    baselines: dict[tuple[str, str, str], torch.Tensor] = field(default_factory=dict)
    train_accuracy: dict[tuple[str, str, str], torch.Tensor] = field(default_factory=dict)
    norms: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def defined_layers(self, position: str, component: str, method: str) -> list[int]:
        """Layers where this vector family exists (a CMA-ES refinement exists at one layer only)."""
        stacked = self.vectors[(position, component, method)]
        return [layer for i, layer in enumerate(self.layers) if bool(torch.isfinite(stacked[i]).all())]

    def vector(self, position: str, component: str, method: str, layer: int) -> torch.Tensor:
        return self.vectors[(position, component, method)][self.layers.index(layer)]

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors: dict[str, torch.Tensor] = {}
        for (pos, comp, method), value in self.vectors.items():
            tensors[f"vector/{pos}/{comp}/{method}"] = value
            tensors[f"baseline/{pos}/{comp}/{method}"] = self.baselines[(pos, comp, method)]
            tensors[f"train_accuracy/{pos}/{comp}/{method}"] = self.train_accuracy[(pos, comp, method)]
        for (pos, comp), value in self.norms.items():
            tensors[f"norm/{pos}/{comp}"] = value
        return tensors, dict(self.metadata, layers=self.layers)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "VectorSet":
        out = cls(layers=list(meta["layers"]), metadata=meta)
        for name, value in tensors.items():
            kind, *rest = name.split("/")
            # Positions may contain '/'-free DSL text only; component and method are the last parts.
            if kind == "norm":
                out.norms[("/".join(rest[:-1]), rest[-1])] = value
            else:
                key = ("/".join(rest[:-2]), rest[-2], rest[-1])
                {"vector": out.vectors, "baseline": out.baselines, "train_accuracy": out.train_accuracy}[kind][key] = value
        return out


def _split_sides(
    activations: ActivationSet, idx: torch.Tensor, pos: str, paired: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative rows among ``idx``.

    With ``paired``, both sides are sorted by group (pair index) and only groups present on both
    sides are kept (first row of a group per side), so ``pos[i]`` and ``neg[i]`` are one pair.
    """
    acts, labels = activations.acts[pos].float()[idx], activations.labels[idx]
    if not paired:
        return acts[labels == 1], acts[labels == 0]
    groups = activations.groups[idx].tolist()
    first: dict[int, dict[int, int]] = {1: {}, 0: {}}
    for row, (label, group) in enumerate(zip(labels.tolist(), groups, strict=True)):
        first[int(label)].setdefault(int(group), row)
    common = sorted(set(first[1]) & set(first[0]))
    rows_pos = torch.tensor([first[1][g] for g in common], dtype=torch.long)
    rows_neg = torch.tensor([first[0][g] for g in common], dtype=torch.long)
    return acts[rows_pos], acts[rows_neg]


def extract_vectors(
    activations: ActivationSet,
    methods: list[str],
    val_split: float,
    seed: int,
    input_hashes: dict[str, str],
    clean_massive: bool = False,
) -> VectorSet:
    """Fit every method at every layer on the training split (the held-out split stays unseen).

    Paired data (``activations.metadata["paired"]``, or groups shared by both sides when that is
    not recorded) are fitted with ``paired=True`` on the complete training pairs, aligned by group.
    With ``clean_massive``, each layer's massive dimensions (:func:`~traitflow.extract.massive.find_massive_dims`
    on the training rows of every position) are zeroed before fitting; they are recorded in
    ``metadata["massive_dims"]`` as ``{str(layer): [dims]}`` and the vectors have zeros there.
    Baselines, training accuracy and norms use every training row.
    """
    from traitflow.extract.massive import clean_massive_dims, find_massive_dims

    train_idx, val_idx = split_indices(activations.labels, activations.groups, val_split, seed)
    paired = activations.metadata.get("paired")
    if paired is None:  # not recorded (older artifacts): paired when some group has rows on both sides
        paired = bool(set(activations.groups[activations.labels == 1].tolist()) & set(activations.groups[activations.labels == 0].tolist()))
    paired = bool(paired)
    metadata = {
        **activations.metadata,
        "component": activations.component,
        "layer_numbering": LAYER_NUMBERING,
        "positions": list(activations.acts),
        "methods": list(methods),
        "val_split": val_split,
        "seed": seed,
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "paired": paired,
        "clean_massive_dims": clean_massive,
        "traitflow_version": __version__,
        "input_hashes": input_hashes,
    }
    massive: dict[int, list[int]] = {}
    if clean_massive:
        for li in range(len(activations.layers)):
            rows = torch.cat([activations.acts[pos][train_idx, li].float() for pos in activations.acts])
            massive[li] = find_massive_dims(rows)
        metadata["massive_dims"] = {str(layer): massive[li] for li, layer in enumerate(activations.layers)}
    result = VectorSet(layers=list(activations.layers), metadata=metadata)
    comp = activations.component
    for pos in activations.acts:
        train_pos, train_neg = _split_sides(activations, train_idx, pos)
        fit_pos, fit_neg = _split_sides(activations, train_idx, pos, paired=True) if paired else (train_pos, train_neg)
        fit_paired = paired and len(fit_pos) > 0
        if not fit_paired:  # no complete pair left in the training split: fit the sides as unpaired
            fit_pos, fit_neg = train_pos, train_neg
        result.norms[(pos, comp)] = torch.cat([train_pos, train_neg]).norm(dim=-1).mean(0)
        for method in methods:
            fit = get_method(method)
            vecs, bases, accs = [], [], []
            for li in range(len(activations.layers)):
                layer_pos, layer_neg = fit_pos[:, li], fit_neg[:, li]
                if massive.get(li):
                    layer_pos, layer_neg = clean_massive_dims(layer_pos, massive[li]), clean_massive_dims(layer_neg, massive[li])
                vector = fit(layer_pos, layer_neg, seed=seed, paired=fit_paired)
                p, n = train_pos[:, li] @ vector, train_neg[:, li] @ vector
                threshold = float((p.mean() + n.mean()) / 2)
                vecs.append(vector)
                bases.append(threshold)
                accs.append(float(((p > threshold).sum() + (n <= threshold).sum()) / max(1, len(p) + len(n))))
            result.vectors[(pos, comp, method)] = torch.stack(vecs)
            result.baselines[(pos, comp, method)] = torch.tensor(bases)
            result.train_accuracy[(pos, comp, method)] = torch.tensor(accs)
    return result


def evaluate_vectors(activations: ActivationSet, vectors: VectorSet) -> list[VectorScore]:
    """Score every stored vector on the held-out split (same seed and fraction as extraction)."""
    meta = vectors.metadata
    _, val_idx = split_indices(activations.labels, activations.groups, float(meta["val_split"]), int(meta["seed"]))
    if len(val_idx) == 0:
        return []
    scores = []
    for (pos, comp, method), stacked in vectors.vectors.items():
        val_pos, val_neg = _split_sides(activations, val_idx, pos)
        for li, layer in enumerate(vectors.layers):
            threshold = float(vectors.baselines[(pos, comp, method)][li])
            if not torch.isfinite(stacked[li]).all() or threshold != threshold:
                continue  # not defined at this layer (e.g. a single-layer CMA-ES refinement)
            acc, auc, d, polarity = score_vector(stacked[li], threshold, val_pos[:, li], val_neg[:, li])
            scores.append(VectorScore(pos, comp, method, layer, acc, auc, d, polarity, len(val_idx)))
    return scores


def best_per_position(scores: list[VectorScore]) -> dict[str, VectorScore]:
    """The best (method, layer) at each position, by `evaluate.best_score`'s rule."""
    out: dict[str, VectorScore] = {}
    for pos in dict.fromkeys(s.position for s in scores):
        out[pos] = best_score([s for s in scores if s.position == pos])
    return out
