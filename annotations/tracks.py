"""Nodule tracks: shapes on keyframes, linear interpolation between them, and "outside" for
frames where the nodule leaves the view.

One algorithm, two implementations: this one (exports, the model's ROI crop, agreement) and
`annotations/static/annotations/js/tracks.js` (the browser). Both are tested against the same
vectors in tests/annotations/track_vectors.json, so a box drawn in the browser lands on the same
pixels in the training data.

Rules, as CVAT applies them to interpolated tracks:
- before the first keyframe the nodule is not annotated (None);
- between two visible keyframes every coordinate moves linearly with the frame index;
- a keyframe marked outside hides the nodule from that frame until the next visible keyframe;
  the frames before an outside keyframe hold the previous shape (no motion towards "outside");
- after the last keyframe its shape holds to the end of the video (or stays hidden).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in frame pixels; x0 <= x1, y0 <= y1


@dataclass(frozen=True)
class Keyframe:
    frame: int
    box: Box | None  # None only when outside
    outside: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> Keyframe:
        outside = bool(data.get("outside", False))
        box = data.get("box")
        if not outside:
            if box is None or len(box) != 4:
                raise ValueError(f"keyframe {data.get('frame')} needs a box [x0, y0, x1, y1]")
            x0, y0, x1, y1 = (float(v) for v in box)
            if x1 < x0 or y1 < y0:
                raise ValueError(f"keyframe {data.get('frame')}: box corners are swapped")
            box = (x0, y0, x1, y1)
        frame = int(data["frame"])
        if frame < 0:
            raise ValueError("keyframe frames start at 0")
        return cls(frame=frame, box=tuple(box) if box is not None else None, outside=outside)


def parse_keyframes(items: Iterable[dict]) -> list[Keyframe]:
    keyframes = sorted((Keyframe.from_dict(item) for item in items), key=lambda k: k.frame)
    frames = [k.frame for k in keyframes]
    if len(set(frames)) != len(frames):
        raise ValueError("two keyframes on the same frame")
    return keyframes


def _lerp(a: Box, b: Box, t: float) -> Box:
    return tuple(a[i] + (b[i] - a[i]) * t for i in range(4))  # type: ignore[return-value]


def interpolate_track(keyframes: Sequence[Keyframe], n_frames: int) -> list[Box | None]:
    """Per-frame boxes for frames 0..n_frames-1 (None where not visible or not annotated)."""
    boxes: list[Box | None] = [None] * n_frames
    if not keyframes:
        return boxes
    ordered = sorted(keyframes, key=lambda k: k.frame)
    for current, following in zip(ordered, [*ordered[1:], None], strict=True):
        end = n_frames if following is None else min(following.frame, n_frames)
        for frame in range(current.frame, end):
            if current.outside:
                continue
            if following is None or following.outside:
                boxes[frame] = current.box
            else:
                t = (frame - current.frame) / (following.frame - current.frame)
                boxes[frame] = _lerp(current.box, following.box, t)
    return boxes


def box_iou(a: Box | None, b: Box | None) -> float | None:
    """Intersection over union; None when neither box exists (nothing to compare), 0 when only
    one does (one annotator saw the nodule, the other did not)."""
    if a is None and b is None:
        return None
    if a is None or b is None:
        return 0.0
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def track_iou(a: Sequence[Box | None], b: Sequence[Box | None]) -> float | None:
    """Mean per-frame IoU of two interpolated tracks over frames where either shows the nodule."""
    scores = [s for s in (box_iou(x, y) for x, y in zip(a, b, strict=True)) if s is not None]
    return sum(scores) / len(scores) if scores else None
