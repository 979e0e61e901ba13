"""Inter-annotator agreement: Cohen's kappa for two annotators, Fleiss' kappa for several,
and mean IoU of nodule tracks (annotations.tracks.track_iou)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import cohen_kappa_score


def cohen_kappa(a: Sequence, b: Sequence) -> float | None:
    """Cohen's kappa of two annotators' categorical calls on the same items (scikit-learn).
    None when undefined: fewer than two items, or both annotators used one identical category
    throughout (chance agreement is then 1)."""
    if len(a) != len(b):
        raise ValueError("both annotators must rate the same items")
    if len(a) < 2 or len(set(a) | set(b)) < 2:
        return None
    return float(cohen_kappa_score(list(a), list(b)))


def fleiss_kappa(counts: np.ndarray) -> float | None:
    """Fleiss' kappa (Fleiss 1971) from an items x categories matrix of how many annotators put
    each item in each category; every item must have the same number of ratings."""
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 2 or counts.shape[0] < 2:
        return None
    raters = counts.sum(axis=1)
    if not np.allclose(raters, raters[0]) or raters[0] < 2:
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings per item")
    n = raters[0]
    p_category = counts.sum(axis=0) / counts.sum()
    p_item = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    p_bar, p_e = p_item.mean(), (p_category**2).sum()
    if np.isclose(p_e, 1.0):
        return None
    return float((p_bar - p_e) / (1 - p_e))


def ratings_to_counts(ratings: Sequence[Sequence], categories: Sequence) -> np.ndarray:
    """items x annotators calls -> items x categories counts, for fleiss_kappa."""
    index = {c: i for i, c in enumerate(categories)}
    counts = np.zeros((len(ratings), len(categories)), dtype=int)
    for row, calls in enumerate(ratings):
        for call in calls:
            counts[row, index[call]] += 1
    return counts
