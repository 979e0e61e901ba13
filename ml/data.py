"""Dataset directories, patient-level splits, clip sampling, ROI crop and augmentation.

A dataset directory (see docs/ml-interfaces.md) holds `manifest.csv` and one `.npy` clip per case
(`(T, H, W)` uint8, every frame the platform's `ml.video.ClipBuilder` kept), with optional
calcification masks and nodule boxes aligned to the clip. `ClipDataset` memory-maps the clips and
turns each into a model input with `prepare_clip`, the one function that training, evaluation and
the platform's inference all use, so the model never sees a clip prepared differently.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ml.tirads import FEATURES as TIRADS_FEATURES
from ml.tirads import MAX_POINTS as TIRADS_MAX_POINTS
from ml.tirads import tirads_targets

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "internal_test", "external_test")
MANIFEST_COLUMNS = ("case_id", "patient", "centre", "split", "label", "clip", "mask", "boxes",
                    *(f"tirads_{name}" for name in TIRADS_FEATURES))

# Calcification type codes (docs/ml-interfaces.md). When a resize or warp merges pixels of
# different codes, the most specific sign wins: punctate foci (1) are what the model must not
# lose, the benign comet-tail artefact (4) is the least important.
_CODE_TO_RANK = np.array([0, 4, 2, 3, 1] + [0] * 251, dtype=np.uint8)
_RANK_TO_CODE = np.array([0, 4, 2, 3, 1], dtype=np.uint8)
CALCIFICATION_CODES = (1, 2, 3)  # 4, the large comet-tail artefact, is not a calcification


class DataError(ValueError):
    """A dataset that cannot be used as asked; the message is meant for a person."""


# --------------------------------------------------------------------------------------------
# Manifest


@dataclass(frozen=True)
class CaseRecord:
    case_id: str
    patient: str
    centre: str
    split: str
    label: int  # 0 benign, 1 malignant
    clip: str  # path relative to the dataset directory
    mask: str | None = None
    boxes: str | None = None
    # A reader's ACR TI-RADS points per feature (ml.tirads.FEATURES), None where not read:
    # the targets of the auxiliary TI-RADS head.
    tirads_composition: int | None = None
    tirads_echogenicity: int | None = None
    tirads_shape: int | None = None
    tirads_margin: int | None = None

    @property
    def tirads_points(self) -> dict[str, int | None]:
        return {name: getattr(self, f"tirads_{name}") for name in TIRADS_FEATURES}


def _tirads_columns(row: Mapping, where: str) -> dict[str, int | None]:
    """The optional `tirads_<feature>` columns of a manifest row: integer points within the
    feature's range, or empty."""
    out: dict[str, int | None] = {}
    for name, top in zip(TIRADS_FEATURES, TIRADS_MAX_POINTS, strict=True):
        raw = (row.get(f"tirads_{name}") or "").strip()
        if not raw:
            out[f"tirads_{name}"] = None
            continue
        if not raw.isdigit() or int(raw) > top:
            raise DataError(f"{where}: tirads_{name} {raw!r} is not TI-RADS points 0-{top}")
        out[f"tirads_{name}"] = int(raw)
    return out


def read_manifest(root: str | Path, manifest: str = "manifest.csv") -> list[CaseRecord]:
    root = Path(root)
    path = root / manifest
    if not path.is_file():
        raise DataError(f"{path} does not exist: not a dataset directory")
    records = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"case_id", "patient", "centre", "split", "label", "clip"} - set(
            reader.fieldnames or ()
        )
        if missing:
            raise DataError(f"{path} lacks the columns {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            if row["split"] not in SPLITS:
                raise DataError(f"{path}:{line}: split {row['split']!r} is not one of {SPLITS}")
            if row["label"] not in ("0", "1"):
                raise DataError(f"{path}:{line}: label {row['label']!r} is not 0 or 1")
            records.append(
                CaseRecord(
                    case_id=row["case_id"],
                    patient=row["patient"],
                    centre=row["centre"],
                    split=row["split"],
                    label=int(row["label"]),
                    clip=row["clip"],
                    mask=row.get("mask") or None,
                    boxes=row.get("boxes") or None,
                    **_tirads_columns(row, f"{path}:{line}"),
                )
            )
    return records


def write_manifest(path: str | Path, records: Iterable[CaseRecord]) -> None:
    path = Path(path)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        for r in records:
            row = asdict(r)
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in MANIFEST_COLUMNS})
    tmp.replace(path)


def count_labels(records: Iterable[CaseRecord]) -> dict[str, dict[str, int]]:
    """{split: {"n": .., "malignant": .., "benign": ..}} for the splits present."""
    counts: dict[str, dict[str, int]] = {}
    for r in records:
        c = counts.setdefault(r.split, {"n": 0, "malignant": 0, "benign": 0})
        c["n"] += 1
        c["malignant" if r.label == 1 else "benign"] += 1
    return counts


# --------------------------------------------------------------------------------------------
# Splits


def _field(record, name):
    return record[name] if isinstance(record, Mapping) else getattr(record, name)


def patient_level_split(
    records: Iterable,
    fractions: Sequence[float] = (0.7, 0.1, 0.1),
    external_centres: Iterable[str] = (),
    seed: int = 0,
) -> dict[str, str]:
    """Assign each case to a split; returns {case_id: split}.

    `records` are mappings or objects with `case_id`, `patient`, `centre`, `label`.
    Cases of `external_centres` all go to `external_test`. The others go to train, val and
    internal_test in the proportions `fractions` (normalised, so the paper's 70/10/10 of the
    whole becomes 7/9, 1/9, 1/9 of the internal centres), with whole patients kept together:
    a patient's nodules never straddle splits (the paper has ~1.8 nodules per patient, and a
    patient's second nodule in the test set would leak). A patient is identified by
    (centre, patient), since hospitals number their patients independently. Stratified by label
    at the nodule level: every split gets its share of benign and of malignant nodules.
    """
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    fr = np.asarray(fractions, dtype=float) / sum(fractions)
    external = set(external_centres)
    out: dict[str, str] = {}
    patients: dict[tuple[str, str], list] = defaultdict(list)
    for r in records:
        case_id = str(_field(r, "case_id"))
        if case_id in out:
            raise ValueError(f"duplicate case_id {case_id}")
        centre = str(_field(r, "centre"))
        if centre in external:
            out[case_id] = "external_test"
        else:
            patients[(centre, str(_field(r, "patient")))].append(r)
            out[case_id] = ""
    # Greedy stratified group assignment: each patient, largest first (ties in seeded random
    # order), goes to the split whose benign and malignant nodule counts are furthest below
    # their targets, weighted by the patient's own benign and malignant nodules.
    keys = sorted(patients)
    random.Random(seed).shuffle(keys)
    keys.sort(key=lambda k: -len(patients[k]))
    composition = {
        k: np.bincount([int(_field(c, "label")) for c in patients[k]], minlength=2) for k in keys
    }
    total = sum(composition.values()) if keys else np.zeros(2)
    target = fr[:, None] * total[None, :]  # (split, class)
    have = np.zeros((3, 2))
    internal = SPLITS[:3]
    for k in keys:
        s = int(np.argmax((target - have) @ composition[k]))
        have[s] += composition[k]
        for c in patients[k]:
            out[str(_field(c, "case_id"))] = internal[s]
    return out


def leave_one_centre_out(
    records: Sequence, fractions: Sequence[float] = (0.7, 0.1, 0.1), seed: int = 0
) -> dict[str, dict[str, str]]:
    """One split per centre, holding that centre out as external_test: {centre: {case: split}}."""
    centres = sorted({str(_field(r, "centre")) for r in records})
    return {
        c: patient_level_split(records, fractions, external_centres=[c], seed=seed)
        for c in centres
    }


def write_loco_manifests(root: str | Path, seed: int = 0) -> list[Path]:
    """Write `folds/loco_<centre>.csv` beside the manifest, sharing its clips.

    Train a fold with `python -m ml train --manifest folds/loco_<centre>.csv ...`.
    """
    root = Path(root)
    records = read_manifest(root)
    (root / "folds").mkdir(exist_ok=True)
    paths = []
    for centre, split in leave_one_centre_out(records, seed=seed).items():
        path = root / "folds" / f"loco_{centre}.csv"
        write_manifest(path, [_replace_split(r, split[r.case_id], prefix="../") for r in records])
        paths.append(path)
    return paths


def _replace_split(r: CaseRecord, split: str, prefix: str = "") -> CaseRecord:
    def rel(p):
        return None if p is None else prefix + p

    return replace(r, split=split, clip=rel(r.clip), mask=rel(r.mask), boxes=rel(r.boxes))


# --------------------------------------------------------------------------------------------
# Geometry helpers


def key_frame_index(boxes: np.ndarray | None, n_frames: int | None = None) -> int:
    """The frame with the largest annotated nodule box, else the middle frame.

    `boxes` is (T, 4) `x0, y0, x1, y1` with NaN rows where the nodule is out of view.
    """
    if boxes is not None and len(boxes):
        b = np.asarray(boxes, dtype=np.float64)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        if np.isfinite(area).any():
            return int(np.nanargmax(np.where(np.isfinite(area), area, -np.inf)))
        n_frames = len(b) if n_frames is None else n_frames
    if n_frames is None:
        raise ValueError("key_frame_index needs boxes or n_frames")
    return (n_frames - 1) // 2


def union_box(boxes: np.ndarray | None) -> tuple[float, float, float, float] | None:
    """Union of the finite boxes over all frames, or None when there are none."""
    if boxes is None:
        return None
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    b = b[np.isfinite(b).all(axis=1)]
    if not len(b):
        return None
    return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())


def roi_crop_box(
    boxes: np.ndarray | None,
    image_hw: tuple[int, int],
    margin: float,
    min_side: int = 16,
    jitter: tuple[float, float, float] | None = None,
    fixed_side: int = 0,
    max_side: int = 0,
) -> tuple[int, int, int, int]:
    """Square crop `(x0, y0, x1, y1)` (integer, end exclusive) around the union nodule box.

    The box grows by `margin` x its larger side on every side and is shifted to stay inside the
    image; a crop larger than the image is cut to it. `fixed_side` > 0 instead takes a square of
    that many pixels centred on the nodule, whatever its size: every crop is then resized by
    the same factor, so a focus of a given size in pixels keeps its size at the model's input
    (a large nodule's edge may fall outside). `jitter` = (scale, dx, dy) rescales the side and
    shifts the centre by fractions of the side (training augmentation). `max_side` > 0 caps
    the side (after the jitter) at that many pixels: a large nodule is then shrunk no more than
    a crop of that side would be, so that its punctate foci survive the resize, at the price
    of its rim. Without boxes the crop is the whole image.
    """
    h, w = image_hw
    u = union_box(boxes)
    if u is None:
        cx, cy, side = w / 2, h / 2, float(max(h, w))
    else:
        x0, y0, x1, y1 = u
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        side = (float(fixed_side) if fixed_side > 0
                else max(x1 - x0, y1 - y0, 1.0) * (1 + 2 * margin))
    if jitter is not None:
        scale, dx, dy = jitter
        cx, cy, side = cx + dx * side, cy + dy * side, side * scale
    if u is not None and max_side > 0:
        side = min(side, float(max_side))
    side = max(side, float(min_side))
    sw, sh = int(round(min(side, w))), int(round(min(side, h)))
    x0 = int(round(min(max(cx - sw / 2, 0), w - sw)))
    y0 = int(round(min(max(cy - sh / 2, 0), h - sh)))
    return x0, y0, x0 + sw, y0 + sh


def resize_clip(clip: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, h, w) -> (T, H, W) float32; area averaging when shrinking, bilinear when growing."""
    t, h, w = clip.shape
    if (h, w) == tuple(size):
        return clip.astype(np.float32, copy=True)
    interp = cv2.INTER_AREA if size[0] * size[1] < h * w else cv2.INTER_LINEAR
    out = np.empty((t, *size), np.float32)
    for k in range(t):  # OpenCV's area resize takes at most 4 channels at a time
        out[k] = cv2.resize(clip[k].astype(np.float32), (size[1], size[0]), interpolation=interp)
    return out


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, h, w) type codes -> (T, H, W) by max-pooling over each output pixel's footprint.

    Nearest-neighbour would drop a 1-2 px punctate focus when shrinking; the max keeps it, and
    where codes meet the most specific one wins (see `_CODE_TO_RANK`). Growing repeats pixels.
    """
    t, h, w = mask.shape
    if (h, w) == tuple(size):
        return np.array(mask, dtype=np.uint8)
    rank = _CODE_TO_RANK[np.asarray(mask, dtype=np.uint8)]
    rows = np.floor(np.arange(size[0]) * h / size[0]).astype(np.intp)
    cols = np.floor(np.arange(size[1]) * w / size[1]).astype(np.intp)
    rank = np.maximum.reduceat(rank, rows, axis=1)
    rank = np.maximum.reduceat(rank, cols, axis=2)
    return _RANK_TO_CODE[rank]


def _warp(frames: np.ndarray, matrix: np.ndarray, flags: int) -> np.ndarray:
    """Apply one 2x3 affine matrix to every frame of (T, H, W) float32."""
    t, h, w = frames.shape
    out = np.empty_like(frames)
    for k in range(t):
        out[k] = cv2.warpAffine(frames[k], matrix, (w, h), flags=flags,
                                borderMode=cv2.BORDER_REFLECT_101)
    return out


def _warp_mask(mask: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Warp type codes so that a 1 px focus survives: each nested level (rank >= r) is warped
    bilinearly and kept wherever it touches an output pixel."""
    rank = _CODE_TO_RANK[mask]
    out = np.zeros(mask.shape, np.uint8)
    marked = np.flatnonzero(rank.any(axis=(1, 2)))  # most frames have no mark: skip them
    for r in range(1, int(rank.max(initial=0)) + 1):
        level = _warp((rank[marked] >= r).astype(np.float32), matrix, cv2.INTER_LINEAR)
        out[marked] += level > 0.05
    return _RANK_TO_CODE[out]


# --------------------------------------------------------------------------------------------
# Clip preparation


@dataclass(frozen=True)
class ClipSpec:
    """What the model is fed; stored in the run's config.json."""

    frames: int = 16  # T frames sampled over the sweep (1 for 2D models: the key frame)
    size: tuple[int, int] = (64, 64)  # model input (H, W)
    spatial_dims: int = 3  # 3: clip (1, T, H, W); 2: key frame (1, H, W)
    roi: bool = True  # crop to the union nodule box and its frames (when the case has boxes)
    roi_margin: float = 0.25  # margin on every side, as a fraction of the box's larger side
    roi_side: int = 0  # > 0: a fixed crop of this many stored-clip pixels around the nodule
    roi_max_side: int = 0  # > 0: the nodule crop's side is at most this many stored-clip
    # pixels, so a large nodule's punctate foci are not averaged away by the resize
    context_channel: bool = False  # a second input channel: the whole nodule crop (the
    # uncapped one, same margin and jitter) resized to `size`, so that a network fed the
    # capped crop still sees the margin, shape and rim of a large nodule; heatmaps and masks
    # stay on the first channel's crop
    normalise: bool = True  # per-clip intensity standardisation (`normalise_intensity`)
    flip_average: bool = False  # evaluation and inference average the logits of the clip and
    # its mirror image (`ml.inference.logits_of`): laterality is arbitrary in a sweep
    temporal_views: int = 1  # evaluation and inference sample frames x views frames and
    # average the logits of the views' interleaved clips, each at the training frame spacing: a
    # punctate focus shows in 1-3 frames, and 16 frames of a sweep miss a quarter to a third
    # of the foci (docs/ml-results.md); 3D models only
    clip_size: tuple[int, int] | None = None  # (H, W) of the stored clips the model learnt
    # from; `ml.inference` resamples clips stored at another size to it first

    @property
    def channels(self) -> int:
        """Input channels of the model: the nodule crop, and the whole nodule if asked."""
        return 2 if self.context_channel else 1

    @classmethod
    def from_dict(cls, d: Mapping) -> ClipSpec:
        d = dict(d)
        d["size"] = tuple(d.get("size", cls.size))
        if d.get("clip_size") is not None:
            d["clip_size"] = tuple(d["clip_size"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class AugmentSpec:
    """Training augmentation; every geometric step moves clip and mask together."""

    time_span: tuple[float, float] = (0.8, 1.0)  # fraction of the sweep the sampled frames cover
    time_reverse: float = 0.5  # probability of playing the sweep backwards (direction is arbitrary)
    hflip: float = 0.5  # probability of a left-right flip (never up-down: depth has a direction)
    crop_scale: tuple[float, float] = (0.9, 1.1)  # ROI crop side, relative
    crop_shift: float = 0.05  # ROI crop centre shift, fraction of the side
    rotate_deg: float = 10.0  # rotation, uniform in +-degrees
    # Intensity changes are mild: echogenicity relative to the parenchyma is a malignancy sign
    # (TI-RADS) and foci are subtle, and per-clip normalisation already absorbs the centres'
    # gain. Stronger settings (gamma 0.75-1.35, speckle 0.08) kept small models from fitting
    # the training set at all (docs/ml-results.md).
    gamma: tuple[float, float] = (0.9, 1.1)  # intensity gamma
    contrast: tuple[float, float] = (0.95, 1.05)  # contrast about the clip mean
    brightness: float = 0.02  # additive brightness, +-
    speckle: float = 0.03  # max sigma of multiplicative Gaussian noise (speckle-like)
    # Another scanner (off by default): `resolution` blurs (s > 0) or sharpens (s < 0, an
    # unsharp mask) every frame with a Gaussian of sigma |s| input pixels, s uniform in
    # +-resolution: another probe's point-spread function, finer or coarser speckle.
    # `depth_gain` adds a linear ramp from top to bottom of up to +-depth_gain (normalised
    # units): another balance of attenuation and time-gain compensation.
    resolution: float = 0.0
    depth_gain: float = 0.0


def sample_frame_indices(
    n: int, frames: int, train: bool = False, rng: np.random.Generator | None = None,
    time_span: tuple[float, float] = (0.8, 1.0), window: tuple[int, int] | None = None,
) -> np.ndarray:
    """`frames` indices into a sweep of `n` frames, within `window` = (first, last) if given.

    Evaluation: uniform over the whole window (subtle foci show in only a few frames, so the
    sample must span all of it). Training: jittered uniform (one random frame per equal segment,
    as in TSN) over a random part of the window covering `time_span` of it.
    """
    if n < 1:
        raise DataError("the clip has no frames")
    first, last = (0, n - 1) if window is None else (max(0, window[0]), min(n - 1, window[1]))
    length = last - first + 1
    if not train:
        return first + np.round(np.linspace(0, length - 1, frames)).astype(np.intp)
    rng = rng or np.random.default_rng()
    span = length * rng.uniform(*time_span)
    start = rng.uniform(0, length - span)
    edges = np.floor(start + span * np.arange(frames + 1) / frames).astype(np.intp)
    idx = edges[:-1] + np.floor(rng.random(frames) * np.maximum(np.diff(edges), 1))
    return first + np.clip(idx, 0, length - 1).astype(np.intp)


def nodule_frames(boxes: np.ndarray | None, n: int, margin: float = 0.1) -> tuple[int, int]:
    """(first, last) frame showing the nodule, widened by `margin` x that span on each side;
    the whole sweep when there are no boxes."""
    if boxes is None:
        return 0, n - 1
    shown = np.flatnonzero(np.isfinite(np.asarray(boxes, dtype=np.float64)).all(axis=1))
    if not len(shown):
        return 0, n - 1
    pad = int(round(margin * (shown[-1] - shown[0] + 1)))
    return max(0, int(shown[0]) - pad), min(n - 1, int(shown[-1]) + pad)


def normalise_intensity(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map gray levels so the reference frames' median lands at 0.4 and their 10th-90th
    percentile range spans 0.25, clipped to [0, 1].

    Centres differ in gain, dynamic range and time-gain compensation (an external centre is a
    domain shift), while what matters is relative echogenicity: a nodule darker than the
    parenchyma, a focus brighter than the speckle. The reference is the whole image of the
    sampled frames, mostly parenchyma, so a dark or bright nodule does not normalise itself
    away. The constants keep parenchyma mid-grey, anechoic fluid near 0 and foci near 1.
    """
    step = max(1, min(reference.shape[1:]) // 64)  # ~64 x 64 samples a frame are plenty
    p10, p50, p90 = np.percentile(reference[:, ::step, ::step], (10, 50, 90))
    scale = max(float(p90 - p10), 8.0)  # a blank clip must not blow noise up
    return np.clip(0.4 + 0.25 * (x - p50) / scale, 0.0, 1.0)


def _key_frame_candidates(boxes: np.ndarray | None, n: int) -> np.ndarray:
    """Frames whose nodule box is at least 90% of the largest: training jitter for 2D models."""
    if boxes is None:
        return np.array([key_frame_index(None, n)])
    b = np.asarray(boxes, dtype=np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    if not np.isfinite(area).any():
        return np.array([key_frame_index(None, n)])
    area = np.where(np.isfinite(area), area, -np.inf)
    return np.flatnonzero(area >= 0.9 * area.max())


def prepare_clip(
    clip: np.ndarray,
    spec: ClipSpec,
    *,
    boxes: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    train: bool = False,
    augment: AugmentSpec | None = None,
    rng: np.random.Generator | None = None,
) -> dict:
    """Turn a stored clip (T0, H0, W0) uint8 into the model's input.

    Returns `clip` float32 in [0, 1], (C, T, H, W) for 3D specs or (C, H, W) for 2D, C being
    `spec.channels` (the second channel, if any, is the uncapped whole-nodule crop); `mask`
    uint8 type codes (T, H, W) or (H, W) (zeros when `mask` is None); `frame_indices` (T,) into
    the stored clip; `crop_box` (x0, y0, x1, y1) in stored-clip pixels; `hflip`. With
    `train=False` the result is deterministic (what evaluation and inference use).
    """
    clip = np.asarray(clip) if not isinstance(clip, np.memmap) else clip
    if clip.ndim != 3:
        raise DataError(f"a clip must be (T, H, W); got shape {clip.shape}")
    n, h0, w0 = clip.shape
    aug = augment or AugmentSpec()
    rng = rng if rng is not None else np.random.default_rng()
    if boxes is not None and len(boxes) != n:
        raise DataError(f"boxes have {len(boxes)} rows for a clip of {n} frames")
    if mask is not None and mask.shape != clip.shape:
        raise DataError(f"mask {mask.shape} does not match clip {clip.shape}")

    # 1. Frames.
    if spec.spatial_dims == 2:
        if train:
            idx = np.array([rng.choice(_key_frame_candidates(boxes, n))])
        else:
            idx = np.array([key_frame_index(boxes, n)])
    else:
        # With boxes, the frames come from the part of the sweep that shows the nodule:
        # twice the temporal density on it for the same compute, so fewer foci fall between
        # sampled frames.
        window = nodule_frames(boxes, n) if spec.roi else None
        frames = spec.frames if train else spec.frames * max(1, spec.temporal_views)
        idx = sample_frame_indices(n, frames, train, rng, aug.time_span, window)
        if train and rng.random() < aug.time_reverse:
            idx = idx[::-1].copy()

    # 2. Crop to the nodule (or the whole image) and resize to the model size.
    roi_boxes = boxes if spec.roi else None
    jitter = None
    if train:
        jitter = (rng.uniform(*aug.crop_scale), *rng.uniform(-aug.crop_shift, aug.crop_shift, 2))
    x0, y0, x1, y1 = roi_crop_box(roi_boxes, (h0, w0), spec.roi_margin, jitter=jitter,
                                  fixed_side=spec.roi_side, max_side=spec.roi_max_side)
    order = np.argsort(idx, kind="stable")  # memory maps read fastest in order
    full = np.empty((len(idx), h0, w0), np.uint8)
    full[order] = clip[idx[order]]
    x = resize_clip(full[:, y0:y1, x0:x1], spec.size)  # (T, H, W) float32, 0..255
    if spec.context_channel:
        # Both crops as one stack of frames (2T, H, W): every step below works frame by frame
        # or pixel by pixel, so the two channels get the same flip, rotation and intensity.
        c0, c1, c2, c3 = roi_crop_box(roi_boxes, (h0, w0), spec.roi_margin, jitter=jitter,
                                      fixed_side=spec.roi_side)
        x = np.concatenate([x, resize_clip(full[:, c1:c3, c0:c2], spec.size)])
    x = normalise_intensity(x, full) if spec.normalise else x / 255.0
    m = None
    if mask is not None:
        m = np.empty((len(idx), y1 - y0, x1 - x0), np.uint8)
        m[order] = mask[idx[order], y0:y1, x0:x1]
        m = resize_mask(m, spec.size)

    # 3. Augment: flip, rotation; then intensity on the clip only.
    hflip = bool(train and rng.random() < aug.hflip)
    if train:
        if hflip:
            x = x[:, :, ::-1]
            m = None if m is None else m[:, :, ::-1]
        angle = rng.uniform(-aug.rotate_deg, aug.rotate_deg)
        if angle:
            hh, ww = spec.size
            matrix = cv2.getRotationMatrix2D(((ww - 1) / 2, (hh - 1) / 2), angle, 1.0)
            x = _warp(np.ascontiguousarray(x), matrix, cv2.INTER_LINEAR)
            m = None if m is None else _warp_mask(np.ascontiguousarray(m), matrix)
        if aug.resolution:
            s = rng.uniform(-aug.resolution, aug.resolution)
            if abs(s) >= 0.1:
                blurred = np.stack([cv2.GaussianBlur(np.ascontiguousarray(f), (0, 0), abs(s))
                                    for f in x])
                x = blurred if s > 0 else 2 * x - blurred
        x = np.clip(x, 0, 1) ** np.exp(rng.uniform(*np.log(aug.gamma)))
        mean = x.mean()
        x = (x - mean) * rng.uniform(*aug.contrast) + mean
        x = x + rng.uniform(-aug.brightness, aug.brightness)
        sigma = rng.uniform(0, aug.speckle)
        if sigma > 0:
            x = x * (1 + sigma * rng.standard_normal(x.shape, dtype=np.float32))
        if aug.depth_gain:
            ramp = np.linspace(-0.5, 0.5, x.shape[1], dtype=np.float32)[None, :, None]
            x = x + rng.uniform(-aug.depth_gain, aug.depth_gain) * ramp
    x = np.clip(x, 0, 1).astype(np.float32).reshape(spec.channels, len(idx), *spec.size)
    if m is None:
        m = np.zeros(x.shape[1:], np.uint8)
    if spec.spatial_dims == 2:
        x, m = x[:, 0], m[0]
    return {
        "clip": np.ascontiguousarray(x),
        "mask": np.ascontiguousarray(m),
        "frame_indices": idx,
        "crop_box": (x0, y0, x1, y1),
        "hflip": hflip,
    }


# --------------------------------------------------------------------------------------------
# Dataset and sampler


class ClipDataset(Dataset):
    """One split of a dataset directory.

    Items: `clip` float32 (1, T, H, W) (or (1, H, W) for 2D specs), `label` int64, `case_id`,
    `centre`, `mask` uint8 (T, H, W) (or (H, W)) type codes aligned to the clip (zeros when the
    case has none), `has_mask` bool, `tirads` float32 (4,) the reader's TI-RADS feature points
    scaled to [0, 1] (`ml.tirads.tirads_targets`; NaN where not read). Clips are
    memory-mapped, so a worker reads only the frames it samples. Training items are augmented;
    the randomness of an item depends only on (seed, epoch, index, draw), which
    `BalancedSampler` passes as the item key, so results do not depend on the number of loader
    workers (persistent or not), and resuming a run replays it exactly.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | Sequence[str] | None,
        spec: ClipSpec,
        train: bool = False,
        augment: AugmentSpec | None = None,
        seed: int = 0,
        manifest: str = "manifest.csv",
        records: Sequence[CaseRecord] | None = None,
    ):
        self.root = Path(root)
        self.manifest_dir = (self.root / manifest).parent
        self.spec = spec
        self.train = train
        self.augment = augment or AugmentSpec()
        self.seed = seed
        if records is None:
            records = read_manifest(self.root, manifest)
        if split is not None:
            splits = {split} if isinstance(split, str) else set(split)
            records = [r for r in records if r.split in splits]
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    def _path(self, rel: str) -> Path:
        return self.manifest_dir / rel

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The stored clip (memory-mapped), mask and boxes of case `i`."""
        r = self.records[i]
        clip = np.load(self._path(r.clip), mmap_mode="r")
        mask = np.load(self._path(r.mask), mmap_mode="r") if r.mask else None
        boxes = np.load(self._path(r.boxes)) if r.boxes else None
        return clip, mask, boxes

    def __getitem__(self, item: int | tuple[int, int, int]) -> dict:
        # `BalancedSampler` yields (index, epoch, draw); a plain index means epoch 0, draw 0.
        i, epoch, draw = item if isinstance(item, tuple) else (item, 0, 0)
        r = self.records[i]
        clip, mask, boxes = self.load(i)
        rng = np.random.default_rng([self.seed, epoch, i, draw]) if self.train else None
        out = prepare_clip(clip, self.spec, boxes=boxes, mask=mask, train=self.train,
                           augment=self.augment, rng=rng)
        return {
            "clip": torch.from_numpy(out["clip"]),
            "label": torch.tensor(r.label, dtype=torch.int64),
            "case_id": r.case_id,
            "centre": r.centre,
            "mask": torch.from_numpy(out["mask"]),
            "has_mask": torch.tensor(mask is not None),
            "tirads": torch.from_numpy(tirads_targets(r.tirads_points)),
        }


class BalancedSampler(Sampler):
    """Class-balanced sampling with replacement, as `WeightedRandomSampler` with weights
    1 / class count, made deterministic per (seed, epoch) and sharded across DDP ranks as
    `DistributedSampler` does (every rank draws the same global sequence and takes its slice).

    Yields `(index, epoch, draw)` keys; `ClipDataset` seeds each draw's augmentation from them,
    so a case drawn twice in an epoch is augmented twice differently.
    """

    def __init__(self, labels: Sequence[int], num_samples: int | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        labels = np.asarray(labels)
        counts = Counter(labels.tolist())
        self.weights = torch.tensor([1.0 / counts[y] for y in labels.tolist()],
                                    dtype=torch.double)
        total = len(labels) if num_samples is None else num_samples
        self.num_samples = math.ceil(total / world_size)  # per rank
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch = state["seed"], state["epoch"]

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = self.num_samples * self.world_size
        idx = torch.multinomial(self.weights, n, replacement=True, generator=g).tolist()
        for k in range(self.rank, n, self.world_size):
            yield idx[k], self.epoch, k


# --------------------------------------------------------------------------------------------
# Building a dataset directory from an import folder


_OUTCOME_LABELS = {"malignant": 1, "benign": 0, "1": 1, "0": 0}


@dataclass
class BuildReport:
    """What `build_dataset_from_import_folder` did; also written to `dataset.json`."""

    source: str
    size: tuple[int, int]
    seed: int
    external: list[str]
    counts: dict = field(default_factory=dict)  # {split: {n, malignant, benign}}
    excluded: list[dict] = field(default_factory=list)  # {video, reason}
    seconds: float = 0.0


def _truth_path(src: Path, video_rel: str) -> Path | None:
    rel = Path(video_rel)
    parts = rel.parts[1:] if rel.parts and rel.parts[0] == "videos" else rel.parts
    for cand in (src / "truth" / Path(*parts).with_suffix(".npz"),
                 src / "truth" / rel.with_suffix(".npz").name):
        if cand.is_file():
            return cand
    return None


def _region_tuple(region) -> tuple[int, int, int, int]:
    if hasattr(region, "x"):
        return int(region.x), int(region.y), int(region.w), int(region.h)
    x, y, w, h = (int(v) for v in region)
    return x, y, w, h


def truth_to_clip(
    mask: np.ndarray | None,
    boxes: np.ndarray | None,
    region,
    size: tuple[int, int],
    n_frames: int,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Carry video-resolution ground truth through the clip's crop (to `region`) and resize.

    `ml.video.ClipBuilder` crops every frame to the ultrasound region and resizes it to `size`,
    so masks take the same crop and a max-pooling resize, boxes the same affine map. Frames are
    matched by index and cut to the clip's length.
    """
    x, y, w, h = _region_tuple(region)
    sy, sx = size[0] / h, size[1] / w
    if mask is not None:
        mask = np.asarray(mask)[:n_frames, y : y + h, x : x + w]
        mask = resize_mask(mask, size)
        if len(mask) < n_frames:
            pad = np.zeros((n_frames - len(mask), *size), np.uint8)
            mask = np.concatenate([mask, pad])
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float32)[:n_frames].copy()
        b[:, [0, 2]] = np.clip((b[:, [0, 2]] - x) * sx, 0, size[1])
        b[:, [1, 3]] = np.clip((b[:, [1, 3]] - y) * sy, 0, size[0])
        if len(b) < n_frames:
            b = np.concatenate([b, np.full((n_frames - len(b), 4), np.nan, np.float32)])
        boxes = b
    return mask, boxes


def build_dataset_from_import_folder(
    src: str | Path,
    out: str | Path,
    external: Iterable[str] = (),
    size: tuple[int, int] = (128, 128),
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.1, 0.1),
    progress: bool = True,
) -> BuildReport:
    """Convert a folder in the `import_cases` format into a dataset directory.

    Every video goes through `ml.video.video_to_clip`, the function the platform uses at
    ingestion, so a model trained here sees clips standardised exactly as the platform's.
    Labels come from `outcome` (malignant 1, benign 0); indeterminate or empty outcomes and
    videos that fail to decode are excluded and listed in the report (and `dataset.json`).
    Ground truth in `truth/<stem>.npz` (mask, boxes at video resolution) follows the clip.
    """
    import time

    from tqdm import tqdm

    from ml.video import VideoError, video_to_clip

    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    size = (int(size[0]), int(size[1]))
    external = [str(c) for c in external]
    manifest = src / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{manifest} does not exist: not an import folder")
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"centre", "patient", "nodule", "video", "outcome"}
    if rows and need - set(rows[0]):
        raise DataError(f"{manifest} lacks the columns {', '.join(sorted(need - set(rows[0])))}")
    centres = {r["centre"] for r in rows}
    unknown = set(external) - centres
    if unknown:
        raise DataError(
            f"external centre(s) {', '.join(sorted(unknown))} not in the manifest "
            f"(centres: {', '.join(sorted(centres))})"
        )
    for sub in ("clips", "masks", "boxes"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    report = BuildReport(source=str(src), size=size, seed=seed, external=external)
    # only `ml synth` folders have a generator whose features stand for a reader's TI-RADS
    synthetic = (src / "synthetic.json").is_file()
    records: list[CaseRecord] = []
    seen: Counter = Counter()
    for row in tqdm(rows, desc="videos", unit="video", disable=not progress):
        outcome = (row.get("outcome") or "").strip().lower()
        if outcome not in _OUTCOME_LABELS:
            report.excluded.append({"video": row["video"],
                                    "reason": f"outcome {outcome or 'missing'!r}"})
            continue
        base = "_".join(_safe(row[k]) for k in ("centre", "patient", "nodule"))
        seen[base] += 1
        case_id = base if seen[base] == 1 else f"{base}_{seen[base]}"
        try:
            clip, region = video_to_clip(src / row["video"], size=size)
        except VideoError as e:
            report.excluded.append({"video": row["video"], "reason": str(e)})
            continue
        rec = {"clip": f"clips/{case_id}.npy", "mask": None, "boxes": None}
        np.save(out / rec["clip"], np.ascontiguousarray(clip, dtype=np.uint8))
        truth = _truth_path(src, row["video"])
        if truth is not None:
            with np.load(truth) as z:
                mask, boxes = truth_to_clip(
                    z["mask"] if "mask" in z else None, z["boxes"] if "boxes" in z else None,
                    region, size, len(clip),
                )
                meta = json.loads(str(z["meta"])) if "meta" in z else None
            if meta is not None and synthetic:  # the generator's features, read as TI-RADS
                from ml.synthetic import tirads_reading
                from ml.tirads import feature_points

                points = feature_points(tirads_reading(meta))
                rec.update({f"tirads_{k}": v for k, v in points.items()})
            if mask is not None:
                rec["mask"] = f"masks/{case_id}.npy"
                np.save(out / rec["mask"], mask)
            if boxes is not None:
                rec["boxes"] = f"boxes/{case_id}.npy"
                np.save(out / rec["boxes"], boxes)
        records.append(CaseRecord(case_id, row["patient"], row["centre"], "",
                                  _OUTCOME_LABELS[outcome], **rec))
    if not records:
        raise DataError(f"no usable cases in {src} ({len(report.excluded)} excluded)")
    split = patient_level_split(records, fractions, external_centres=external, seed=seed)
    records = [_replace_split(r, split[r.case_id]) for r in records]
    write_manifest(out / "manifest.csv", records)
    report.counts = count_labels(records)
    report.seconds = round(time.perf_counter() - t0, 1)
    (out / "dataset.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    for e in report.excluded:
        log.warning("excluded %s: %s", e["video"], e["reason"])
    log.info("wrote %d cases to %s (%d excluded): %s", len(records), out,
             len(report.excluded), report.counts)
    return report


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in str(s).strip())
