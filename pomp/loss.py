"""Local contrast and local correction (POMP, method.md sections 2-3). Nothing else lives here.

Local contrast: each image is contrasted against its own class (column 0) and K-1 negative
classes sampled uniformly for the whole batch; a sampled negative equal to the image's own
class is masked out. Local correction: every valid negative logit of image i gets
`m_i = log10(N - 1) - log10(n_i)` added, n_i being its number of valid negatives, so the sampled
softmax behaves like one over all N classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def correction_margin(num_classes: int, num_valid_negatives: torch.Tensor | int) -> torch.Tensor | float:
    """`log10(N - 1) - log10(n)`: 1.02 at N = 10,450 with 999 negatives, 1.52 with 318."""
    if isinstance(num_valid_negatives, torch.Tensor):
        n = num_valid_negatives.to(torch.float64).clamp(min=1)
        return (math.log10(num_classes - 1) - torch.log10(n)).to(torch.float32)
    return math.log10(num_classes - 1) - math.log10(max(num_valid_negatives, 1))


def sample_negatives(num_classes: int, num_negatives: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """K-1 class ids drawn uniformly without replacement; all classes when K-1 >= N."""
    if num_negatives >= num_classes:
        return torch.arange(num_classes)
    return torch.randperm(num_classes, generator=generator)[:num_negatives]


def local_contrast_logits(
    image_features: torch.Tensor,
    positive_features: torch.Tensor,
    negative_features: torch.Tensor,
    labels: torch.Tensor,
    negative_ids: torch.Tensor,
    num_classes: int,
    logit_scale: float,
    local_correction: bool = True,
    margin: float | None = None,
) -> torch.Tensor:
    """Logits `[B, K]`: column 0 the own class, then the K-1 shared negatives (own class at -inf).

    Features are expected L2-normalised. `margin` (a constant) replaces the per-image m_i;
    `local_correction=False` adds nothing.
    """
    image_features = image_features.float()
    positive = logit_scale * (image_features * positive_features.float()).sum(dim=-1, keepdim=True)
    negative = logit_scale * image_features @ negative_features.float().t()
    is_own_class = negative_ids.to(labels.device).unsqueeze(0) == labels.unsqueeze(1)
    if margin is not None:
        negative = negative + margin
    elif local_correction:
        valid = (~is_own_class).sum(dim=1)
        negative = negative + correction_margin(num_classes, valid).to(negative.device).unsqueeze(1)
    negative = negative.masked_fill(is_own_class, float("-inf"))
    return torch.cat([positive, negative], dim=1)


def local_contrast_loss(
    image_features: torch.Tensor,
    positive_features: torch.Tensor,
    negative_features: torch.Tensor,
    labels: torch.Tensor,
    negative_ids: torch.Tensor,
    num_classes: int,
    logit_scale: float,
    local_correction: bool = True,
    margin: float | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the local-contrast logits with target column 0.

    Args:
        image_features: `[B, D]`, L2-normalised.
        positive_features: `[B, D]`, each image's own class feature.
        negative_features: `[K-1, D]`, the sampled classes' features.
        labels: `[B]` class ids of the images.
        negative_ids: `[K-1]` class ids of the sampled negatives.
        num_classes: N, the size of the whole vocabulary.
        logit_scale: CLIP's temperature (exp of the learned value; 100 for CLIP).
        local_correction: add m_i to the valid negatives.
        margin: a fixed value added instead of m_i.
    """
    logits = local_contrast_logits(
        image_features, positive_features, negative_features, labels, negative_ids,
        num_classes, logit_scale, local_correction, margin,
    )
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)
