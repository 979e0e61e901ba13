import numpy as np
import pytest

from annotations.agreement import cohen_kappa, fleiss_kappa, ratings_to_counts

# Fleiss (1971)-style worked example as printed in most references: 10 items, 14 raters,
# 5 categories; P-bar = 0.378, P-e = 0.213, kappa = 0.210.
FLEISS_EXAMPLE = np.array([
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
])


def test_fleiss_matches_worked_example():
    assert fleiss_kappa(FLEISS_EXAMPLE) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_with_two_raters_is_close_to_cohen_on_balanced_marginals():
    a = ["micro", "micro", "none", "none", "macro", "macro", "micro", "none"]
    b = ["micro", "none", "none", "none", "macro", "micro", "micro", "none"]
    counts = ratings_to_counts(list(zip(a, b, strict=True)), ["none", "micro", "macro"])
    assert counts.sum(axis=1).tolist() == [2] * 8
    assert fleiss_kappa(counts) == pytest.approx(cohen_kappa(a, b), abs=0.05)


@pytest.mark.parametrize(
    "a,b,expected",
    [
        (["x", "y", "x", "y"], ["x", "y", "x", "y"], 1.0),
        (["x", "x", "y", "y"], ["y", "y", "x", "x"], -1.0),
        (["x", "x"], ["x", "x"], None),  # one category throughout: undefined
    ],
)
def test_cohen(a, b, expected):
    assert cohen_kappa(a, b) == expected


def test_unequal_rating_counts_are_refused():
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa(np.array([[2, 0], [1, 2]]))
