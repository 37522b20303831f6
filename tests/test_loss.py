"""Local contrast and local correction against hand computations (method.md §2-3)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pomp.loss import correction_margin, local_contrast_loss, sample_negatives


def test_correction_values_from_the_paper():
    assert correction_margin(10450, 999) == pytest.approx(1.02, abs=0.005)
    assert correction_margin(10450, 318) == pytest.approx(1.52, abs=0.005)
    t = correction_margin(10450, torch.tensor([999, 318]))
    assert t.tolist() == pytest.approx([math.log10(10449 / 999), math.log10(10449 / 318)], abs=1e-6)


def _by_hand(x, w, labels, neg_ids, n_classes, scale, correction=True, margin=None):
    """Per-image loop in numpy, straight from the formulas."""
    losses = []
    for i in range(len(x)):
        logits = [scale * x[i] @ w[labels[i]]]
        valid = [j for j in neg_ids if j != labels[i]]
        m = margin if margin is not None else (math.log10(n_classes - 1) - math.log10(len(valid)) if correction else 0)
        logits += [scale * x[i] @ w[j] + m for j in valid]
        logits = np.array(logits, dtype=np.float64)
        losses.append(-(logits[0] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()))
    return float(np.mean(losses))


@pytest.mark.parametrize("correction,margin", [(True, None), (False, None), (True, 0.7)])
def test_loss_matches_hand_computation(correction, margin):
    g = torch.Generator().manual_seed(0)
    n_classes, dim = 10, 6
    w = F.normalize(torch.randn(n_classes, dim, generator=g), dim=-1)
    x = F.normalize(torch.randn(4, dim, generator=g), dim=-1)
    labels = torch.tensor([1, 3, 3, 7])
    neg_ids = torch.tensor([3, 0, 5, 9])  # class 3 is sampled: masked for images 1 and 2
    loss = local_contrast_loss(x, w[labels], w[neg_ids], labels, neg_ids, n_classes, 20.0,
                               local_correction=correction, margin=margin)
    expected = _by_hand(x.double().numpy(), w.double().numpy(), labels.tolist(), neg_ids.tolist(), n_classes, 20.0,
                        correction, margin)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_all_classes_is_plain_softmax():
    g = torch.Generator().manual_seed(1)
    w = F.normalize(torch.randn(8, 5, generator=g), dim=-1)
    x = F.normalize(torch.randn(3, 5, generator=g), dim=-1)
    labels = torch.tensor([0, 4, 7])
    ids = sample_negatives(8, 8)
    loss = local_contrast_loss(x, w[labels], w[ids], labels, ids, 8, 10.0)  # correction is log10(7/7) = 0
    assert float(loss) == pytest.approx(float(F.cross_entropy(10.0 * x @ w.t(), labels)), rel=1e-6)


def test_negatives_uniform_without_replacement():
    g = torch.Generator().manual_seed(0)
    ids = sample_negatives(100, 30, g)
    assert len(set(ids.tolist())) == 30 and ids.max() < 100
    counts = torch.zeros(20)
    for _ in range(2000):
        counts[sample_negatives(20, 5, g)] += 1
    assert counts.min() > 400 and counts.max() < 600  # expected 500 each
