"""ACR TI-RADS scoring, table-driven from the ACR 2017 chart (DOMAIN.md)."""

from decimal import Decimal

import pytest

from annotations.tirads import (
    COMPOSITION_POINTS,
    ECHOGENICITY_POINTS,
    FOCI_POINTS,
    MARGIN_POINTS,
    SHAPE_POINTS,
    Recommendation,
    level_for_points,
    tirads_score,
)

# composition, echogenicity, shape, margin, foci -> points, TR level
CASES = [
    # Spongiform and cystic nodules score nothing further, whatever else is ticked.
    ("spongiform", "hypo", "taller", "lobulated", ["punctate"], 0, 1),
    ("cystic", "anechoic", "wider", "smooth", ["none"], 0, 1),
    ("mixed", "hyper_iso", "wider", "smooth", ["none"], 2, 2),
    ("mixed", "hyper_iso", "wider", "smooth", ["macro"], 3, 3),
    ("solid", "hyper_iso", "wider", "smooth", ["none"], 3, 3),
    ("solid", "hypo", "wider", "smooth", ["none"], 4, 4),
    ("solid", "hypo", "wider", "ill_defined", ["macro"], 5, 4),
    ("solid", "hypo", "wider", "lobulated", ["none"], 6, 4),
    ("solid", "hypo", "wider", "smooth", ["punctate"], 7, 5),
    ("solid", "very_hypo", "taller", "extrathyroidal", ["punctate"], 14, 5),
    # Echogenic foci are additive: macro (1) + rim (2) + punctate (3).
    ("solid", "hypo", "wider", "smooth", ["macro", "rim", "punctate"], 10, 5),
    ("mixed", "hyper_iso", "wider", "smooth", ["macro", "rim"], 5, 4),
]


@pytest.mark.parametrize("composition,echo,shape,margin,foci,points,level", CASES)
def test_points_and_level(composition, echo, shape, margin, foci, points, level):
    result = tirads_score(composition=composition, echogenicity=echo, shape=shape,
                          margin=margin, echogenic_foci=foci)
    assert (result.points, result.level.level) == (points, level)


@pytest.mark.parametrize(
    "points,level,risk",
    [(0, 1, 0.3), (2, 2, 1.5), (3, 3, 4.8), (4, 4, 9.1), (6, 4, 9.1), (7, 5, 35.0), (12, 5, 35.0)],
)
def test_level_table(points, level, risk):
    tr = level_for_points(points)
    assert (tr.level, tr.risk_percent) == (level, risk)


# TR level, maximum diameter (mm) -> recommendation (ACR 2017 size thresholds)
SIZES = [
    (1, 40, "no_fna"), (2, 40, "no_fna"),
    (3, 24, "follow_up"), (3, 25, "fna"), (3, 14, "no_fna"), (3, 15, "follow_up"),
    (4, 9, "no_fna"), (4, 10, "follow_up"), (4, 14.9, "follow_up"), (4, 15, "fna"),
    (5, 4, "no_fna"), (5, 5, "follow_up"), (5, 9.9, "follow_up"), (5, 10, "fna"),
    (4, None, "size_needed"), (1, None, "no_fna"),
]
FEATURES_FOR_LEVEL = {
    1: ("spongiform", "hypo", "wider", "smooth", ["none"]),
    2: ("mixed", "hyper_iso", "wider", "smooth", ["none"]),
    3: ("solid", "hyper_iso", "wider", "smooth", ["none"]),
    4: ("solid", "hypo", "wider", "smooth", ["none"]),
    5: ("solid", "hypo", "wider", "smooth", ["punctate"]),
}


@pytest.mark.parametrize("level,diameter,expected", SIZES)
def test_recommendation_from_size(level, diameter, expected):
    composition, echo, shape, margin, foci = FEATURES_FOR_LEVEL[level]
    result = tirads_score(composition=composition, echogenicity=echo, shape=shape, margin=margin,
                          echogenic_foci=foci,
                          max_diameter_mm=None if diameter is None else Decimal(str(diameter)))
    assert result.level.level == level
    assert result.recommendation == Recommendation(expected)


def test_point_tables_match_the_acr_chart():
    assert sorted(COMPOSITION_POINTS.values()) == [0, 0, 1, 2]
    assert sorted(ECHOGENICITY_POINTS.values()) == [0, 1, 2, 3]
    assert sorted(SHAPE_POINTS.values()) == [0, 3]
    assert sorted(MARGIN_POINTS.values()) == [0, 0, 2, 3]
    assert sorted(FOCI_POINTS.values()) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"composition": "liquid"}, "unknown composition"),
        ({"echogenic_foci": ["sparkles"]}, "unknown echogenic foci"),
        ({"echogenic_foci": ["none", "punctate"]}, "cannot be combined"),
    ],
)
def test_invalid_input_is_refused_with_a_reason(kwargs, message):
    base = dict(composition="solid", echogenicity="hypo", shape="wider", margin="smooth",
                echogenic_foci=["none"])
    with pytest.raises(ValueError, match=message):
        tirads_score(**{**base, **kwargs})
