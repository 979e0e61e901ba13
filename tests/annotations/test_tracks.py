"""Track interpolation: hand-checked cases, and the browser's implementation against the same
vectors as the server's."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from annotations.tracks import (
    Keyframe,
    box_iou,
    interpolate_track,
    parse_keyframes,
    track_iou,
)

REPO = Path(__file__).resolve().parents[2]
VECTORS = json.loads((Path(__file__).parent / "track_vectors.json").read_text())["vectors"]


def test_box_on_frame_10_is_the_midpoint_of_keyframes_0_and_20():
    keyframes = parse_keyframes([{"frame": 0, "box": [10, 20, 50, 60]},
                                 {"frame": 20, "box": [30, 20, 90, 100]}])
    boxes = interpolate_track(keyframes, 30)
    assert boxes[10] == (20, 20, 70, 80)
    assert boxes[0] == (10, 20, 50, 60) and boxes[20] == (30, 20, 90, 100)
    assert boxes[29] == (30, 20, 90, 100)  # the last keyframe holds to the end


def test_outside_hides_the_nodule_and_the_previous_shape_holds():
    boxes = interpolate_track(
        [Keyframe(0, (0, 0, 10, 10)), Keyframe(5, None, outside=True),
         Keyframe(9, (5, 5, 15, 15))], 12)
    assert boxes[4] == (0, 0, 10, 10)
    assert boxes[5:9] == [None] * 4
    assert boxes[9] == (5, 5, 15, 15)


@pytest.mark.parametrize(
    "items,message",
    [
        ([{"frame": 1, "box": [0, 0, 1, 1]}, {"frame": 1, "box": [0, 0, 2, 2]}], "same frame"),
        ([{"frame": 0, "box": [5, 0, 1, 1]}], "swapped"),
        ([{"frame": 0}], "needs a box"),
        ([{"frame": -1, "box": [0, 0, 1, 1]}], "start at 0"),
    ],
)
def test_bad_keyframes_are_refused(items, message):
    with pytest.raises(ValueError, match=message):
        parse_keyframes(items)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_server_matches_vectors(vector):
    boxes = interpolate_track(parse_keyframes(vector["keyframes"]), vector["n_frames"])
    assert [None if b is None else pytest.approx(list(b), abs=1e-9) for b in boxes] == \
        vector["expected"]


def test_browser_implementation_matches_the_same_vectors():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = """
      const {interpolateTrack} = require(process.argv[1]);
      const vectors = JSON.parse(require('fs').readFileSync(process.argv[2])).vectors;
      const out = vectors.map(v => interpolateTrack(
        v.keyframes.map(k => ({frame: k.frame, box: k.box || null, outside: !!k.outside})),
        v.n_frames));
      console.log(JSON.stringify(out));
    """
    result = subprocess.run(
        [node, "-e", script, str(REPO / "annotations/static/annotations/js/tracks.js"),
         str(Path(__file__).parent / "track_vectors.json")],
        capture_output=True, text=True, timeout=60, check=True,
    )
    for vector, boxes in zip(VECTORS, json.loads(result.stdout), strict=True):
        assert len(boxes) == len(vector["expected"]), vector["name"]
        for got, want in zip(boxes, vector["expected"], strict=True):
            assert (got is None) == (want is None), vector["name"]
            if got is not None:
                assert got == pytest.approx(want, abs=1e-9), vector["name"]


def test_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou(None, (0, 0, 1, 1)) == 0.0
    assert box_iou(None, None) is None
    assert track_iou([(0, 0, 10, 10), None, None], [(0, 0, 10, 10), (0, 0, 1, 1), None]) == 0.5
