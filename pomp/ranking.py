"""One rule for every class decision: the highest score wins, and a tie goes to the lowest class index.

That is what the reference evaluations do for top-1: Dassl's `Classification` evaluator (CoOp, CoCoOp,
MaPLe and POMP report its accuracy) predicts `output.max(1)[1]`, and clip_benchmark's mean per-class
recall uses `logits.argmax(axis=1)`; torch documents both as returning the first maximal index. Top-k
lists follow the same order: by score, then by class index. `torch.topk` is not used for the order:
it gives no order among equal values (on CPU, torch 2.14 returns 2, 4, 1 for a three-way tie at
indices 1, 2, 4), so clip_benchmark's own acc1/acc5 (`output.topk`) can differ from its recall.

Ties are exact when two classes have identical features (a vocabulary that repeats a name, such as
CLIP's ImageNet list with "missile" at 657 and 744 and "sunglasses" at 836 and 837, or the hundreds of
repeated WordNet lemmas of ImageNet-21K-P) — but only when the arithmetic on them is shared: a matmul,
an upsampling or a text encoder can round the same input differently at another position or in another
batch. So every distinct row is computed once and copied (`distinct_classes`, `class_scores`), and the
copies are bit-identical whatever the kernels do.
NaN scores rank below every number.
"""

from __future__ import annotations

import torch


def distinct_classes(classifier: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(first, inverse)` of the classifier rows `[C, D]`: `first` `[U]` is the lowest class index of each
    distinct row, ascending; `inverse` `[C]` gives each class the position of its row in `first`
    (so `classifier[first][inverse]` equals `classifier`, and a class repeating an earlier row points
    to that row's first class)."""
    rows, inverse = torch.unique(classifier, dim=0, return_inverse=True)
    index = torch.arange(len(classifier), device=classifier.device)
    first = torch.full((len(rows),), len(classifier), device=classifier.device).scatter_reduce(
        0, inverse, index, reduce="amin")
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    return first[order], rank[inverse]


def class_scores(features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """`features @ classifier.T`: `[N, D] x [C, D] -> [N, C]`; identical classifier rows give identical
    columns (each distinct row is scored once and its column copied to every class carrying it)."""
    first, inverse = distinct_classes(classifier)
    if len(first) == len(classifier):
        return features @ classifier.t()
    return (features @ classifier[first].t())[:, inverse]


def top_k_first_index(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices `[N, k]` of the `k` highest scores of each row of `scores` `[N, C]` (k is capped at C),
    best first; equal scores are ordered by class index, lowest first.

    Deterministic on every device: `topk` proposes, and every row where a tie could matter (two of
    its k best equal, or the k-th value shared with a class left out) is decided by a stable sort.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [N, C], got shape {tuple(scores.shape)}")
    n, c = scores.shape
    k = min(k, c)
    if n == 0 or k == 0:
        return torch.zeros(n, k, dtype=torch.long, device=scores.device)
    # one more than asked: the (k+1)-th value equal to the k-th means a tie across the cut
    values, index = scores.topk(min(k + 1, c), dim=1)
    ambiguous = (values[:, 1:] == values[:, :-1]).any(dim=1) | torch.isnan(values).any(dim=1)
    index = index[:, :k]
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero()[:, 0]
        part = scores[rows]
        part = torch.where(torch.isnan(part), torch.full_like(part, float("-inf")), part)
        index[rows] = part.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return index


def argmax_first_index(scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Index of the highest score along `dim`, the lowest index among ties (see `top_k_first_index`)."""
    moved = scores.movedim(dim, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    return top_k_first_index(flat, 1)[:, 0].view(moved.shape[:-1])


__all__ = ["argmax_first_index", "class_scores", "distinct_classes", "top_k_first_index"]
