"""Reads. Every centre-scoped query starts from one of these, which start from
`permissions.centres_where`: the one place where tenancy is decided."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from annotations.labels import label_expression
from annotations.models import (
    AuditEvent,
    Centre,
    CentreMask,
    Membership,
    Nodule,
    Pathology,
    Patient,
    UploadSession,
    User,
    Video,
    VideoStatus,
)
from annotations.permissions import Action, PlatformAction, can_platform, centres_where


def centres_visible_to(*, user: User, action: Action = Action.VIEW) -> QuerySet[Centre]:
    return centres_where(user, action)


def patients_visible_to(*, user: User, action: Action = Action.VIEW) -> QuerySet[Patient]:
    return Patient.objects.filter(centre__in=centres_where(user, action))


def nodules_visible_to(*, user: User, action: Action = Action.VIEW) -> QuerySet[Nodule]:
    return Nodule.objects.filter(patient__centre__in=centres_where(user, action))


def videos_visible_to(*, user: User, action: Action = Action.VIEW) -> QuerySet[Video]:
    return Video.objects.filter(nodule__patient__centre__in=centres_where(user, action))


def pathology_visible_to(*, user: User, action: Action = Action.VIEW) -> QuerySet[Pathology]:
    return Pathology.objects.filter(nodule__patient__centre__in=centres_where(user, action))


def memberships_visible_to(
    *, user: User, action: Action = Action.VIEW
) -> QuerySet[Membership]:
    return Membership.objects.filter(centre__in=centres_where(user, action)).select_related(
        "user", "centre"
    )


def audit_events_visible_to(*, user: User) -> QuerySet[AuditEvent]:
    if not can_platform(user, PlatformAction.VIEW_AUDIT):
        return AuditEvent.objects.none()
    return AuditEvent.objects.all()


def audit_events_filtered(
    *, user: User, centre_id: int | None = None, user_id: int | None = None,
    action: str = "",
) -> QuerySet[AuditEvent]:
    events = audit_events_visible_to(user=user)
    if centre_id:
        events = events.filter(centre_id=centre_id)
    if user_id:
        events = events.filter(user_id=user_id)
    if action:
        events = events.filter(action=action)
    return events


def centre_summaries(*, user: User) -> QuerySet[Centre]:
    """Visible centres with case counts, in one query."""
    return centres_where(user, Action.VIEW).annotate(
        n_patients=Count("patients", distinct=True),
        n_nodules=Count("patients__nodules", distinct=True),
        n_videos=Count("patients__nodules__videos", distinct=True),
        n_ready=Count(
            "patients__nodules__videos",
            filter=Q(patients__nodules__videos__status=VideoStatus.READY),
            distinct=True,
        ),
    )


def users_for_membership(*, centre: Centre) -> QuerySet[User]:
    """Active users who could be added to `centre` (not yet members)."""
    return User.objects.filter(is_active=True).exclude(memberships__centre=centre)


def centre_masks_for(*, centre_id: int):
    """A function (frame width, height) -> the centre's mask rectangles for that frame size;
    for the processing step, which knows no Django."""
    from ml.video import Region

    rows = list(CentreMask.objects.filter(centre_id=centre_id)
                .values_list("frame_width", "frame_height", "x", "y", "w", "h"))

    def masks_for(width: int, height: int) -> list[Region]:
        return [Region(x, y, w, h) for fw, fh, x, y, w, h in rows
                if (fw is None or fw == width) and (fh is None or fh == height)]

    return masks_for


ANNOTATION_PROGRESS = [
    ("none", "Not started"),
    ("in_progress", "In progress"),
    ("accepted", "Consensus accepted"),
]


def cases_for_centre(
    *, user: User, centre: Centre, status: str = "", label: str = "", query: str = "",
    progress: str = "",
) -> QuerySet[Nodule]:
    """The centre's nodules (cases) with their label, video counts and annotation progress
    (none, in progress, or an accepted consensus annotation)."""
    nodules = (
        nodules_visible_to(user=user)
        .filter(patient__centre=centre)
        .select_related("patient", "pathology")
        .annotate(
            label=label_expression(),
            n_videos=Count("videos", distinct=True),
            n_ready=Count("videos", filter=Q(videos__status=VideoStatus.READY), distinct=True),
            n_failed=Count("videos", filter=Q(videos__status=VideoStatus.FAILED),
                           distinct=True),
            n_pending=Count(
                "videos",
                filter=Q(videos__status__in=[VideoStatus.UPLOADED, VideoStatus.PROCESSING]),
                distinct=True,
            ),
            n_annotations=Count("videos__annotations", distinct=True),
            n_accepted=Count(
                "videos__annotations",
                filter=Q(videos__annotations__is_consensus=True,
                         videos__annotations__state="accepted"),
                distinct=True,
            ),
        )
        .order_by("patient__code", "code")
    )
    if progress == "none":
        nodules = nodules.filter(n_annotations=0)
    elif progress == "in_progress":
        nodules = nodules.filter(n_annotations__gt=0, n_accepted=0)
    elif progress == "accepted":
        nodules = nodules.filter(n_accepted__gt=0)
    if status == "none":
        nodules = nodules.filter(n_videos=0)
    elif status in VideoStatus.values:
        nodules = nodules.filter(videos__status=status).distinct()
    if label:
        nodules = nodules.filter(label=label)
    if query:
        nodules = nodules.filter(Q(patient__code__icontains=query) | Q(code__icontains=query))
    return nodules


def case_counts(*, user: User, centre: Centre) -> dict:
    """Counts for the case list header: nodules by label and videos by status."""
    nodules = nodules_visible_to(user=user).filter(patient__centre=centre)
    by_label = dict(
        nodules.annotate(label=label_expression()).values_list("label")
        .annotate(n=Count("id")).values_list("label", "n")
    )
    by_status = dict(
        videos_visible_to(user=user).filter(nodule__patient__centre=centre)
        .values_list("status").annotate(n=Count("id")).values_list("status", "n")
    )
    return {"labels": by_label, "statuses": by_status, "nodules": sum(by_label.values())}


def video_for_frames(*, user: User, video_id: int) -> dict | None:
    """The few fields a frame request needs, in one query (the player's hot path)."""
    return (
        videos_visible_to(user=user)
        .filter(pk=video_id, status=VideoStatus.READY)
        .values("id", "frames_prefix", "frames_chunk_size", "frames_version", "frame_count",
                "thumbnail", "clip")
        .first()
    )


def videos_with_unblanked_source(*, videos: QuerySet[Video]) -> QuerySet[Video]:
    """Those of `videos` whose stored file is a de-identified upload kept as it came (stored
    before kept sources existed, burned-in text included): kept sources are named
    `<sha>.mkv` or `<sha>.dcm`, uploads `<sha>` without a suffix (`video_upload_path`)."""
    return videos.exclude(file="").exclude(file__endswith=".mkv").exclude(file__endswith=".dcm")


def nodule_videos(*, user: User, nodule: Nodule) -> QuerySet[Video]:
    return videos_visible_to(user=user).filter(nodule=nodule).select_related(
        "duplicate_of", "duplicate_of__nodule__patient", "uploaded_by"
    ).order_by("uploaded_at", "pk")


def uploads_visible_to(*, user: User, action: Action = Action.VIEW) -> QuerySet[UploadSession]:
    """Upload sessions of visible centres; only their uploader (or someone allowed to delete
    at the centre) may continue or cancel one, which the services check."""
    return UploadSession.objects.filter(
        nodule__patient__centre__in=centres_where(user, action)
    ).select_related("nodule__patient__centre")


# --- Annotation workspace -------------------------------------------------------------------


def review_centres(*, user: User) -> QuerySet[Centre]:
    """Centres where `user` reviews annotations: where they manage the centre (centre and
    platform administrators) or are an assigned reviewer (and still a member who may view)."""
    from annotations.models import ReviewerAssignment

    assigned = ReviewerAssignment.objects.filter(
        user=user, centre__in=centres_where(user, Action.VIEW)
    ).values("centre_id") if user.is_authenticated else Centre.objects.none().values("pk")
    return Centre.objects.filter(
        Q(pk__in=centres_where(user, Action.MANAGE_MEMBERS).values("pk")) | Q(pk__in=assigned)
    )


def annotations_visible_to(*, user: User):
    """Annotations of visible videos that `user` may read: their own, every consensus, and
    everything at centres where they review or may export data sets (ML engineers). Annotators
    do not see each other's work, so that agreement measures independent reads."""
    from annotations.models import Annotation

    centre = "video__nodule__patient__centre__in"
    return Annotation.objects.filter(
        video__in=videos_visible_to(user=user).values("pk")
    ).filter(
        Q(annotator=user) | Q(is_consensus=True)
        | Q(**{centre: review_centres(user=user).values("pk")})
        | Q(**{centre: centres_where(user, Action.EXPORT).values("pk")})
    ).select_related("annotator", "video__nodule__patient__centre")


def consensus_annotations_for(*, user: User | None = None, centre: Centre | None = None,
                              videos=None):
    """Accepted consensus annotations: what training uses (one per video at most).
    `user=None` is trusted server code (data-set snapshots); otherwise tenancy applies."""
    from annotations.models import Annotation, AnnotationState

    rows = Annotation.objects.filter(is_consensus=True, state=AnnotationState.ACCEPTED)
    if user is not None:
        rows = rows.filter(video__in=videos_visible_to(user=user).values("pk"))
    if centre is not None:
        rows = rows.filter(video__nodule__patient__centre=centre)
    if videos is not None:
        rows = rows.filter(video__in=videos)
    return rows.select_related("video")


def review_queue(*, user: User, centre: Centre) -> list[dict]:
    """Videos of `centre` with annotations, for its reviewers: each video's annotations,
    submitted ones first."""
    from annotations.models import AnnotationState

    rows = annotations_visible_to(user=user).filter(
        video__nodule__patient__centre=centre
    ).select_related("video__nodule__patient", "annotator").order_by("video_id", "pk")
    by_video: dict[int, dict] = {}
    for a in rows:
        entry = by_video.setdefault(a.video_id, {"video": a.video, "annotations": [],
                                                 "consensus": None, "waiting": 0})
        if a.is_consensus:
            entry["consensus"] = a
        else:
            entry["annotations"].append(a)
            entry["waiting"] += a.state == AnnotationState.SUBMITTED
    return sorted(by_video.values(), key=lambda e: (-e["waiting"], e["video"].pk))
