"""The annotation document (docs/annotation-format.md): validation, CVAT conversion and the
per-frame training targets (calcification mask and nodule boxes aligned to the training clip).

No Django here: dicts, arrays and numbers in and out, so the training-data export, the API and
the tests share one implementation. Interpolation of nodule tracks is annotations.tracks.
"""

from __future__ import annotations

import copy
import math
import uuid
from collections.abc import Sequence

import cv2
import numpy as np

from annotations.cvat import CvatTrack, PointKeyframe, export_cvat_video, import_cvat_video
from annotations.tracks import Keyframe, interpolate_track, parse_keyframes

FORMAT = "thyrocine-annotation/1"

# Calcification type codes, as in docs/ml-interfaces.md (masks, exports, localisation scores).
MARK_TYPES = {
    "punctate": 1,  # punctate echogenic focus / microcalcification
    "macro": 2,  # macrocalcification
    "rim": 3,  # peripheral (rim) calcification
    "comet": 4,  # large comet-tail artefact: not a calcification
}
MARK_TYPE_LABELS = {
    "punctate": "Punctate echogenic focus / microcalcification",
    "macro": "Macrocalcification",
    "rim": "Peripheral (rim) calcification",
    "comet": "Large comet-tail artefact (not a calcification)",
}
MARK_SHAPES = ("point", "box", "polygon")
TRACK_SHAPES = ("box", "ellipse", "polygon")
TIRADS_FIELDS = ("composition", "echogenicity", "shape", "margin")
MAX_MARKS = 5000
MAX_KEYFRAMES = 5000


class FormatError(ValueError):
    """The document breaks the format; the message says where."""


def empty_document() -> dict:
    return {"format": FORMAT, "tracks": [], "marks": [], "tirads": {}}


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FormatError(f"{where}: a finite number is needed")
    return float(value)


def _point(value, where: str) -> list[float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise FormatError(f"{where}: a point is [x, y]")
    return [_number(value[0], where), _number(value[1], where)]


def _frame(value, n_frames: int | None, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"{where}: frame numbers are integers")
    if value < 0 or (n_frames is not None and value >= n_frames):
        raise FormatError(f"{where}: frame {value} is outside the video")
    return value


def _id(value, prefix: str) -> str:
    if isinstance(value, str) and 0 < len(value) <= 64:
        return value
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _track(raw: dict, n_frames: int | None, i: int) -> dict:
    where = f"tracks[{i}]"
    if not isinstance(raw, dict):
        raise FormatError(f"{where}: an object is needed")
    shape = raw.get("shape", "box")
    if shape not in TRACK_SHAPES:
        raise FormatError(f"{where}: shape is one of {', '.join(TRACK_SHAPES)}")
    keyframes = raw.get("keyframes", [])
    if not isinstance(keyframes, list) or len(keyframes) > MAX_KEYFRAMES:
        raise FormatError(f"{where}: keyframes is a list")
    clean = []
    for k, key in enumerate(keyframes):
        kwhere = f"{where}.keyframes[{k}]"
        if not isinstance(key, dict):
            raise FormatError(f"{kwhere}: an object is needed")
        frame = _frame(key.get("frame"), n_frames, kwhere)
        outside = bool(key.get("outside", False))
        entry: dict = {"frame": frame, "outside": outside}
        if not outside:
            box = key.get("box")
            if not isinstance(box, list) or len(box) != 4:
                raise FormatError(f"{kwhere}: box is [x0, y0, x1, y1]")
            x0, y0, x1, y1 = (_number(v, kwhere) for v in box)
            entry["box"] = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
            if shape == "polygon" and key.get("points") is not None:
                entry["points"] = [_point(p, kwhere) for p in key["points"]]
        clean.append(entry)
    try:
        parse_keyframes(clean)
    except ValueError as exc:
        raise FormatError(f"{where}: {exc}") from exc
    clean.sort(key=lambda e: e["frame"])
    label = raw.get("label", "nodule")
    return {"id": _id(raw.get("id"), "t"), "label": str(label)[:64] or "nodule",
            "shape": shape, "keyframes": clean}


def _mark(raw: dict, n_frames: int | None, i: int) -> dict:
    where = f"marks[{i}]"
    if not isinstance(raw, dict):
        raise FormatError(f"{where}: an object is needed")
    kind = raw.get("type")
    if kind not in MARK_TYPES:
        raise FormatError(f"{where}: type is one of {', '.join(MARK_TYPES)}")
    shape = raw.get("shape", "point")
    if shape not in MARK_SHAPES:
        raise FormatError(f"{where}: shape is one of {', '.join(MARK_SHAPES)}")
    start = _frame(raw.get("frame_start", raw.get("frame")), n_frames, where)
    end = _frame(raw.get("frame_end", start), n_frames, where)
    if end < start:
        raise FormatError(f"{where}: frame_end comes before frame_start")
    points = raw.get("points")
    if not isinstance(points, list) or not points:
        raise FormatError(f"{where}: points is a list of [x, y]")
    points = [_point(p, where) for p in points]
    needed = {"point": (1, 1), "box": (2, 2), "polygon": (3, 1000)}[shape]
    if not needed[0] <= len(points) <= needed[1]:
        raise FormatError(f"{where}: a {shape} has {needed[0]}"
                          + ("" if needed[0] == needed[1] else "+") + " points")
    if shape == "box":
        (x0, y0), (x1, y1) = points
        points = [[min(x0, x1), min(y0, y1)], [max(x0, x1), max(y0, y1)]]
    return {
        "id": _id(raw.get("id"), "m"), "type": kind, "shape": shape,
        "frame_start": start, "frame_end": end, "points": points,
        "small_comet_tail": bool(raw.get("small_comet_tail", False)),
        "rim_interrupted": bool(raw.get("rim_interrupted", False)),
        "note": str(raw.get("note", ""))[:500],
    }


def _tirads(raw) -> dict:
    from annotations import tirads

    if raw in (None, {}):
        return {}
    if not isinstance(raw, dict):
        raise FormatError("tirads: an object is needed")
    tables = {"composition": tirads.COMPOSITION_POINTS, "echogenicity": tirads.ECHOGENICITY_POINTS,
              "shape": tirads.SHAPE_POINTS, "margin": tirads.MARGIN_POINTS}
    clean: dict = {}
    for name, table in tables.items():
        value = raw.get(name) or ""
        if value and value not in table:
            raise FormatError(f"tirads.{name}: unknown option {value!r}")
        clean[name] = value
    foci = raw.get("echogenic_foci") or []
    if not isinstance(foci, list) or any(f not in tirads.FOCI_POINTS for f in foci):
        raise FormatError("tirads.echogenic_foci: a list of "
                          + ", ".join(tirads.FOCI_POINTS))
    foci = sorted(set(foci), key=list(tirads.FOCI_POINTS).index)
    if "none" in foci and len(foci) > 1:
        raise FormatError("tirads.echogenic_foci: 'none' cannot be combined with other foci")
    clean["echogenic_foci"] = foci
    return clean


def validate_document(data, *, n_frames: int | None = None) -> dict:
    """A clean copy of an annotation document, or FormatError naming the first problem.
    Unknown keys are dropped; ids are kept (or given) so that merges can match items."""
    if not isinstance(data, dict):
        raise FormatError("the annotation is a JSON object")
    if data.get("format", FORMAT) != FORMAT:
        raise FormatError(f"unsupported format {data.get('format')!r}; expected {FORMAT}")
    tracks, marks = data.get("tracks", []), data.get("marks", [])
    if not isinstance(tracks, list) or not isinstance(marks, list):
        raise FormatError("tracks and marks are lists")
    if len(marks) > MAX_MARKS:
        raise FormatError(f"at most {MAX_MARKS} marks")
    return {
        "format": FORMAT,
        "tracks": [_track(t, n_frames, i) for i, t in enumerate(tracks)],
        "marks": [_mark(m, n_frames, i) for i, m in enumerate(marks)],
        "tirads": _tirads(data.get("tirads")),
    }


def tirads_result(doc: dict, max_diameter_mm=None) -> dict | None:
    """Computed points, level and recommendation, once every category is filled in."""
    from annotations.tirads import Recommendation, tirads_score

    form = doc.get("tirads") or {}
    if not all(form.get(f) for f in TIRADS_FIELDS) or not form.get("echogenic_foci"):
        return None
    result = tirads_score(**{f: form[f] for f in TIRADS_FIELDS},
                          echogenic_foci=form["echogenic_foci"], max_diameter_mm=max_diameter_mm)
    return {"points": result.points, "level": result.level.level, "name": result.level.name,
            "risk_percent": result.level.risk_percent,
            "recommendation": str(result.recommendation),
            "recommendation_label": Recommendation(result.recommendation).label}


def track_keyframes(track: dict) -> list[Keyframe]:
    return [Keyframe(k["frame"], tuple(k["box"]) if not k["outside"] else None, k["outside"])
            for k in track["keyframes"]]


def nodule_boxes(doc: dict, n_frames: int) -> list:
    """Per-frame boxes (frame pixels) of the first nodule track; None where not visible."""
    tracks = [t for t in doc.get("tracks", []) if t.get("label", "nodule") == "nodule"]
    if not tracks:
        return [None] * n_frames
    return interpolate_track(track_keyframes(tracks[0]), n_frames)


def marks_present(doc: dict) -> dict[str, bool]:
    """Whether each calcification type is marked anywhere (for agreement)."""
    kinds = {m["type"] for m in doc.get("marks", [])}
    return {kind: kind in kinds for kind in MARK_TYPES}


# --- Training targets ------------------------------------------------------------------------


def tirads_training_points(doc: dict) -> dict[str, int | None]:
    """The annotation's TI-RADS features as ACR points, {feature: points or None where not
    read}, for the training manifest's `tirads_<feature>` columns (`ml.tirads`): the targets
    of the auxiliary TI-RADS head."""
    from ml.tirads import feature_points

    return feature_points(doc.get("tirads") or {})


def training_targets(
    doc: dict,
    *,
    n_frames: int,
    region: Sequence[int],
    clip_hw: tuple[int, int],
    point_radius: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(mask (T, H, W) uint8 type codes, boxes (T, 4) float32 x0, y0, x1, y1 with NaN rows where
    the nodule is not visible), in the pixels of the training clip.

    The clip is the ultrasound `region` (x, y, w, h in frame pixels) of every frame, resized
    to `clip_hw` = (H, W) without keeping the aspect ratio (ml.video.ClipBuilder), so a frame
    point (x, y) lands at ((x - rx) * W / rw, (y - ry) * H / rh). Points become discs of
    `point_radius` clip pixels; where marks overlap, the more specific type wins
    (punctate over rim over macro over comet-tail)."""
    rx, ry, rw, rh = (float(v) for v in region)
    H, W = int(clip_hw[0]), int(clip_hw[1])
    sx, sy = W / rw, H / rh

    def to_clip(p):
        return ((p[0] - rx) * sx, (p[1] - ry) * sy)

    mask = np.zeros((n_frames, H, W), np.uint8)
    # Paint the least specific first so that later, more specific types overwrite it.
    order = {"comet": 0, "macro": 1, "rim": 2, "punctate": 3}
    for mark in sorted(doc.get("marks", []), key=lambda m: order[m["type"]]):
        code = MARK_TYPES[mark["type"]]
        start, end = mark["frame_start"], min(mark["frame_end"], n_frames - 1)
        if start >= n_frames:
            continue
        layer = np.zeros((H, W), np.uint8)
        pts = [to_clip(p) for p in mark["points"]]
        if mark["shape"] == "point":
            # Sub-pixel centre (shift=4 gives 1/16 pixel), so tiny clips keep the position.
            cx, cy = pts[0]
            radius = max(int(round(point_radius * 16)), 1)
            cv2.circle(layer, (int(round(cx * 16 - 8)), int(round(cy * 16 - 8))), radius, 1, -1,
                       lineType=cv2.LINE_8, shift=4)
            if not layer.any():  # smaller than a pixel: the pixel it falls in
                ix, iy = int(math.floor(cx)), int(math.floor(cy))
                if 0 <= ix < W and 0 <= iy < H:
                    layer[iy, ix] = 1
        elif mark["shape"] == "box":
            (x0, y0), (x1, y1) = pts
            x0, y0 = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
            x1, y1 = min(int(math.ceil(x1)), W), min(int(math.ceil(y1)), H)
            layer[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)] = 1
        else:
            poly = np.round(np.array(pts) * 16 - 8).astype(np.int32)
            cv2.fillPoly(layer, [poly], 1, lineType=cv2.LINE_8, shift=4)
        painted = layer.astype(bool)
        mask[start:end + 1][:, painted] = code
    boxes = np.full((n_frames, 4), np.nan, np.float32)
    for t, box in enumerate(nodule_boxes(doc, n_frames)):
        if box is None:
            continue
        (x0, y0), (x1, y1) = to_clip(box[:2]), to_clip(box[2:])
        x0, x1 = min(max(x0, 0.0), W), min(max(x1, 0.0), W)
        y0, y1 = min(max(y0, 0.0), H), min(max(y1, 0.0), H)
        if x1 > x0 and y1 > y0:  # a box entirely outside the clip is not visible in it
            boxes[t] = (x0, y0, x1, y1)
    return mask, boxes


# --- CVAT for video 1.1 -----------------------------------------------------------------------


def to_cvat(doc: dict, *, n_frames: int, width: int, height: int, name: str) -> str:
    """Nodule tracks as box tracks; point marks as point tracks (one per mark, visible on its
    frame range). Box and polygon marks are not part of CVAT's track export."""
    tracks = []
    for track in doc.get("tracks", []):
        tracks.append(CvatTrack(label=track["label"], shape="box",
                                keyframes=track_keyframes(track),
                                attributes={"shape": track["shape"]}))
    for mark in doc.get("marks", []):
        if mark["shape"] != "point":
            continue
        point = tuple(mark["points"][0])
        keys = [PointKeyframe(mark["frame_start"], point)]
        if mark["frame_end"] + 1 < n_frames:
            keys.append(PointKeyframe(mark["frame_end"] + 1, None, outside=True))
        tracks.append(CvatTrack(label=mark["type"], shape="points", keyframes=keys, attributes={
            "small_comet_tail": str(mark["small_comet_tail"]).lower(),
            "rim_interrupted": str(mark["rim_interrupted"]).lower()}))
    return export_cvat_video(tracks, n_frames=n_frames, width=width, height=height, name=name)


def from_cvat(xml_text: str, *, base: dict | None = None, n_frames: int | None = None) -> dict:
    """A document with the XML's box tracks as nodule tracks and point tracks labelled with a
    calcification type as point marks (one mark per visible run). The TI-RADS form and box or
    polygon marks of `base` are kept."""
    parsed, meta = import_cvat_video(xml_text)
    n_frames = n_frames or meta["size"] or None
    doc = copy.deepcopy(base) if base else empty_document()
    doc["tracks"] = []
    doc["marks"] = [m for m in doc.get("marks", []) if m["shape"] != "point"]
    for track in parsed:
        if track.shape == "box":
            doc["tracks"].append({
                "label": track.label or "nodule",
                "shape": track.attributes.get("shape", "box")
                if track.attributes.get("shape") in TRACK_SHAPES else "box",
                "keyframes": [{"frame": k.frame, "outside": k.outside,
                               **({} if k.outside else {"box": list(k.box)})}
                              for k in track.keyframes]})
        elif track.label in MARK_TYPES:
            keys = sorted(track.keyframes, key=lambda k: k.frame)
            last_frame = (n_frames - 1) if n_frames else keys[-1].frame
            for key, following in zip(keys, [*keys[1:], None], strict=True):
                if key.outside:
                    continue
                end = following.frame - 1 if following is not None else last_frame
                doc["marks"].append({
                    "type": track.label, "shape": "point", "frame_start": key.frame,
                    "frame_end": max(end, key.frame), "points": [list(key.point)],
                    "small_comet_tail": track.attributes.get("small_comet_tail") == "true",
                    "rim_interrupted": track.attributes.get("rim_interrupted") == "true"})
    return validate_document(doc, n_frames=n_frames)


# --- Ground truth of synthetic sweeps (make demo) -------------------------------------------


def document_from_truth(mask: np.ndarray, boxes: np.ndarray, *, key_every: int = 8,
                        min_area: int = 1) -> dict:
    """An annotation document from ml.synthetic's ground truth at video resolution: the nodule
    boxes as a track with a keyframe every `key_every` frames (and where it enters or leaves
    the view), each calcification component as a point (small) or polygon mark on its frame."""
    n = len(boxes)
    visible = ~np.isnan(boxes).any(axis=1)
    keyframes = []
    for t in range(n):
        entering = visible[t] and (t == 0 or not visible[t - 1])
        leaving = not visible[t] and t > 0 and visible[t - 1]
        last_visible = visible[t] and (t == n - 1 or not visible[t + 1])
        if entering or last_visible or (visible[t] and t % key_every == 0):
            keyframes.append({"frame": t, "box": [round(float(v), 1) for v in boxes[t]]})
        elif leaving:
            keyframes.append({"frame": t, "outside": True})
    doc = empty_document()
    if keyframes:
        doc["tracks"].append({"id": "t-nodule", "label": "nodule", "shape": "box",
                              "keyframes": keyframes})
    names = {code: name for name, code in MARK_TYPES.items()}
    for t in range(len(mask)):
        for code in np.unique(mask[t]):
            if code == 0 or int(code) not in names:
                continue
            count, labels, stats, centroids = cv2.connectedComponentsWithStats(
                (mask[t] == code).astype(np.uint8), connectivity=8)
            for c in range(1, count):
                if stats[c, cv2.CC_STAT_AREA] < min_area:
                    continue
                w, h = stats[c, cv2.CC_STAT_WIDTH], stats[c, cv2.CC_STAT_HEIGHT]
                # Mask pixel i covers [i, i + 1) in document coordinates: + 0.5 for centres.
                centre = [round(float(v) + 0.5, 2) for v in centroids[c]]
                if max(w, h) <= 4:
                    shape, points = "point", [centre]
                else:
                    contours, _ = cv2.findContours((labels == c).astype(np.uint8),
                                                   cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                    contour = max(contours, key=cv2.contourArea).reshape(-1, 2)
                    if len(contour) < 3:
                        shape, points = "point", [centre]
                    else:
                        shape, points = "polygon", [[x + 0.5, y + 0.5] for x, y in
                                                    contour.tolist()]
                doc["marks"].append({"type": names[int(code)], "shape": shape,
                                     "frame_start": t, "frame_end": t, "points": points})
    return validate_document(doc, n_frames=n)
