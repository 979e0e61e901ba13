"""ACR TI-RADS scoring (Tessler et al., J Am Coll Radiol 2017;14:587-595).

Points are summed over five feature categories; echogenic foci are multi-select and additive.
The total gives the TR level, its risk of malignancy, and whether the nodule's maximum diameter
calls for fine-needle aspiration (FNA) or follow-up. The tables below are the ACR chart, written
out once; the form, the API and the agreement statistics all use them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.db import models

from ml import tirads as chart


class Composition(models.TextChoices):
    CYSTIC = "cystic", "Cystic or almost completely cystic"
    SPONGIFORM = "spongiform", "Spongiform"
    MIXED = "mixed", "Mixed cystic and solid"
    SOLID = "solid", "Solid or almost completely solid"


class Echogenicity(models.TextChoices):
    ANECHOIC = "anechoic", "Anechoic"
    HYPER_ISO = "hyper_iso", "Hyperechoic or isoechoic"
    HYPO = "hypo", "Hypoechoic"
    VERY_HYPO = "very_hypo", "Very hypoechoic"


class Shape(models.TextChoices):
    WIDER = "wider", "Wider-than-tall"
    TALLER = "taller", "Taller-than-wide"


class Margin(models.TextChoices):
    SMOOTH = "smooth", "Smooth"
    ILL_DEFINED = "ill_defined", "Ill-defined"
    LOBULATED = "lobulated", "Lobulated or irregular"
    EXTRATHYROIDAL = "extrathyroidal", "Extra-thyroidal extension"


class EchogenicFoci(models.TextChoices):
    NONE = "none", "None or large comet-tail artifacts"
    MACRO = "macro", "Macrocalcifications"
    RIM = "rim", "Peripheral (rim) calcifications"
    PUNCTATE = "punctate", "Punctate echogenic foci"


# The points are the chart in `ml.tirads` (one copy, also used for training targets), keyed here
# by the form's choices.
COMPOSITION_POINTS = {Composition(k): v for k, v in chart.COMPOSITION_POINTS.items()}
ECHOGENICITY_POINTS = {Echogenicity(k): v for k, v in chart.ECHOGENICITY_POINTS.items()}
SHAPE_POINTS = {Shape(k): v for k, v in chart.SHAPE_POINTS.items()}
MARGIN_POINTS = {Margin(k): v for k, v in chart.MARGIN_POINTS.items()}
FOCI_POINTS = {EchogenicFoci(k): v for k, v in chart.FOCI_POINTS.items()}


@dataclass(frozen=True)
class TiradsLevel:
    level: int  # 1..5
    name: str
    risk_percent: float  # ACR 2017 risk of malignancy
    fna_cm: Decimal | None  # FNA if maximum diameter >= this; None: never
    follow_up_cm: Decimal | None  # follow-up if >= this (and below the FNA size)


LEVELS = {
    1: TiradsLevel(1, "TR1 Benign", 0.3, None, None),
    2: TiradsLevel(2, "TR2 Not suspicious", 1.5, None, None),
    3: TiradsLevel(3, "TR3 Mildly suspicious", 4.8, Decimal("2.5"), Decimal("1.5")),
    4: TiradsLevel(4, "TR4 Moderately suspicious", 9.1, Decimal("1.5"), Decimal("1.0")),
    5: TiradsLevel(5, "TR5 Highly suspicious", 35.0, Decimal("1.0"), Decimal("0.5")),
}


class Recommendation(models.TextChoices):
    NO_FNA = "no_fna", "No FNA"
    FOLLOW_UP = "follow_up", "Follow-up ultrasound"
    FNA = "fna", "FNA"
    SIZE_NEEDED = "size_needed", "Measure the nodule to decide"


@dataclass(frozen=True)
class TiradsResult:
    points: int
    level: TiradsLevel
    recommendation: Recommendation

    @property
    def label(self) -> str:
        return f"{self.level.name} ({self.points} points)"


def level_for_points(points: int) -> TiradsLevel:
    """TR level of a point total. The ACR chart lists 0 points as TR1 and 2 as TR2; a total of
    1 cannot arise from the options above (every non-cystic composition adds an echogenicity
    point of its own), and would be read as TR1 since it lies below TR2's 2 points."""
    if points < 0:
        raise ValueError("TI-RADS points cannot be negative")
    if points <= 1:
        return LEVELS[1]
    if points == 2:
        return LEVELS[2]
    if points == 3:
        return LEVELS[3]
    if points <= 6:
        return LEVELS[4]
    return LEVELS[5]


def recommendation_for(
    level: TiradsLevel, max_diameter_mm: Decimal | float | None
) -> Recommendation:
    if level.fna_cm is None:
        return Recommendation.NO_FNA
    if max_diameter_mm is None:
        return Recommendation.SIZE_NEEDED
    size_cm = Decimal(str(max_diameter_mm)) / 10
    if size_cm >= level.fna_cm:
        return Recommendation.FNA
    if level.follow_up_cm is not None and size_cm >= level.follow_up_cm:
        return Recommendation.FOLLOW_UP
    return Recommendation.NO_FNA


def tirads_score(
    *,
    composition: str,
    echogenicity: str,
    shape: str,
    margin: str,
    echogenic_foci: Iterable[str],
    max_diameter_mm: Decimal | float | None = None,
) -> TiradsResult:
    """Score one nodule. Raises ValueError naming the first unknown option."""
    foci = set(echogenic_foci)
    for value, table, name in (
        (composition, COMPOSITION_POINTS, "composition"),
        (echogenicity, ECHOGENICITY_POINTS, "echogenicity"),
        (shape, SHAPE_POINTS, "shape"),
        (margin, MARGIN_POINTS, "margin"),
        *((focus, FOCI_POINTS, "echogenic foci") for focus in foci),
    ):
        if value not in table:
            raise ValueError(f"unknown {name} option {value!r}")
    if EchogenicFoci.NONE in foci and len(foci) > 1:
        raise ValueError("'none' cannot be combined with other echogenic foci")

    if composition in (Composition.SPONGIFORM, Composition.CYSTIC):
        # ACR: spongiform and (almost) completely cystic nodules score no further points.
        points = 0
    else:
        points = (
            COMPOSITION_POINTS[composition]
            + ECHOGENICITY_POINTS[echogenicity]
            + SHAPE_POINTS[shape]
            + MARGIN_POINTS[margin]
            + sum(FOCI_POINTS[focus] for focus in foci)
        )
    level = level_for_points(points)
    return TiradsResult(points, level, recommendation_for(level, max_diameter_mm))
