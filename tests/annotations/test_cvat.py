"""CVAT for video 1.1 round trip of box and point tracks."""

import xml.etree.ElementTree as ET

import pytest

from annotations.cvat import CvatTrack, PointKeyframe, export_cvat_video, import_cvat_video
from annotations.tracks import Keyframe, interpolate_track


@pytest.fixture
def tracks():
    nodule = CvatTrack("nodule", "box", [
        Keyframe(0, (10.0, 20.0, 50.0, 60.0)), Keyframe(20, (30.0, 20.0, 90.0, 100.0)),
        Keyframe(25, None, outside=True)])
    focus = CvatTrack("punctate", "points", [
        PointKeyframe(7, (31.5, 40.25)), PointKeyframe(8, None, outside=True)],
        attributes={"small_comet_tail": "true"})
    return [nodule, focus]


def test_export_writes_every_frame_like_cvat(tracks):
    xml = export_cvat_video(tracks, n_frames=30, width=640, height=480)
    root = ET.fromstring(xml)
    assert root.findtext("version") == "1.1"
    assert root.findtext("meta/task/original_size/width") == "640"
    boxes = root.find("track[@label='nodule']").findall("box")
    assert [b.get("frame") for b in boxes] == [str(f) for f in range(26)]
    frame10 = boxes[10]
    assert (frame10.get("keyframe"), frame10.get("xtl"), frame10.get("xbr")) == \
        ("0", "20.00", "70.00")
    assert boxes[25].get("outside") == "1"
    points = root.find("track[@label='punctate']").findall("points")
    assert points[0].get("points") == "31.50,40.25"
    assert points[0].find("attribute").text == "true"


def test_round_trip_keeps_keyframes_and_interpolation(tracks):
    xml = export_cvat_video(tracks, n_frames=30, width=640, height=480)
    imported, meta = import_cvat_video(xml)
    assert meta == {"size": 30, "width": 640, "height": 480}
    nodule = next(t for t in imported if t.label == "nodule")
    assert [k.frame for k in nodule.keyframes] == [0, 20, 25]
    assert interpolate_track(nodule.keyframes, 30) == interpolate_track(tracks[0].keyframes, 30)
    focus = next(t for t in imported if t.label == "punctate")
    assert focus.keyframes[0].point == (31.5, 40.25) and focus.keyframes[1].outside
    assert focus.attributes == {"small_comet_tail": "true"}


@pytest.mark.parametrize("text", ["<html></html>", "not xml at all"])
def test_other_files_are_refused(text):
    with pytest.raises(ValueError, match="not a CVAT XML file"):
        import_cvat_video(text)
