"""Inter-annotator agreement of one centre (a read): kappa on the TI-RADS features and on the
presence of each calcification type per video, and mean IoU of the nodule tracks.

Cohen's kappa when exactly two annotators read the videos; Fleiss' kappa otherwise, over the
videos read by the most common number (>= 2) of annotators (it needs equal counts per item).
Only finished reads count: submitted or accepted annotations, never the consensus."""

from __future__ import annotations

from collections import Counter
from itertools import combinations

from annotations import annotation_format as fmt
from annotations import tirads
from annotations.agreement import cohen_kappa, fleiss_kappa, ratings_to_counts
from annotations.models import AnnotationState, Centre, User
from annotations.selectors import annotations_visible_to
from annotations.tracks import track_iou

FINISHED = (AnnotationState.SUBMITTED, AnnotationState.ACCEPTED)


def _features() -> list[tuple[str, str, object]]:
    """(key, label, getter(document) -> category or None)."""
    rows: list[tuple[str, str, object]] = []
    for name in fmt.TIRADS_FIELDS:
        rows.append((name, f"TI-RADS {name}",
                     lambda d, n=name: (d.get("tirads") or {}).get(n) or None))
    for value, label in tirads.EchogenicFoci.choices:
        rows.append((f"foci_{value}", f"Echogenic foci: {label}",
                     lambda d, v=value: (v in (d.get("tirads") or {}).get("echogenic_foci", []))
                     if (d.get("tirads") or {}).get("echogenic_foci") else None))
    for kind, label in fmt.MARK_TYPE_LABELS.items():
        rows.append((f"marks_{kind}", f"Marked: {label}",
                     lambda d, k=kind: fmt.marks_present(d)[k]))
    return rows


def centre_agreement(*, user: User, centre: Centre) -> dict:
    rows = annotations_visible_to(user=user).filter(
        video__nodule__patient__centre=centre, is_consensus=False, state__in=FINISHED
    ).select_related("video", "annotator")
    by_video: dict[int, dict[str, dict]] = {}
    frames: dict[int, int] = {}
    for a in rows:
        by_video.setdefault(a.video_id, {})[a.annotator.get_username()] = a.data or {}
        frames[a.video_id] = a.video.frame_count or 0
    shared = {v: reads for v, reads in by_video.items() if len(reads) >= 2}
    annotators = sorted({name for reads in shared.values() for name in reads})
    method = "cohen" if len(annotators) == 2 else "fleiss"
    features = []
    for key, label, get in _features():
        items = []
        for reads in shared.values():
            calls = [get(doc) for _, doc in sorted(reads.items())]
            if all(c is not None for c in calls):
                items.append(calls)
        kappa = None
        if method == "cohen":
            items = [c for c in items if len(c) == 2]
            if items:
                kappa = cohen_kappa([c[0] for c in items], [c[1] for c in items])
        elif items:
            n = Counter(len(c) for c in items).most_common(1)[0][0]
            items = [c for c in items if len(c) == n]
            categories = sorted({str(x) for c in items for x in c})
            if len(categories) >= 2 or len(items) >= 2:
                kappa = fleiss_kappa(ratings_to_counts([[str(x) for x in c] for c in items],
                                                       categories))
        features.append({"key": key, "label": label, "kappa": kappa, "n": len(items)})
    ious = []
    for video_id, reads in shared.items():
        tracks = [fmt.nodule_boxes(doc, frames[video_id]) for _, doc in sorted(reads.items())]
        for a, b in combinations(tracks, 2):
            score = track_iou(a, b)
            if score is not None:
                ious.append(score)
    return {
        "annotators": annotators, "n_videos": len(shared), "method": method,
        "features": features,
        "iou_mean": sum(ious) / len(ious) if ious else None, "iou_pairs": len(ious),
    }
