"""CVAT for video 1.1 XML: export and import of box and point tracks, so that teams can move
annotations between CVAT and ThyroCine.

CVAT writes every frame of an interpolated track (keyframe="1" where a person drew, "0" where
CVAT interpolated) and an outside="1" entry where the object leaves the view. Import keeps the
keyframes and outside entries and re-interpolates with annotations.tracks, which follows the
same rules; export writes every frame, as CVAT does, so CVAT shows identical boxes.
Reference: CVAT documentation, "CVAT for video 1.1" format.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from annotations.tracks import Box, Keyframe, interpolate_track


@dataclass
class PointKeyframe:
    frame: int
    point: tuple[float, float] | None  # None when outside
    outside: bool = False


@dataclass
class CvatTrack:
    label: str
    shape: str  # "box" or "points"
    keyframes: list = field(default_factory=list)  # Keyframe for boxes, PointKeyframe for points
    attributes: dict[str, str] = field(default_factory=dict)


def _fmt(value: float) -> str:
    return f"{value:.2f}"


def export_cvat_video(
    tracks: list[CvatTrack], *, n_frames: int, width: int, height: int, name: str = "video"
) -> str:
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = name
    ET.SubElement(task, "size").text = str(n_frames)
    ET.SubElement(task, "mode").text = "interpolation"
    ET.SubElement(task, "start_frame").text = "0"
    ET.SubElement(task, "stop_frame").text = str(max(n_frames - 1, 0))
    size = ET.SubElement(task, "original_size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    labels = ET.SubElement(task, "labels")
    for label in sorted({t.label for t in tracks}):
        ET.SubElement(ET.SubElement(labels, "label"), "name").text = label

    for track_id, track in enumerate(tracks):
        element = ET.SubElement(
            root, "track", id=str(track_id), label=track.label, source="manual"
        )
        key_frames = {k.frame for k in track.keyframes}
        if track.shape == "box":
            boxes = interpolate_track(track.keyframes, n_frames)
            outside_frames = {k.frame for k in track.keyframes if k.outside}
            for frame, box in enumerate(boxes):
                if box is None and frame not in outside_frames:
                    continue
                attrs = {"frame": str(frame), "keyframe": "1" if frame in key_frames else "0",
                         "outside": "1" if box is None else "0", "occluded": "0",
                         "z_order": "0"}
                shown = box or _last_box(boxes, frame)
                if shown is None:
                    continue
                attrs.update(xtl=_fmt(shown[0]), ytl=_fmt(shown[1]), xbr=_fmt(shown[2]),
                             ybr=_fmt(shown[3]))
                _with_attributes(ET.SubElement(element, "box", attrs), track.attributes)
        elif track.shape == "points":
            last = None
            for key in sorted(track.keyframes, key=lambda k: k.frame):
                point = key.point if not key.outside else last
                if point is None:
                    continue
                last = key.point if not key.outside else last
                attrs = {"frame": str(key.frame), "keyframe": "1",
                         "outside": "1" if key.outside else "0", "occluded": "0",
                         "z_order": "0", "points": f"{_fmt(point[0])},{_fmt(point[1])}"}
                _with_attributes(ET.SubElement(element, "points", attrs), track.attributes)
        else:
            raise ValueError(f"unsupported shape {track.shape!r}")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def _last_box(boxes: list[Box | None], frame: int) -> Box | None:
    # CVAT writes an outside entry with the coordinates the object had before it left.
    for previous in range(frame - 1, -1, -1):
        if boxes[previous] is not None:
            return boxes[previous]
    return None


def _with_attributes(element: ET.Element, attributes: dict[str, str]) -> None:
    for name, value in attributes.items():
        ET.SubElement(element, "attribute", name=name).text = value


def import_cvat_video(xml_text: str) -> tuple[list[CvatTrack], dict]:
    """Tracks (keyframes only) and the task's size, width and height."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise ValueError(f"not a CVAT XML file: {exc}") from exc
    if root.tag != "annotations":
        raise ValueError("not a CVAT XML file: the root element is not <annotations>")
    meta = {
        "size": int(root.findtext("meta/task/size") or 0),
        "width": int(root.findtext("meta/task/original_size/width") or 0),
        "height": int(root.findtext("meta/task/original_size/height") or 0),
    }
    tracks: list[CvatTrack] = []
    for element in root.iter("track"):
        label = element.get("label", "")
        boxes, points = element.findall("box"), element.findall("points")
        if boxes:
            track = CvatTrack(label=label, shape="box")
            for box in boxes:
                if box.get("keyframe") != "1" and box.get("outside") != "1":
                    continue
                outside = box.get("outside") == "1"
                coords = None if outside else tuple(
                    float(box.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
                track.keyframes.append(Keyframe(int(box.get("frame")), coords, outside))
                track.attributes.update(
                    {a.get("name"): a.text or "" for a in box.findall("attribute")})
        elif points:
            track = CvatTrack(label=label, shape="points")
            for point in points:
                if point.get("keyframe") != "1" and point.get("outside") != "1":
                    continue
                outside = point.get("outside") == "1"
                x, y = (float(v) for v in point.get("points").split(";")[0].split(","))
                track.keyframes.append(
                    PointKeyframe(int(point.get("frame")), None if outside else (x, y), outside))
                track.attributes.update(
                    {a.get("name"): a.text or "" for a in point.findall("attribute")})
        else:
            continue  # polygons, polylines and masks are not imported
        tracks.append(track)
    return tracks, meta
