"""Demo annotations for `make demo`: the synthetic generator's ground truth (`truth/*.npz`:
nodule boxes and calcification masks at video resolution) turned into annotations in every
workflow state, so that the workspace, the review queue and the agreement page have content.

Per video of a demo centre, in turn (STATES): accepted with an accepted consensus (what
training uses), submitted (waiting in the review queue), changes requested with a comment
pinned to a frame, submitted, a draft. The centre administrator also reads every video that
is not a draft (boxes shifted by a few pixels, now and then another TI-RADS margin), so the
agreement page has two annotators.
Idempotent: videos that already have annotations are left alone.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
from django.db import transaction

from annotations import annotation_format as fmt
from annotations import workspace
from annotations.models import Annotation, User, Video
from ml.synthetic import tirads_reading

logger = logging.getLogger(__name__)

# The own annotation's state, video by video of a centre, in turn.
STATES = ("accepted", "submitted", "changes_requested", "submitted", "draft")


def _second_read(data: dict, index: int) -> dict:
    """Another annotator's read of the same video: boxes shifted by a few pixels, and on
    every other video one TI-RADS call differs."""
    other = json.loads(json.dumps(data))
    shift = 2.0 + index % 3
    for track in other["tracks"]:
        for key in track["keyframes"]:
            if not key["outside"]:
                key["box"] = [v + shift for v in key["box"]]
    if index % 2:
        other["tirads"]["margin"] = ("ill_defined" if other["tirads"].get("margin") == "smooth"
                                     else "smooth")
    return other


def _videos_by_case() -> dict[tuple[str, str, str], Video]:
    videos = Video.objects.filter(duplicate_of__isnull=True).select_related(
        "nodule__patient__centre")
    return {(v.nodule.patient.centre.code, v.nodule.patient.code, v.nodule.code): v
            for v in videos.order_by("pk")}


@transaction.atomic
def _annotate(video: Video, data: dict, people: dict[str, User], index: int) -> str:
    annotator, reviewer = people["annotator"], people["reviewer"]
    own = Annotation.objects.create(video=video, annotator=annotator, data=data,
                                    updated_by=annotator)
    state = STATES[index % len(STATES)]
    if state != "draft":
        workspace.annotation_submit(annotation=own, user=annotator)
    if state == "accepted":
        workspace.annotation_accept(annotation=own, user=reviewer)
        consensus = workspace.annotation_consensus_start(video=video, user=reviewer, source=own)
        workspace.annotation_accept(annotation=consensus, user=reviewer)
    elif state == "changes_requested":
        frame = data["marks"][0]["frame_start"] if data["marks"] else 0
        workspace.annotation_request_changes(
            annotation=own, user=reviewer, frame=frame,
            text="Check the type of this focus: punctate or small macrocalcification?")
    if state != "draft":  # a second, independent read for the agreement page
        second = Annotation.objects.create(video=video, annotator=reviewer,
                                           data=_second_read(data, index),
                                           updated_by=reviewer)
        workspace.annotation_submit(annotation=second, user=reviewer)
    return state


def demo_annotations_seed(*, cases_dir: Path, people: dict[str, dict[str, User]]) -> dict:
    """Annotate the demo videos listed in `cases_dir/manifest.csv` from `cases_dir/truth`.
    `people`: centre code -> {"annotator": user, "reviewer": user}. Returns counts by state."""
    counts: dict[str, int] = {}
    manifest = cases_dir / "manifest.csv"
    if not manifest.is_file():
        return counts
    videos = _videos_by_case()
    per_centre: dict[str, int] = {}
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        key = (row["centre"], row["patient"], row["nodule"])
        truth = cases_dir / "truth" / f"{Path(row['video']).stem}.npz"
        video = videos.get(key)
        if video is None or row["centre"] not in people or not truth.is_file():
            continue
        if Annotation.objects.filter(video=video).exists():
            counts["skipped"] = counts.get("skipped", 0) + 1
            continue
        with np.load(truth) as arrays:
            data = fmt.document_from_truth(arrays["mask"], arrays["boxes"], key_every=8)
            meta = json.loads(str(arrays["meta"])) if "meta" in arrays.files else {}
        data["tirads"] = tirads_reading(meta)
        data = fmt.validate_document(data, n_frames=video.frame_count)
        index = per_centre.get(row["centre"], 0)
        per_centre[row["centre"]] = index + 1
        state = _annotate(video, data, people[row["centre"]], index)
        counts[state] = counts.get(state, 0) + 1
    return counts
