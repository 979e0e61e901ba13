"""The ACR TI-RADS point chart (Tessler et al., J Am Coll Radiol 2017;14:587-595), without Django.

One copy of the chart for the whole project: `annotations.tirads` keys these points by its
form choices, and `ml` turns a reader's TI-RADS features into auxiliary training targets
(`tirads_targets`; the IRv2 `tirads_head`). Keys are the option values the annotation format
stores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

COMPOSITION_POINTS = {"cystic": 0, "spongiform": 0, "mixed": 1, "solid": 2}
ECHOGENICITY_POINTS = {"anechoic": 0, "hyper_iso": 1, "hypo": 2, "very_hypo": 3}
SHAPE_POINTS = {"wider": 0, "taller": 3}
MARGIN_POINTS = {"smooth": 0, "ill_defined": 0, "lobulated": 2, "extrathyroidal": 3}
FOCI_POINTS = {"none": 0, "macro": 1, "rim": 2, "punctate": 3}

# The features a nodule has one option of, in the order of the targets and of the manifest's
# `tirads_<feature>` columns. Echogenic foci are left out: they are multi-select, and the
# calcification marks already teach the network where the foci are.
FEATURE_POINTS = {
    "composition": COMPOSITION_POINTS,
    "echogenicity": ECHOGENICITY_POINTS,
    "shape": SHAPE_POINTS,
    "margin": MARGIN_POINTS,
}
FEATURES = tuple(FEATURE_POINTS)
MAX_POINTS = tuple(max(table.values()) for table in FEATURE_POINTS.values())


def feature_points(reading: Mapping[str, str]) -> dict[str, int | None]:
    """{feature: points} of a reader's options ({"echogenicity": "hypo", ...}); None where the
    feature was not read. Raises ValueError naming an unknown option."""
    points: dict[str, int | None] = {}
    for name, table in FEATURE_POINTS.items():
        value = reading.get(name) or ""
        if value and value not in table:
            raise ValueError(f"unknown TI-RADS {name} option {value!r}")
        points[name] = table[value] if value else None
    return points


def tirads_targets(points: Mapping[str, int | float | None]) -> np.ndarray:
    """Feature points -> float32 (len(FEATURES),) in [0, 1] (points / the feature's maximum),
    NaN where a feature was not read: the targets of the auxiliary TI-RADS head."""
    out = np.full(len(FEATURES), np.nan, np.float32)
    for i, (name, top) in enumerate(zip(FEATURES, MAX_POINTS, strict=True)):
        value = points.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if not 0 <= value <= top:
            raise ValueError(f"TI-RADS {name} points {value} are outside 0-{top}")
        out[i] = value / top
    return out
