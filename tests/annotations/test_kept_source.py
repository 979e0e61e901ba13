"""The kept source (annotations/kept_source.py) on its own: every frame of a plain video comes
back from the Motion JPEG Matroska file, in order and in colour, also when colour starts in
the middle of a gray video (FFmpeg mis-decodes a stream that switches between gray and colour
JPEGs, so the writer turns the whole file colour)."""

from __future__ import annotations

import numpy as np

from annotations import processing
from ml import video as mlvideo
from tests.annotations.conftest import sweep_frames, write_video


def test_a_gray_sweep_that_turns_colour_is_kept_whole_and_in_colour(tmp_path):
    frames = sweep_frames(n=12)  # gray speckle under a "DOE^JANE" banner
    frames[6:, 40:60, 40:60] = (230, 20, 20)  # colour flow switched on mid-sweep
    path = write_video(tmp_path / "sweep.avi", frames, fourcc="MJPG")
    out = tmp_path / "out"
    out.mkdir()

    result = processing.process_video(path, out, options=processing.Options())

    assert result.source.suffix == ".mkv" and not (out / "source.gray.mkv").exists()
    kept = list(mlvideo.iter_frames(result.source))
    uploaded = list(mlvideo.iter_frames(path))
    assert len(kept) == len(uploaded) == 12
    r = result.region
    inside = np.s_[r.y : r.y1, r.x : r.x1]
    for index, (mine, theirs) in enumerate(zip(kept, uploaded, strict=True)):
        assert np.abs(mine[inside].astype(int) - theirs[inside]).mean() < 3, index
        assert np.abs(mine.astype(int) - mlvideo.blank_outside(mine, r)).max() < 16
        assert mine[:14].max() < 16, "the banner is blanked"  # above the region
    assert uploaded[0][:14].max() > 100, "the upload shows the banner"
    red = kept[8][50, 50]
    assert red[0] > 180 and red[2] < 80, red
