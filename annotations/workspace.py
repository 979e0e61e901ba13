"""Writes of the annotation workspace: start, autosave with optimistic locking, the review
workflow (draft -> submitted -> accepted | changes requested; reopen), the reviewer's
consensus, and the training targets of an annotation. Kept beside annotations/services.py
(the same conventions: keyword-only, one transaction each, every change audited).

Workflow:
- every annotator has one own annotation per video; the owner edits it while it is a draft or
  changes were requested, then submits it;
- a reviewer (the centre's administrators, platform administrators, assigned reviewers)
  accepts a submitted annotation or requests changes with a comment pinned to a frame;
- the reviewer adjudicates one consensus annotation per video (started empty or from an
  annotator's work) and accepts it: accepted consensus annotations are what training uses;
- accepted annotations are locked until a reviewer reopens them (audited, with a reason).
"""

from __future__ import annotations

from django.db import transaction
from django.http import Http404
from django.utils import timezone

from annotations import annotation_format as fmt
from annotations.models import (
    Annotation,
    AnnotationState,
    AuditAction,
    ReviewComment,
    User,
    Video,
    VideoStatus,
)
from annotations.permissions import Action, can
from annotations.selectors import annotations_visible_to, review_centres
from annotations.services import PermissionDenied, ValidationError, audit_record

EDITABLE = (AnnotationState.DRAFT, AnnotationState.CHANGES_REQUESTED)


class VersionConflict(Exception):
    """The write was based on an older version; `current` is the stored version."""

    def __init__(self, *, current: int, data: dict, state: str):
        super().__init__(f"the annotation was changed elsewhere (now version {current})")
        self.current, self.data, self.state = current, data, state


class Locked(PermissionDenied):
    """The annotation is accepted (or waiting for review) and cannot be edited."""


def _centre_id(annotation: Annotation) -> int:
    return annotation.video.nodule.patient.centre_id


def is_reviewer(user: User, annotation_or_video) -> bool:
    video = getattr(annotation_or_video, "video", annotation_or_video)
    return review_centres(user=user).filter(pk=video.nodule.patient.centre_id).exists()


def may_edit(user: User, annotation: Annotation) -> bool:
    """Whether `user` may change the content (ignoring the state)."""
    if annotation.is_consensus:
        return is_reviewer(user, annotation)
    return annotation.annotator_id == user.pk and can(user, Action.CHANGE, _centre_id(annotation))


def permissions_for(user: User, annotation: Annotation) -> dict[str, bool]:
    editable_state = annotation.state in EDITABLE
    reviewer = is_reviewer(user, annotation)
    owner = annotation.annotator_id == user.pk and not annotation.is_consensus
    state = annotation.state
    return {
        "edit": editable_state and may_edit(user, annotation),
        "submit": owner and editable_state and may_edit(user, annotation),
        "review": reviewer,
        "accept": reviewer and (state == AnnotationState.SUBMITTED
                                or (annotation.is_consensus and editable_state)),
        "request_changes": reviewer and state == AnnotationState.SUBMITTED,
        "reopen": reviewer and state == AnnotationState.ACCEPTED,
        # the annotator says a comment is dealt with, the reviewer agrees or reopens it
        "resolve_comments": reviewer or (owner and may_edit(user, annotation)),
    }


def _visible(user: User, annotation: Annotation) -> None:
    if not annotations_visible_to(user=user).filter(pk=annotation.pk).exists():
        raise Http404("No such annotation")


def _locked_for_update(annotation: Annotation) -> Annotation:
    return Annotation.objects.select_for_update().select_related(
        "video__nodule__patient__centre").get(pk=annotation.pk)


@transaction.atomic
def annotation_start(*, video: Video, user: User) -> tuple[Annotation, bool]:
    """The user's own annotation of `video`, created (empty draft) on first use."""
    centre = video.nodule.patient.centre
    if not can(user, Action.VIEW, centre):
        raise Http404("No such video")
    existing = Annotation.objects.filter(video=video, annotator=user, is_consensus=False).first()
    if existing is not None:
        return existing, False
    if not can(user, Action.CREATE, centre):
        raise PermissionDenied("You may not annotate videos at this centre.")
    if video.status != VideoStatus.READY:
        raise ValidationError("The video is not ready to annotate yet.")
    annotation = Annotation.objects.create(video=video, annotator=user, updated_by=user,
                                           data=fmt.empty_document())
    audit_record(user=user, action=AuditAction.CREATE, obj=annotation)
    return annotation, True


@transaction.atomic
def annotation_consensus_start(
    *, video: Video, user: User, source: Annotation | None = None
) -> Annotation:
    """The video's consensus annotation, created by a reviewer, empty or as a copy of one
    annotator's work (`source`); an existing consensus is returned unchanged."""
    if not is_reviewer(user, video):
        if not can(user, Action.VIEW, video.nodule.patient.centre):
            raise Http404("No such video")
        raise PermissionDenied("Only reviewers adjudicate the consensus annotation.")
    existing = Annotation.objects.filter(video=video, is_consensus=True).first()
    if existing is not None:
        return existing
    if source is not None and source.video_id != video.pk:
        raise ValidationError("The source annotation belongs to another video.")
    data = dict(source.data) if source is not None else fmt.empty_document()
    annotation = Annotation.objects.create(video=video, annotator=None, is_consensus=True,
                                           updated_by=user, data=data)
    audit_record(user=user, action=AuditAction.CREATE, obj=annotation,
                 detail={"consensus_from": source.pk if source else None})
    return annotation


@transaction.atomic
def annotation_save(*, annotation: Annotation, data: dict, version: int, user: User | None,
                    via: str = "autosave") -> Annotation:
    """Store a new content for `annotation`, based on `version`.

    Raises VersionConflict when someone saved since (the caller offers reload or merge),
    Locked when the state forbids editing, PermissionDenied for other people's annotations,
    ValidationError for a document that breaks the format. `user=None`: trusted server code.
    """
    if user is not None:
        _visible(user, annotation)
    current = _locked_for_update(annotation)
    if user is not None and not may_edit(user, current):
        raise PermissionDenied("Only its annotator edits an annotation; reviewers edit the "
                               "consensus.")
    if current.state not in EDITABLE:
        raise Locked(f"The annotation is {current.get_state_display().lower()}: "
                     + ("a reviewer must reopen it first." if current.state ==
                        AnnotationState.ACCEPTED else "it waits for review."))
    if current.version != version:
        raise VersionConflict(current=current.version, data=current.data, state=current.state)
    try:
        clean = fmt.validate_document(data, n_frames=current.video.frame_count)
    except fmt.FormatError as exc:
        raise ValidationError(str(exc)) from exc
    current.data = clean
    current.version += 1
    current.updated_by = user
    current.save(update_fields=["data", "version", "updated_by", "updated_at"])
    audit_record(user=user, action=AuditAction.CHANGE, obj=current,
                 detail={"version": current.version, "via": via,
                         "tracks": len(clean["tracks"]), "marks": len(clean["marks"])})
    annotation.refresh_from_db()
    return current


def _transition(annotation: Annotation, user: User, allowed: str, state: str,
                detail: dict | None = None, **fields) -> Annotation:
    _visible(user, annotation)
    current = _locked_for_update(annotation)
    if not permissions_for(user, current)[allowed]:
        raise PermissionDenied(
            f"You may not {allowed.replace('_', ' ')} an annotation that is "
            f"{current.get_state_display().lower()}.")
    previous = current.state
    current.state = state
    for name, value in fields.items():
        setattr(current, name, value)
    current.version += 1  # open editors see the change and stop editing a locked copy
    current.save()
    audit_record(user=user, action=AuditAction.CHANGE, obj=current,
                 detail={"transition": allowed, "from": previous, "to": state, **(detail or {})})
    return current


@transaction.atomic
def annotation_submit(*, annotation: Annotation, user: User) -> Annotation:
    return _transition(annotation, user, "submit", AnnotationState.SUBMITTED,
                       submitted_at=timezone.now())


@transaction.atomic
def annotation_accept(*, annotation: Annotation, user: User) -> Annotation:
    return _transition(annotation, user, "accept", AnnotationState.ACCEPTED,
                       reviewed_by=user, reviewed_at=timezone.now())


@transaction.atomic
def annotation_request_changes(*, annotation: Annotation, user: User, text: str,
                               frame: int) -> Annotation:
    text = (text or "").strip()
    if not text:
        raise ValidationError("Say what should change: the comment is empty.")
    frame_count = annotation.video.frame_count
    if int(frame) < 0 or (frame_count and int(frame) >= frame_count):
        raise ValidationError(f"Frame {frame} is outside the video.")
    current = _transition(annotation, user, "request_changes",
                          AnnotationState.CHANGES_REQUESTED,
                          detail={"frame": int(frame)},
                          reviewed_by=user, reviewed_at=timezone.now())
    ReviewComment.objects.create(annotation=current, author=user, frame=int(frame), text=text)
    return current


@transaction.atomic
def comment_set_resolved(*, comment: ReviewComment, user: User, resolved: bool) -> ReviewComment:
    """Mark a review comment addressed (or open again); audited on its annotation."""
    annotation = comment.annotation
    _visible(user, annotation)
    if not permissions_for(user, annotation)["resolve_comments"]:
        raise PermissionDenied("Only the annotator or a reviewer may mark a comment addressed.")
    comment = ReviewComment.objects.select_for_update().get(pk=comment.pk)
    if comment.resolved != resolved:
        comment.resolved = resolved
        comment.save(update_fields=["resolved"])
        audit_record(user=user, action=AuditAction.CHANGE, obj=annotation,
                     detail={"comment": comment.pk, "resolved": resolved})
    return comment


@transaction.atomic
def annotation_reopen(*, annotation: Annotation, user: User, reason: str = "") -> Annotation:
    """Unlock an accepted annotation (back to draft), with the reason in the audit log."""
    return _transition(annotation, user, "reopen", AnnotationState.DRAFT,
                       detail={"reason": (reason or "").strip()[:500]})


def annotation_training_targets(*, annotation: Annotation | None = None,
                                video: Video | None = None, point_radius: float = 1.0):
    """(mask (T, H, W) uint8 type codes, boxes (T, 4) float32, NaN rows where the nodule is not
    visible) aligned to the video's training clip (`Video.clip`, shape `clip_shape`): frame
    pixels mapped through the clip's crop (the ultrasound region) and resize.

    With `video`, its accepted consensus annotation; None when it has none (or the video has
    no clip). Trusted server code: no user, no tenancy (the caller selected the videos)."""
    if annotation is None:
        if video is None:
            raise TypeError("pass annotation= or video=")
        annotation = Annotation.objects.filter(
            video=video, is_consensus=True, state=AnnotationState.ACCEPTED).first()
        if annotation is None:
            return None
    video = annotation.video
    if not video.clip_shape or video.region is None:
        return None
    T, H, W = (int(v) for v in video.clip_shape)
    return fmt.training_targets(annotation.data or fmt.empty_document(), n_frames=T,
                                region=video.region, clip_hw=(H, W), point_radius=point_radius)
