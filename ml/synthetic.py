"""Synthetic multi-centre ultrasound sweeps through calcified thyroid nodules.

No thyroid ultrasound data set can be downloaded where this platform is developed, so these
sweeps stand in for one (DOMAIN.md). Each video is a probe sweep through a 3D volume:
Rayleigh speckle (a complex Gaussian field blurred by an anisotropic point-spread function,
correlated between neighbouring frames), depth attenuation with imperfect time-gain
compensation, strap muscles, thyroid parenchyma, a carotid artery, and one hypoechoic
nodule (a lobulated ellipsoid). Calcifications are placed in 3D:

- malignant nodules mostly carry punctate echogenic foci (microcalcifications: <= 2 px,
  no shadow) that show in only a few frames each, so the middle (key) frame often misses
  them; irregular margins, marked hypoechogenicity and a taller-than-wide shape are more
  frequent;
- benign nodules carry macrocalcifications (shadowing blobs), rim calcifications, large
  comet-tail artefacts in a cystic part, or nothing.

The distributions overlap on purpose (a few benign nodules have 1-2 punctate foci, some
malignant ones have none or faint ones), so the task is not trivial. Each centre has its own
scanner look (gain, dynamic range, speckle size, probe frequency, frame size, tint) and its
own burned-in overlay with a fake patient name, ID and date outside the image region, so an
external centre is a real domain shift.

`generate(out_dir)` writes the `import_cases` folder described in docs/ml-interfaces.md:
`videos/<centre>/<patient>_<nodule>.mp4`, `manifest.csv` and `truth/<stem>.npz`.
`generate_one()` renders a single case in memory, for tests.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from scipy.ndimage import correlate1d

from ml.video import Region

log = logging.getLogger(__name__)

# Calcification type codes (docs/ml-interfaces.md), used in masks everywhere.
NONE, MICRO, MACRO, RIM, COMET = 0, 1, 2, 3, 4
CALC_NAMES = {NONE: "none", MICRO: "punctate", MACRO: "macro", RIM: "rim", COMET: "comet_tail"}

MANIFEST_COLUMNS = ("centre", "patient", "nodule", "video", "scan_plane", "outcome",
                    "diagnosis", "pathology_source", "bethesda")


# ----------------------------------------------------------------------------------------
# Centres


@dataclass(frozen=True)
class CentreStyle:
    """How one hospital's scanner and export look."""

    code: str  # "C1"
    hospital: str  # printed in the banner
    frame_size: tuple[int, int]  # (H, W) of the exported video
    region: tuple[int, int, int, int]  # x, y, w, h of the ultrasound image in the frame
    depth_mm: float  # imaging depth shown over the region's height
    probe: str  # printed in the overlay, e.g. "L12-5 12MHz"
    speckle: tuple[float, float, float]  # PSF sigma (frames, axial px, lateral px)
    attenuation: float  # nepers over the full depth before TGC: higher probe frequency, more
    tgc: float  # fraction of the attenuation the time-gain compensation undoes
    brightness: float  # gray level of 0 dB (parenchyma) after log compression
    dynamic_range_db: float  # dB mapped onto 0..255
    noise: float  # electronic noise amplitude (relative to parenchyma)
    tint: tuple[float, float, float]  # RGB gains of the gray map (1, 1, 1) = neutral
    background: int  # gray level of the frame around the image
    text_color: tuple[int, int, int]  # RGB
    font_scale: float
    side_bar: str  # "left" | "right": where the gray/colour bar sits
    colour_bar: bool  # a colour (Doppler-like) bar beside the gray bar
    clock: bool  # a running clock in the overlay (text that changes over time)
    trapezoid: bool  # virtual-convex image: a trapezoid inside the region rectangle
    fps: float
    frames: tuple[int, int]  # inclusive range of frame counts


CENTRE_STYLES: tuple[CentreStyle, ...] = (
    CentreStyle("C1", "NORTH GENERAL HOSP", (256, 320), (56, 34, 248, 206), 40.0,
                "L12-5 12MHz", (0.9, 0.8, 1.4), 0.9, 0.75, 135.0, 55.0, 0.05,
                (1.0, 1.0, 1.0), 0, (255, 255, 255), 0.36, "left", False, False, False,
                25.0, (40, 56)),
    CentreStyle("C2", "CITY UNIV MED CTR", (240, 320), (16, 42, 268, 186), 35.0,
                "11L 10MHz", (1.0, 0.9, 1.7), 0.8, 0.7, 128.0, 60.0, 0.06,
                (1.0, 1.0, 1.0), 12, (255, 255, 0), 0.34, "right", True, False, False,
                30.0, (44, 60)),
    CentreStyle("C3", "ST. AGNES HOSPITAL", (288, 352), (48, 28, 256, 230), 45.0,
                "VC9-3 9MHz", (1.0, 1.0, 1.9), 1.0, 0.8, 140.0, 52.0, 0.05,
                (1.0, 0.93, 0.80), 0, (230, 230, 230), 0.38, "left", False, False, True,
                25.0, (40, 52)),
    CentreStyle("C4", "RIVERSIDE CLINIC", (256, 336), (76, 26, 244, 214), 50.0,
                "L7-3 7.5MHz", (1.1, 1.2, 2.3), 0.7, 0.7, 125.0, 58.0, 0.07,
                (1.0, 1.0, 1.0), 20, (0, 255, 255), 0.34, "left", True, False, False,
                30.0, (44, 64)),
    CentreStyle("C5", "EAST COAST THYROID", (272, 320), (32, 46, 256, 210), 38.0,
                "L15-7 14MHz", (0.9, 0.7, 1.2), 1.1, 0.8, 150.0, 46.0, 0.04,
                (1.0, 1.0, 1.0), 0, (255, 255, 255), 0.36, "right", False, True, False,
                25.0, (40, 56)),
    CentreStyle("C6", "MOUNTAIN VIEW HOSP", (240, 304), (40, 30, 234, 196), 32.0,
                "L18-6 16MHz", (0.8, 0.6, 1.0), 1.3, 0.75, 118.0, 62.0, 0.05,
                (0.86, 0.95, 1.0), 8, (180, 255, 180), 0.34, "right", False, False, False,
                30.0, (48, 64)),
)


def centre_style(index: int) -> CentreStyle:
    """The style of centre `index` (0-based): the six above, then seeded variations."""
    if index < len(CENTRE_STYLES):
        return CENTRE_STYLES[index]
    base = CENTRE_STYLES[index % len(CENTRE_STYLES)]
    r = np.random.default_rng([7, index])
    return replace(
        base,
        code=f"C{index + 1}",
        hospital=f"REGIONAL HOSP {index + 1}",
        brightness=float(base.brightness + r.uniform(-12, 12)),
        dynamic_range_db=float(base.dynamic_range_db + r.uniform(-5, 5)),
        speckle=tuple(float(s * r.uniform(0.85, 1.2)) for s in base.speckle),
        attenuation=float(base.attenuation * r.uniform(0.8, 1.25)),
    )


# ----------------------------------------------------------------------------------------
# What a nodule is made of


@dataclass
class Calcification:
    kind: int  # MICRO, MACRO, RIM or COMET
    t: float  # centre: frame (elevation), row, column in region pixels
    y: float
    x: float
    size: float  # in-plane radius (px); MICRO: PSF sigma
    depth: float  # elevational sigma (MICRO, COMET) or radius (MACRO), frames
    amplitude: float  # echo amplitude relative to parenchyma
    shadow: float = 0.0  # fraction of the echo removed below it
    arcs: tuple[tuple[float, float], ...] = ()  # RIM: arcs in degrees (0 = +x, 90 = down)
    tail: int = 0  # reverberation echoes below (COMET; small ones for MICRO)


@dataclass
class NoduleSpec:
    label: int  # 1 malignant, 0 benign (the latent truth of indeterminate cases too)
    frames: int
    centre: tuple[float, float, float]  # t, y, x
    radii: tuple[float, float, float]  # t (frames), y, x (px)
    size_mm: float  # maximum in-plane diameter
    echo: float  # echogenicity relative to the parenchyma
    margin: str  # "smooth" | "lobulated" | "irregular"
    taller_than_wide: bool
    lobes: list[tuple[float, float, float, float]]  # (amplitude, n, phase, elevation m)
    edge: float  # boundary width (px)
    cyst: tuple[float, float, float, float, float, float] | None  # t, y, x, rt, ry, rx
    halo: bool  # thin hypoechoic rim around the nodule
    calcs: list[Calcification] = field(default_factory=list)

    def features(self) -> dict:
        """Summary for analysis (what a reader could see in the whole sweep)."""
        kinds = [c.kind for c in self.calcs]
        return {
            "label": self.label, "size_mm": round(self.size_mm, 1),
            "echo": round(self.echo, 3), "margin": self.margin,
            "taller_than_wide": self.taller_than_wide, "cystic": self.cyst is not None,
            "halo": self.halo,
            "n_micro": kinds.count(MICRO), "n_macro": kinds.count(MACRO),
            "rim": RIM in kinds, "n_comet": kinds.count(COMET),
        }


def tirads_reading(meta: Mapping) -> dict:
    """A reader's ACR TI-RADS options for a nodule, from its generator features
    (`NoduleSpec.features()`, the `meta` of `truth/<stem>.npz`): what the demo's annotations
    record and what `ml dataset` turns into auxiliary targets (`ml.tirads`). Irregular and
    lobulated margins are both ACR's "lobulated or irregular"; echogenicity is read from the
    nodule's echo relative to the parenchyma."""
    echo = float(meta.get("echo", 0.5))
    foci = [name for name, present in (
        ("macro", meta.get("n_macro", 0) > 0), ("rim", bool(meta.get("rim"))),
        ("punctate", meta.get("n_micro", 0) > 0)) if present] or ["none"]
    margin = meta.get("margin", "smooth")
    return {
        "composition": "mixed" if meta.get("cystic") else "solid",
        "echogenicity": "very_hypo" if echo < 0.3 else "hypo" if echo < 0.55 else "hyper_iso",
        "shape": "taller" if meta.get("taller_than_wide") else "wider",
        "margin": "lobulated" if margin in ("lobulated", "irregular") else "smooth",
        "echogenic_foci": foci,
    }


@dataclass(frozen=True)
class PatientLook:
    """What the nodules of one patient share: background thyroid and identity."""

    parenchyma: float  # echo of the thyroid (thyroiditis darker)
    heterogeneity: float  # low-frequency texture of the parenchyma
    name: str
    patient_id: str
    exam_date: str
    exam_time: tuple[int, int, int]


_GIVEN = ("JANE", "MARY", "ANNA", "LI", "WEI", "SARA", "MARIA", "JOHN", "PETER", "YUKI",
          "FATIMA", "OLGA", "ELENA", "DAVID", "NORA", "HANA", "LENA", "MEI", "RUTH", "IDA")
_FAMILY = ("DOE", "SMITH", "ZHANG", "WANG", "GARCIA", "MULLER", "ROSSI", "TANAKA", "NOVAK",
           "SILVA", "KOWALSKI", "OKAFOR", "HANSEN", "LEROY", "IVANOVA", "CHEN", "BROWN")


def sample_patient(rng: np.random.Generator) -> PatientLook:
    thyroiditis = rng.random() < 0.15
    year, month, day = rng.integers(2020, 2024), rng.integers(1, 13), rng.integers(1, 29)
    return PatientLook(
        parenchyma=float(rng.uniform(0.55, 0.8) if thyroiditis else rng.uniform(0.9, 1.15)),
        heterogeneity=float(rng.uniform(0.35, 0.55) if thyroiditis else rng.uniform(0.1, 0.25)),
        name=f"{rng.choice(_FAMILY)}^{rng.choice(_GIVEN)}",
        patient_id=f"{rng.integers(10**7, 10**8)}",
        exam_date=f"{year:04d}-{month:02d}-{day:02d}",
        exam_time=(int(rng.integers(8, 18)), int(rng.integers(0, 60)), int(rng.integers(0, 60))),
    )


def _uniform_in_ellipsoid(rng, n: int, scale: float = 1.0) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * (rng.random((n, 1)) ** (1 / 3)) * scale


def sample_nodule(
    rng: np.random.Generator, label: int, style: CentreStyle, frames: int | None = None
) -> NoduleSpec:
    """Draw a nodule's shape, echogenicity and calcifications given its label.

    Probabilities are loose approximations of the literature (TI-RADS features by
    histology); what matters is that each feature overlaps between the classes.
    """
    malignant = label == 1
    x0, y0, w, h = style.region
    T = int(frames or rng.integers(style.frames[0], style.frames[1] + 1))
    mm_per_px = style.depth_mm / h

    size_mm = float(np.clip(rng.lognormal(np.log(10.5 if malignant else 12.5), 0.4), 5, 32))
    ttw = rng.random() < (0.25 if malignant else 0.08)
    ratio = rng.uniform(1.05, 1.45) if ttw else rng.uniform(0.6, 0.95)  # height / width
    half = size_mm / 2 / mm_per_px
    rx, ry = (half / ratio, half) if ttw else (half, half * ratio)
    scale = min(1.0, 0.28 * h / ry, 0.3 * w / rx)  # keep it inside the thyroid band
    rx, ry = rx * scale, ry * scale
    rt = T * rng.uniform(0.27, 0.34)
    ct = T / 2 + rng.uniform(-0.06, 0.06) * T
    cy = rng.uniform(0.42, 0.58) * h
    cx = rng.uniform(0.32, 0.68) * w

    margin = rng.choice(["smooth", "lobulated", "irregular"],
                        p=[0.35, 0.3, 0.35] if malignant else [0.6, 0.25, 0.15])
    lobes = []
    if margin in ("lobulated", "irregular"):
        for _ in range(int(rng.integers(2, 4))):
            lobes.append((rng.uniform(0.06, 0.13), rng.integers(2, 5), rng.uniform(0, 6.3),
                          rng.integers(0, 3)))
    if margin == "irregular":
        for _ in range(int(rng.integers(4, 8))):
            lobes.append((rng.uniform(0.04, 0.09), rng.integers(6, 14), rng.uniform(0, 6.3),
                          rng.integers(1, 5)))
    else:
        lobes.append((0.02, 3, rng.uniform(0, 6.3), 1))
    edge = rng.uniform(1.5, 3.5) if margin == "irregular" else rng.uniform(0.7, 1.5)
    echo = float(np.clip(rng.normal(0.45, 0.14), 0.15, 0.9) if malignant
                 else np.clip(rng.normal(0.58, 0.17), 0.2, 0.95))
    halo = bool(rng.random() < (0.08 if malignant else 0.25))  # thin hypoechoic rim

    cystic = rng.random() < (0.08 if malignant else 0.28)
    cyst = None
    if cystic:
        f = rng.uniform(0.35, 0.6)
        off = _uniform_in_ellipsoid(rng, 1, 0.3)[0]
        cyst = (ct + off[0] * rt, cy + off[1] * ry, cx + off[2] * rx, rt * f, ry * f, rx * f)
    spec = NoduleSpec(label, T, (ct, cy, cx), (rt, ry, rx), size_mm, echo, str(margin), ttw,
                      lobes, float(edge), cyst, halo)

    def inside(n: int, scale: float = 0.8) -> np.ndarray:
        p = _uniform_in_ellipsoid(rng, n, scale)
        return np.c_[ct + p[:, 0] * rt, cy + p[:, 1] * ry, cx + p[:, 2] * rx]

    # punctate echogenic foci (microcalcifications; psammoma bodies in PTC)
    if malignant:
        n_micro = 0 if rng.random() < 0.2 else 1 + int(rng.poisson(3.5))
        faint_p = 0.35
    else:
        n_micro = int(rng.integers(1, 3)) if rng.random() < 0.15 else 0
        faint_p = 0.5
    for t, y, x in inside(n_micro):
        faint = rng.random() < faint_p
        spec.calcs.append(Calcification(
            MICRO, t, y, x, size=rng.uniform(0.5, 0.75), depth=rng.uniform(0.5, 0.9),
            amplitude=rng.uniform(4.0, 7.0) if faint else rng.uniform(9.0, 18.0),
            tail=int(rng.integers(2, 4)) if rng.random() < 0.15 else 0))
    # macrocalcifications with acoustic shadow
    if rng.random() < (0.2 if malignant else 0.33):
        for t, y, x in inside(int(rng.integers(1, 3)), 0.6):
            spec.calcs.append(Calcification(
                MACRO, t, y, x, size=rng.uniform(2.5, 5.5), depth=rng.uniform(1.5, 3.5),
                amplitude=rng.uniform(7.0, 14.0), shadow=rng.uniform(0.7, 0.92)))
    # rim (eggshell) calcification along the anterior margin; interrupted if malignant
    if rng.random() < (0.08 if malignant else 0.17):
        start = rng.uniform(190, 230)
        stop = rng.uniform(310, 350)
        if malignant or rng.random() < 0.3:
            cut = rng.uniform(start + 20, stop - 20)
            arcs = ((start, cut - 12), (cut + 12, stop))
        else:
            arcs = ((start, stop),)
        spec.calcs.append(Calcification(
            RIM, ct, cy, cx, size=1.0, depth=rt * rng.uniform(0.5, 0.85),
            amplitude=rng.uniform(5.0, 10.0), shadow=rng.uniform(0.5, 0.8), arcs=arcs))
    # large comet-tail artefacts in the cystic part (colloid): benign, not calcification
    if cyst is not None and rng.random() < (0.3 if malignant else 0.65):
        c_t, c_y, c_x, c_rt, c_ry, c_rx = cyst
        for _ in range(int(rng.integers(1, 4))):
            p = _uniform_in_ellipsoid(rng, 1, 0.6)[0]
            spec.calcs.append(Calcification(
                COMET, c_t + p[0] * c_rt, c_y - c_ry * rng.uniform(0.3, 0.7), c_x + p[2] * c_rx,
                size=rng.uniform(1.8, 3.0), depth=rng.uniform(0.8, 1.5),
                amplitude=rng.uniform(8.0, 14.0), tail=int(rng.integers(5, 10))))
    return spec


# ----------------------------------------------------------------------------------------
# Rendering


def _smooth_field(rng, shape: tuple[int, int, int], cells: tuple[int, int, int]) -> np.ndarray:
    """Low-frequency noise of `shape` (about unit variance): `cells` random knots per axis,
    bicubic in-plane and linear across frames."""
    T, h, w = shape
    kt, kh, kw = (max(int(c), 2) for c in cells)
    knots = rng.standard_normal((kt, kh, kw)).astype(np.float32)
    planes = np.stack([cv2.resize(k, (w, h), interpolation=cv2.INTER_CUBIC) for k in knots])
    pos = np.linspace(0, kt - 1, T, dtype=np.float32)
    i0 = np.minimum(pos.astype(int), kt - 2)
    f = (pos - i0)[:, None, None]
    return planes[i0] * (1 - f) + planes[i0 + 1] * f


def _blur(vol: np.ndarray, sigma: tuple[float, float, float]) -> np.ndarray:
    """Anisotropic Gaussian blur of a (T, h, w) float32 volume, in place in-plane (OpenCV is
    several times faster than scipy here) then across frames."""
    st, sy, sx = sigma
    for frame in vol:
        cv2.GaussianBlur(frame, (0, 0), sigmaX=sx, sigmaY=sy, dst=frame)
    if st > 0:
        radius = max(int(2.5 * st + 0.5), 1)
        k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / st) ** 2).astype(np.float32)
        vol = correlate1d(vol, k / k.sum(), axis=0, mode="reflect")
    return vol


def _background(shape, style: CentreStyle, patient: PatientLook, spec: NoduleSpec, rng):
    """Echo amplitude of the neck without the nodule: skin, strap muscles, thyroid, deep
    muscles and a carotid artery on the side away from the nodule."""
    T, h, w = shape
    t = np.arange(T, dtype=np.float32)[:, None, None]
    y = np.arange(h, dtype=np.float32)[None, :, None]
    x = np.arange(w, dtype=np.float32)[None, None, :]

    def boundary(level: float, amp: float) -> np.ndarray:  # (T, 1, w)
        lam, phase, drift = rng.uniform(0.6, 1.4) * w, rng.uniform(0, 6.3), rng.uniform(-1, 1)
        return level + amp * np.sin(2 * np.pi * x / lam + phase) + drift * 4 * t / T

    skin = boundary(0.05 * h, 2.0)
    strap = boundary(rng.uniform(0.17, 0.24) * h, 3.0)
    deep = boundary(rng.uniform(0.84, 0.92) * h, 4.0)
    layer = (y >= skin).astype(np.uint8)  # 0 skin, 1 strap muscles, 2 thyroid, 3 deep
    layer += y >= strap
    layer += y >= deep
    # per layer and depth: strap-muscle fibres are faint horizontal bands
    fibres = 1.0 + 0.35 * np.sin(2 * np.pi * np.arange(h) / rng.uniform(3.0, 4.5)
                                 + rng.uniform(0, 6.3))
    table = np.stack([np.full(h, 1.5), 0.45 * fibres, np.full(h, patient.parenchyma),
                      np.full(h, 0.5)]).astype(np.float32)  # (4, h)
    echo = table[layer, np.arange(h)[None, :, None]]  # (T, h, w)
    hetero = _smooth_field(rng, shape, (max(T // 10, 2), h // 20, w // 20))
    hetero *= patient.heterogeneity
    hetero += 1.0
    echo *= np.clip(hetero, 0.3, 2.0, out=hetero)
    # carotid artery: anechoic lumen with a bright wall, on the side away from the nodule
    _, cy, cx = spec.centre
    r = 0.09 * h
    ax = 0.1 * w if cx > w / 2 else 0.9 * w
    ay = float(np.clip(cy + rng.uniform(-0.05, 0.05) * h, strap.mean() + r + 4, h - r - 6))
    drift = 0.04 * h
    ya, yb = max(int(ay - r - 3), 0), min(int(ay + drift + r + 4), h)
    xa, xb = max(int(ax - r - 3), 0), min(int(ax + r + 4), w)
    d = np.sqrt((y[:, ya:yb] - ay - drift * t / T) ** 2 + (x[..., xa:xb] - ax) ** 2)
    sub = echo[:, ya:yb, xa:xb]
    sub[d < r + 2.0] = 1.8
    sub[d < r] = 0.02
    return echo


def _nodule(echo: np.ndarray, spec: NoduleSpec, patient: PatientLook, rng) -> np.ndarray:
    """Blend the nodule into `echo` in place; returns its per-frame boxes (T, 4), region px."""
    T, h, w = echo.shape
    (ct, cy, cx), (rt, ry, rx) = spec.centre, spec.radii
    grow = 1.45  # lobes reach past the base ellipsoid
    t0, t1 = max(int(ct - rt * grow), 0), min(int(ct + rt * grow) + 2, T)
    y0, y1 = max(int(cy - ry * grow), 0), min(int(cy + ry * grow) + 2, h)
    x0, x1 = max(int(cx - rx * grow), 0), min(int(cx + rx * grow) + 2, w)
    tt = (np.arange(t0, t1, dtype=np.float32)[:, None, None] - ct) / rt
    yy = (np.arange(y0, y1, dtype=np.float32)[None, :, None] - cy) / ry
    xx = (np.arange(x0, x1, dtype=np.float32)[None, None, :] - cx) / rx
    d = np.sqrt(tt**2 + yy**2 + xx**2) + 1e-6
    theta = np.arctan2(yy, xx)
    phi = np.arcsin(np.clip(tt / d, -1, 1))
    r_eff = np.ones_like(d)
    for amp, n, phase, m in spec.lobes:
        r_eff += amp * np.cos(n * theta + phase) * np.cos(m * phi + phase / 2)
    occ = 1.0 / (1.0 + np.exp(-(r_eff - d) * min(rx, ry) / spec.edge))
    sub = echo[t0:t1, y0:y1, x0:x1]
    inner = patient.parenchyma * spec.echo
    texture = 1.0 + 0.25 * _smooth_field(rng, sub.shape, (3, 4, 4))
    nod = inner * texture
    if spec.cyst is not None:
        c_t, c_y, c_x, c_rt, c_ry, c_rx = spec.cyst
        dc = np.sqrt(((tt * rt + ct - c_t) / c_rt) ** 2 + ((yy * ry + cy - c_y) / c_ry) ** 2
                     + ((xx * rx + cx - c_x) / c_rx) ** 2)
        cyst = 1.0 / (1.0 + np.exp(-(1.0 - dc) * min(c_rx, c_ry) / 0.8))
        nod = nod * (1 - cyst) + 0.03 * cyst
    sub[...] = sub * (1 - occ) + nod * occ
    if spec.halo:
        sub *= 1.0 - 0.7 * np.exp(-(((d - r_eff) * min(rx, ry) / 1.6) ** 2))

    boxes = np.full((T, 4), np.nan, np.float32)
    inside = occ > 0.5
    rows, cols = inside.any(2), inside.any(1)  # (t, y), (t, x)
    for k in range(t1 - t0):
        if rows[k].any():
            ys, xs = np.flatnonzero(rows[k]), np.flatnonzero(cols[k])
            boxes[t0 + k] = (x0 + xs[0], y0 + ys[0], x0 + xs[-1] + 1, y0 + ys[-1] + 1)
    return boxes


def _frames_of(c: Calcification, T: int, reach: float) -> range:
    return range(max(int(np.floor(c.t - reach)), 0), min(int(np.ceil(c.t + reach)) + 1, T))


def _calcifications(amp: np.ndarray, mask: np.ndarray, spec: NoduleSpec) -> None:
    """Shadows, then bright echoes, frame by frame; writes type codes into `mask`."""
    T, h, w = amp.shape
    occluders: dict[int, np.ndarray] = {}
    bright: dict[int, np.ndarray] = {}
    (ct, cy, cx), (rt, ry, rx) = spec.centre, spec.radii

    def canvas(store, t):
        if t not in store:
            store[t] = np.zeros((h, w), np.float32)
        return store[t]

    order = sorted(spec.calcs, key=lambda c: -c.kind)  # COMET, RIM, MACRO, then MICRO on top
    for c in order:
        if c.kind == MACRO:
            for t in _frames_of(c, T, c.depth):
                q = 1 - ((t - c.t) / c.depth) ** 2
                if q <= 0.05:
                    continue
                r = c.size * np.sqrt(q)
                yy, xx = np.ogrid[:h, :w]
                d = np.hypot((yy - c.y) / 0.8, xx - c.x)  # flatter than tall
                disc = d <= r
                if not disc.any():
                    continue
                front = np.clip(1.2 - (yy - c.y) / max(r, 1), 0.4, 1.2)  # bright surface
                b = canvas(bright, t)
                np.maximum(b, np.where(disc, c.amplitude * front, 0), out=b)
                o = canvas(occluders, t)
                np.maximum(o, np.where(disc, c.shadow, 0), out=o)
                mask[t][disc] = MACRO
        elif c.kind == RIM:
            for t in _frames_of(c, T, c.depth):
                q = 1 - ((t - ct) / rt) ** 2
                if q <= 0.1 or abs(t - ct) > c.depth:
                    continue
                axes = (max(int(round(rx * np.sqrt(q))), 1), max(int(round(ry * np.sqrt(q))), 1))
                arc = np.zeros((h, w), np.uint8)
                for a0, a1 in c.arcs:
                    cv2.ellipse(arc, (int(round(cx)), int(round(cy))), axes, 0, a0, a1, 1, 2)
                on = arc.astype(bool)
                b = canvas(bright, t)
                np.maximum(b, np.where(on, c.amplitude, 0), out=b)
                o = canvas(occluders, t)
                np.maximum(o, np.where(on, c.shadow, 0), out=o)
                mask[t][on] = RIM
        else:  # MICRO and COMET: a point echo, optionally with reverberations below
            reach = 1.6 * c.depth
            yy, xx = np.mgrid[-3:4, -3:4].astype(np.float32)
            iy, ix = int(round(c.y)), int(round(c.x))
            g = np.exp(-0.5 * ((yy + iy - c.y) ** 2 + (xx + ix - c.x) ** 2) / c.size**2)
            for t in _frames_of(c, T, reach):
                wt = float(np.exp(-0.5 * ((t - c.t) / c.depth) ** 2))
                if wt < 0.3:
                    continue
                b = canvas(bright, t)
                spot = c.amplitude * wt * g
                _paste_max(b, spot, iy - 3, ix - 3)
                _paste_code(mask[t], g >= 0.35, iy - 3, ix - 3, c.kind)
                if c.tail:
                    # reverberation: echoes every ~2 px below, narrowing (V shape), fading
                    n = c.tail
                    for k in range(1, n + 1):
                        yk = iy + int(round(k * 1.8))
                        half = (c.size if c.kind == COMET else 0.6) * (1 - k / (n + 1)) + 0.5
                        xa, xb = int(np.floor(ix - half)), int(np.ceil(ix + half)) + 1
                        if yk >= h or xb <= 0 or xa >= w:
                            break
                        xa, xb = max(xa, 0), min(xb, w)
                        level = c.amplitude * wt * 0.82**k
                        row = b[yk, xa:xb]
                        np.maximum(row, level, out=row)
                        if c.kind == COMET:
                            mask[t, yk, xa:xb] = COMET

    for t, o in occluders.items():
        # everything below a shadowing calcification loses echo, with soft lateral edges
        shade = np.maximum.accumulate(o, axis=0)
        shade = cv2.GaussianBlur(shade, (5, 1), 1.0)
        amp[t] *= 1.0 - shade
    for t, b in bright.items():
        np.maximum(amp[t], b, out=amp[t])


def _paste_max(dst: np.ndarray, patch: np.ndarray, y: int, x: int) -> None:
    h, w = dst.shape
    ph, pw = patch.shape
    ya, xa, yb, xb = max(y, 0), max(x, 0), min(y + ph, h), min(x + pw, w)
    if ya < yb and xa < xb:
        view = dst[ya:yb, xa:xb]
        np.maximum(view, patch[ya - y : yb - y, xa - x : xb - x], out=view)


def _paste_code(dst: np.ndarray, on: np.ndarray, y: int, x: int, code: int) -> None:
    h, w = dst.shape
    ph, pw = on.shape
    ya, xa, yb, xb = max(y, 0), max(x, 0), min(y + ph, h), min(x + pw, w)
    if ya < yb and xa < xb:
        dst[ya:yb, xa:xb][on[ya - y : yb - y, xa - x : xb - x]] = code


def _wobble(frames: np.ndarray, mask: np.ndarray, boxes: np.ndarray, rng) -> None:
    """A hand-held sweep is not a straight line: shift each frame by a smooth drift of a few
    pixels (whole pixels, so tiny foci stay sharp), masks and boxes with it. In place."""
    T, h, w = frames.shape
    knots = np.linspace(0, T - 1, 4)
    dx = np.rint(np.interp(np.arange(T), knots, rng.uniform(-4, 4, 4))).astype(int)
    dy = np.rint(np.interp(np.arange(T), knots, rng.uniform(-2, 2, 4))).astype(int)
    for t in range(T):
        if dx[t] == 0 and dy[t] == 0:
            continue
        m = np.float32([[1, 0, dx[t]], [0, 1, dy[t]]])
        frames[t] = cv2.warpAffine(frames[t], m, (w, h), flags=cv2.INTER_NEAREST,
                                   borderMode=cv2.BORDER_REFLECT)
        mask[t] = cv2.warpAffine(mask[t], m, (w, h), flags=cv2.INTER_NEAREST,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        boxes[t] += (dx[t], dy[t], dx[t], dy[t])
    np.clip(boxes[:, 0::2], 0, w, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, h, out=boxes[:, 1::2])


def _trapezoid(h: int, w: int) -> np.ndarray:
    """Virtual-convex image: narrower at the skin line."""
    mask = np.zeros((h, w), np.uint8)
    inset = int(0.12 * w)
    pts = np.array([[inset, 0], [w - 1 - inset, 0], [w - 1, h - 1], [0, h - 1]], np.int32)
    cv2.fillConvexPoly(mask, pts, 1)
    return mask.astype(bool)


def render_sweep(
    spec: NoduleSpec, style: CentreStyle, patient: PatientLook, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ultrasound image of every frame (T, h, w) uint8, its type mask and the nodule's
    boxes (T, 4), all in region coordinates."""
    _, _, w, h = style.region
    shape = (spec.frames, h, w)
    # speckle: complex Gaussian scatter blurred by the PSF; its envelope is Rayleigh. The
    # scanner's light spatial compounding softens the intensity a little.
    re = _blur(rng.standard_normal(shape, dtype=np.float32), style.speckle)
    im = _blur(rng.standard_normal(shape, dtype=np.float32), style.speckle)
    intensity = np.multiply(re, re, out=re)
    intensity += im * im
    del im
    for frame in intensity:
        cv2.GaussianBlur(frame, (0, 0), 0.7, dst=frame)
    env = np.sqrt(intensity * (1.0 / float(intensity.mean())), out=intensity)
    echo = _background(shape, style, patient, spec, rng)
    boxes = _nodule(echo, spec, patient, rng)
    amp = echo * env
    del echo, env
    mask = np.zeros(shape, np.uint8)
    _calcifications(amp, mask, spec)
    depth = np.linspace(0, 1, h, dtype=np.float32)
    amp *= np.exp(-style.attenuation * (1 - style.tgc) * depth)[None, :, None]
    noise = rng.standard_normal(shape, dtype=np.float32)
    amp = np.hypot(amp, style.noise * noise, out=amp)
    # log compression onto 0..255
    gray = np.log10(amp + 1e-4, out=amp)
    gray *= 20.0 * 255.0 / style.dynamic_range_db
    gray += style.brightness
    frames = np.clip(gray, 0, 255, out=gray).astype(np.uint8)
    _wobble(frames, mask, boxes, rng)
    if style.trapezoid:
        keep = _trapezoid(h, w)
        frames[:, ~keep] = 0
        mask[:, ~keep] = 0
    return frames, mask, boxes


# ----------------------------------------------------------------------------------------
# Overlay and whole frames


def _overlay(style: CentreStyle, patient: PatientLook, rng) -> tuple[np.ndarray, np.ndarray]:
    """The static burned-in overlay (H, W, 3) RGB and where it is drawn (H, W) bool."""
    H, W = style.frame_size
    x, y, w, h = style.region
    img = np.zeros((H, W, 3), np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    fs, col = style.font_scale, style.text_color

    def text(s: str, org: tuple[int, int], scale: float = fs, color=col):
        cv2.putText(img, s, org, font, scale, color, 1, cv2.LINE_AA)

    line = max(int(26 * fs), 9)
    text(style.hospital, (4, line))
    text(f"{patient.name}  ID:{patient.patient_id}", (4, 2 * line))
    text(patient.exam_date, (W - int(150 * fs / 0.36), line))
    text(style.probe, (W - int(150 * fs / 0.36), 2 * line))
    # gray bar (and colour bar), depth ticks, probe marker
    bar_x = 6 if style.side_bar == "left" else W - 14
    if (style.side_bar == "left" and x < 24) or (style.side_bar == "right" and W - x - w < 24):
        bar_x = 6 if style.side_bar == "right" else W - 14  # not enough room: other side
    top, bottom = y + 10, y + min(h - 10, 110)
    ramp = np.linspace(255, 0, bottom - top).astype(np.uint8)
    img[top:bottom, bar_x : bar_x + 6] = ramp[:, None, None]
    if style.colour_bar:
        hsv = np.stack([np.linspace(0, 30, bottom - top), np.full(bottom - top, 255),
                        np.full(bottom - top, 255)], 1).astype(np.uint8)
        rgb = cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]
        img[bottom + 6 : bottom + 6 + len(rgb) // 2, bar_x : bar_x + 6] = rgb[::2, None]
    tick_x = x + w + 2 if x + w + 6 <= W else x - 6
    for k in range(0, h, max(h // 8, 8)):
        cv2.line(img, (tick_x, y + k), (tick_x + 3, y + k), col, 1)
    if x >= 12:  # probe-orientation marker beside the image's top-left corner
        cv2.circle(img, (x - 6, y + 6), 3, col, -1)
    if y + h + line + 2 < H:
        text(f"Gn {rng.integers(40, 70)}  DR {int(style.dynamic_range_db)}  "
             f"{style.depth_mm / 10:.1f}cm", (4, H - 4))
    drawn = img.any(axis=2)
    drawn[y : y + h, x : x + w] = False  # never inside the image
    img[~drawn] = 0
    return img, drawn


@dataclass
class SyntheticCase:
    """One rendered sweep, in memory."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB, the video
    mask: np.ndarray  # (T, H, W) uint8 calcification type codes
    boxes: np.ndarray  # (T, 4) float32 nodule x0, y0, x1, y1; NaN where absent
    region: Region  # the ultrasound image in the frame
    overlay: np.ndarray  # (H, W) bool: pixels a burned-in overlay may occupy
    spec: NoduleSpec
    style: CentreStyle
    patient: PatientLook
    fps: float
    outcome: str = ""  # set for planned cases: benign | malignant | indeterminate

    @property
    def label(self) -> int:
        return self.spec.label

    def truth(self) -> dict[str, np.ndarray]:
        """The arrays of `truth/<stem>.npz`."""
        meta = {**self.spec.features(), "outcome": self.outcome or
                ("malignant" if self.label else "benign"), "centre": self.style.code,
                "fps": self.fps,
                "burned_in": {"name": self.patient.name, "id": self.patient.patient_id,
                              "date": self.patient.exam_date}}
        return {"mask": self.mask, "boxes": self.boxes,
                "region": np.array(self.region.as_tuple(), np.int32),
                "meta": np.array(json.dumps(meta))}


def _compose(gray: np.ndarray, style: CentreStyle, patient: PatientLook, rng):
    T = len(gray)
    H, W = style.frame_size
    x, y, w, h = style.region
    over, drawn = _overlay(style, patient, rng)
    base = np.full((H, W, 3), style.background, np.uint8)
    base[drawn] = over[drawn]
    frames = np.repeat(base[None], T, axis=0)
    if style.clock:
        hh, mm, ss = patient.exam_time
        org = (W - int(150 * style.font_scale / 0.36), 3 * max(int(26 * style.font_scale), 9))
        for t in range(T):
            s = ss + int(t / style.fps)
            label = f"{hh:02d}:{mm + s // 60:02d}:{s % 60:02d}"
            cv2.putText(frames[t], label, org, cv2.FONT_HERSHEY_SIMPLEX, style.font_scale,
                        style.text_color, 1, cv2.LINE_AA)
        (tw, th), base_line = cv2.getTextSize("00:00:00", cv2.FONT_HERSHEY_SIMPLEX,
                                             style.font_scale, 1)
        clock = np.zeros((H, W), bool)
        clock[max(org[1] - th - 2, 0) : org[1] + base_line + 2, org[0] - 2 : org[0] + tw + 4] = 1
        clock[y : y + h, x : x + w] = False
        drawn = drawn | clock
    # the image goes in last, so no overlay can reach into it
    tint = np.asarray(style.tint, np.float32)
    if np.allclose(tint, 1.0):
        frames[:, y : y + h, x : x + w] = gray[..., None]
    else:
        frames[:, y : y + h, x : x + w] = (gray[..., None] * tint).astype(np.uint8)
    return frames, drawn


def generate_one(
    seed: int | Sequence[int] = 0,
    centre: int = 0,
    *,
    label: int | None = None,
    frames: int | None = None,
    patient: PatientLook | None = None,
    style: CentreStyle | None = None,
) -> SyntheticCase:
    """Render one sweep in memory: deterministic in (`seed`, `centre`, `label`, `frames`).

    `label` None draws malignant with probability 0.45; `frames` overrides the centre's
    frame count (tests use short sweeps).
    """
    rng = np.random.default_rng(seed)
    style = style or centre_style(centre)
    if label is None:
        label = int(rng.random() < 0.45)
    patient = patient or sample_patient(rng)
    spec = sample_nodule(rng, int(label), style, frames)
    gray, local_mask, local_boxes = render_sweep(spec, style, patient, rng)
    video, drawn = _compose(gray, style, patient, rng)
    x, y, w, h = style.region
    T = len(gray)
    mask = np.zeros((T, *style.frame_size), np.uint8)
    mask[:, y : y + h, x : x + w] = local_mask
    boxes = local_boxes + np.array([x, y, x, y], np.float32)
    return SyntheticCase(video, mask, boxes, Region(x, y, w, h), drawn, spec, style, patient,
                         style.fps)


# ----------------------------------------------------------------------------------------
# Files


def write_video(path: str | Path, frames: np.ndarray, fps: float) -> None:
    """Write RGB frames (T, H, W, 3) as an MPEG-4 Part 2 ('mp4v') MP4 that OpenCV reads back
    frame for frame; raises RuntimeError otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    T, H, W = frames.shape[:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (W, H))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MP4 (mp4v) files to {path}")
    try:
        for f in frames:
            writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    if n != T:
        raise RuntimeError(f"{path}: wrote {T} frames but OpenCV reads back {n}")


def _pathology(rng, outcome: str) -> tuple[str, str, str]:
    """(diagnosis, pathology_source, bethesda) consistent with the outcome (DOMAIN.md)."""
    if outcome == "malignant":
        if rng.random() < 0.75:  # surgery, usually after a suspicious or malignant FNA
            dx = "papillary_carcinoma" if rng.random() < 0.92 else "iefvptc"
            beth = rng.choice(["VI", "V", "IV", "III", ""], p=[0.5, 0.25, 0.07, 0.05, 0.13])
            return dx, "surgery", str(beth)
        return "papillary_carcinoma", "fna", "VI"
    if outcome == "benign":
        if rng.random() < 0.3:  # surgery for size, symptoms or an indeterminate FNA
            dx = rng.choice(["follicular_nodular_disease", "follicular_adenoma",
                             "oncocytic_adenoma"], p=[0.7, 0.25, 0.05])
            beth = rng.choice(["II", "III", "IV", ""], p=[0.4, 0.2, 0.2, 0.2])
            return str(dx), "surgery", str(beth)
        return "follicular_nodular_disease", "fna", "II"
    return "", "fna", str(rng.choice(["III", "IV", "I"], p=[0.5, 0.35, 0.15]))


def _nodules_per_patient(rng) -> int:
    # 1-3 nodules, mean 1.8 as in the study (2,319 nodules of 1,257 patients)
    return int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))


@dataclass(frozen=True)
class CasePlan:
    """One row of the manifest before its video is rendered."""

    centre: int  # 0-based centre index
    centre_code: str  # "C1"
    patient: str  # pseudonym, e.g. "C1-P007"
    patient_seed: tuple[int, ...]  # identity and thyroid shared by the patient's nodules
    nodule: str  # "N1".."N3"
    label: int  # 1 malignant, 0 benign: what is rendered (latent for indeterminate)
    outcome: str  # benign | malignant | indeterminate
    diagnosis: str
    pathology_source: str
    bethesda: str
    seed: tuple[int, ...]  # the case's own generator

    @property
    def stem(self) -> str:
        return f"{self.patient}_{self.nodule}"

    @property
    def video(self) -> str:
        return f"videos/{self.centre_code}/{self.stem}.mp4"

    def row(self) -> dict[str, str]:
        return {"centre": self.centre_code, "patient": self.patient, "nodule": self.nodule,
                "video": self.video, "scan_plane": "sweep", "outcome": self.outcome,
                "diagnosis": self.diagnosis, "pathology_source": self.pathology_source,
                "bethesda": self.bethesda}


def plan_cases(
    centres: int = 6,
    nodules: int = 60,
    seed: int = 0,
    *,
    malignant_fraction: float = 0.45,
    indeterminate_fraction: float = 0.03,
) -> list[CasePlan]:
    """Patients, labels and pathology of every case, without rendering anything.

    Each centre gets exactly round(nodules x malignant_fraction) malignant nodules;
    indeterminate ones (Bethesda I/III/IV without surgery) are drawn from all nodules and
    keep their latent label for rendering. Patients have 1-3 nodules (mean 1.8).
    """
    plans: list[CasePlan] = []
    for c in range(centres):
        code = centre_style(c).code
        rng = np.random.default_rng([seed, c])
        labels = np.zeros(nodules, int)
        labels[: int(round(nodules * malignant_fraction))] = 1
        rng.shuffle(labels)
        n_indet = int(round(nodules * indeterminate_fraction))
        indeterminate = set(rng.choice(nodules, n_indet, replace=False).tolist())
        k, p = 0, 0
        while k < nodules:
            p += 1
            for j in range(1, min(_nodules_per_patient(rng), nodules - k) + 1):
                outcome = ("indeterminate" if k in indeterminate
                           else "malignant" if labels[k] else "benign")
                dx, source, beth = _pathology(np.random.default_rng([seed, c, p, j, 1]), outcome)
                plans.append(CasePlan(c, code, f"{code}-P{p:03d}", (seed, c, p, 0), f"N{j}",
                                      int(labels[k]), outcome, dx, source, beth,
                                      (seed, c, p, j)))
                k += 1
    return plans


def render_case(plan: CasePlan, frames: int | None = None) -> SyntheticCase:
    """Render the sweep of one planned case (deterministic in the plan)."""
    patient = sample_patient(np.random.default_rng(plan.patient_seed))
    case = generate_one(plan.seed, plan.centre, label=plan.label, frames=frames,
                        patient=patient)
    case.outcome = plan.outcome
    return case


@dataclass
class GenerateReport:
    out_dir: str
    centres: int
    nodules: int
    patients: int
    outcomes: dict
    seconds: float


def generate(
    out_dir: str | Path,
    centres: int = 6,
    nodules: int = 60,
    seed: int = 0,
    *,
    malignant_fraction: float = 0.45,
    indeterminate_fraction: float = 0.03,
    frames: int | None = None,
    progress: bool = True,
) -> GenerateReport:
    """Write `centres` x `nodules` synthetic sweeps as an `import_cases` folder:
    `videos/<centre>/<patient>_<nodule>.mp4`, `manifest.csv`, `truth/<stem>.npz` and
    `synthetic.json` (this report and the seed).

    Deterministic in `seed` (same manifest, same video bytes with the same OpenCV build);
    every case draws from its own generator, so one case can be re-rendered alone
    (`render_case(plan_cases(...)[i])`). `frames` fixes the sweep length (tests).
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    out = Path(out_dir)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    plans = plan_cases(centres, nodules, seed, malignant_fraction=malignant_fraction,
                       indeterminate_fraction=indeterminate_fraction)
    for plan in tqdm(plans, desc="synthetic sweeps", unit="video", disable=not progress):
        case = render_case(plan, frames)
        write_video(out / plan.video, case.frames, case.fps)
        np.savez_compressed(out / "truth" / f"{plan.stem}.npz", **case.truth())
    with (out / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(p.row() for p in plans)
    counts: dict[str, int] = {}
    for p in plans:
        counts[p.outcome] = counts.get(p.outcome, 0) + 1
    report = GenerateReport(str(out), centres, nodules, len({p.patient for p in plans}),
                            counts, round(time.perf_counter() - t_start, 1))
    (out / "synthetic.json").write_text(json.dumps({**asdict(report), "seed": seed}, indent=2)
                                        + "\n")
    log.info("wrote %d videos of %d patients to %s in %.0f s", len(plans), report.patients,
             out, report.seconds)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.synthetic", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--centres", type=int, default=6)
    parser.add_argument("--nodules", type=int, default=60, help="nodules per centre")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=None, help="frames per sweep (default: "
                        "each centre's own range)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    generate(args.out_dir, args.centres, args.nodules, args.seed, frames=args.frames)


if __name__ == "__main__":
    main()
