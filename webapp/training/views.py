"""Training pages: snapshots, runs (with live progress), the model registry. Views parse
input, call a selector or service, render. Everything answers 404 to users who may neither
train nor promote, as other platform pages do."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpResponseForbidden, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from annotations.files import protected_file_response
from annotations.models import AuditAction
from annotations.permissions import PlatformAction, can_platform
from annotations.services import audit_record
from webapp.training import hyperparameters as hp
from webapp.training import selectors, services
from webapp.training.forms import RunForm, SnapshotForm
from webapp.training.models import FINISHED_STATUSES, ModelState, RunStatus


def _require_view(request) -> None:
    if not selectors.can_view_training(request.user):
        raise Http404("Page not found")


def _rights(user) -> dict:
    return {"can_train": can_platform(user, PlatformAction.TRAIN),
            "can_promote": can_platform(user, PlatformAction.PROMOTE)}


def _client_ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR")


# --- Runs -----------------------------------------------------------------------------------


@login_required
def run_list(request):
    _require_view(request)
    services.runs_reap_stale()
    runs = Paginator(selectors.runs_visible_to(user=request.user), 30).get_page(
        request.GET.get("page"))
    return render(request, "training/run_list.html",
                  {"page": runs, "production": selectors.production_model(),
                   **_rights(request.user)})


@login_required
def run_new(request):
    _require_view(request)
    snapshots = selectors.snapshots_visible_to(user=request.user)
    form = RunForm(request.POST or None, snapshots=snapshots,
                   initial={"snapshot": request.GET.get("snapshot")})
    if request.method == "POST" and form.is_valid():
        try:
            run = services.run_create(
                user=request.user, snapshot=form.cleaned_data["snapshot"],
                arch=form.cleaned_data["arch"], preset=form.cleaned_data["preset"],
                hyperparameters=form.hyperparameters(), gpus=form.cleaned_data["gpus"])
        except services.PermissionDenied as exc:
            return HttpResponseForbidden(str(exc))
        except hp.ConfigError as exc:
            form.add_config_errors(exc)
        else:
            messages.success(request, f"Run {run.pk} is queued on the gpu queue.")
            return redirect("training-run", run_id=run.pk)
    return render(request, "training/run_new.html",
                  {"form": form, "has_snapshots": snapshots.exists(), **_rights(request.user)})


@login_required
def run_detail(request, run_id: int):
    _require_view(request)
    services.runs_reap_stale()
    run = get_object_or_404(selectors.runs_visible_to(user=request.user), pk=run_id)
    return render(request, "training/run_detail.html", {
        "run": run, "state": selectors.run_state(run),
        "config": hp.effective(run.preset, run.arch, run.hyperparameters),
        "active": run.status not in FINISHED_STATUSES,
        "resumable": run.status in (RunStatus.FAILED, RunStatus.CANCELLED),
        **_rights(request.user)})


@login_required
def run_state_json(request, run_id: int):
    """What the page polls when websockets cannot carry worker updates (no Redis)."""
    _require_view(request)
    services.runs_reap_stale()
    run = get_object_or_404(selectors.runs_visible_to(user=request.user), pk=run_id)
    return JsonResponse(selectors.run_state(run))


def _run_action(request, run_id: int, action) -> object:
    _require_view(request)
    run = get_object_or_404(selectors.runs_visible_to(user=request.user), pk=run_id)
    try:
        action(user=request.user, run=run)
    except services.PermissionDenied as exc:
        return HttpResponseForbidden(str(exc))
    except services.ValidationError as exc:
        messages.error(request, str(exc))
    return redirect("training-run", run_id=run.pk)


@login_required
@require_POST
def run_cancel(request, run_id: int):
    return _run_action(request, run_id, services.run_cancel)


@login_required
@require_POST
def run_resume(request, run_id: int):
    return _run_action(request, run_id, services.run_resume)


# --- Snapshots ------------------------------------------------------------------------------


@login_required
def snapshot_list(request):
    _require_view(request)
    form = SnapshotForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            snapshot = services.snapshot_freeze(
                user=request.user, name=form.cleaned_data["name"],
                centres=list(form.cleaned_data["centres"]),
                external_centres=list(form.cleaned_data["external_centres"]),
                seed=form.cleaned_data["seed"],
                only_accepted=form.cleaned_data["only_accepted"])
        except services.PermissionDenied as exc:
            return HttpResponseForbidden(str(exc))
        except services.ValidationError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Snapshot {snapshot.pk} is frozen with "
                                      f"{snapshot.n_cases} cases.")
            return redirect("training-snapshot", snapshot_id=snapshot.pk)
    snapshots = selectors.snapshots_visible_to(user=request.user)
    return render(request, "training/snapshot_list.html",
                  {"snapshots": snapshots, "form": form, **_rights(request.user)})


@login_required
def snapshot_detail(request, snapshot_id: int):
    _require_view(request)
    snapshot = get_object_or_404(selectors.snapshots_visible_to(user=request.user),
                                 pk=snapshot_id)
    cases = Paginator(snapshot.cases.all(), 100).get_page(request.GET.get("page"))
    return render(request, "training/snapshot_detail.html", {
        "snapshot": snapshot, "page": cases, "runs": snapshot.runs.all()[:20],
        **_rights(request.user)})


# --- Registry -------------------------------------------------------------------------------


@login_required
def model_list(request):
    _require_view(request)
    versions = list(selectors.model_versions_visible_to(user=request.user))
    for v in versions:
        v.headline = selectors.headline(v)
    return render(request, "training/model_list.html",
                  {"versions": versions, **_rights(request.user)})


@login_required
def model_detail(request, version_id: int):
    _require_view(request)
    version = get_object_or_404(selectors.model_versions_visible_to(user=request.user),
                                pk=version_id)
    compared = selectors.comparison_versions(version)
    return render(request, "training/model_detail.html", {
        "version": version, "compared": compared, "rows": selectors.metric_rows(compared),
        "n_predictions": version.predictions.count(),
        "is_rollback": version.state == ModelState.RETIRED, **_rights(request.user)})


@login_required
@require_POST
def model_promote(request, version_id: int):
    _require_view(request)
    version = get_object_or_404(selectors.model_versions_visible_to(user=request.user),
                                pk=version_id)
    try:
        services.model_promote(user=request.user, version=version,
                               ip_address=_client_ip(request))
    except services.PermissionDenied as exc:
        return HttpResponseForbidden(str(exc))
    except services.ValidationError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Model v{version.number} is in production; every ready "
                                  "video is being scored with it.")
    return redirect("training-model", version_id=version.pk)


# --- Predictions ----------------------------------------------------------------------------


@login_required
def prediction_heatmaps(request, prediction_id: int):
    """The heatmaps file of a prediction, for users who may see the video."""
    prediction = get_object_or_404(selectors.predictions_visible_to(user=request.user),
                                   pk=prediction_id)
    audit_record(user=request.user, action=AuditAction.VIEW, obj=prediction.video,
                 ip_address=_client_ip(request),
                 detail={"heatmaps": prediction.pk, "model": prediction.model_version.number})
    return protected_file_response(prediction.heatmaps,
                                   download_name=f"heatmaps-{prediction.pk}.npz",
                                   content_type="application/octet-stream")
