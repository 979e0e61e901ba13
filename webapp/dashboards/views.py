"""Per-hospital performance dashboard, its CSV exports, worklists of cases and the case
review page with heatmaps over the video. Pages parse input, call selectors and `metrics`,
render; tenancy comes from the selectors (other centres' cases are absent, or 404)."""

from __future__ import annotations

import csv
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from annotations import tirads
from annotations.labels import label_of
from annotations.models import AuditAction
from annotations.permissions import PlatformAction, can_platform
from annotations.selectors import centres_visible_to
from annotations.services import audit_record
from annotations.views import client_ip
from webapp.dashboards import heatmaps, performance, selectors

CASES_PER_PAGE = 50


def _selection(request) -> tuple[list, object, str]:
    versions = selectors.model_versions_for_dashboard()
    version = None
    wanted = request.GET.get("model", "")
    if wanted.isdigit():
        version = next((v for v in versions if v.pk == int(wanted)), None)
        if version is None:
            raise Http404("No such model version")
    version = version or selectors.default_version(versions)
    split = request.GET.get("split", "")
    split = split if split in selectors.SPLIT_NAMES else "external_test"
    return versions, version, split


def dashboard_data(*, user, versions: list, version, split: str) -> dict:
    """Everything the dashboard draws and exports, in a fixed number of queries. The model's
    numbers come from the cache while no prediction or label has changed; the inventory is
    counted afresh (a few grouped counts, and it moves with every upload and annotation)."""
    return performance.model_performance(user=user, versions=versions, version=version,
                                         split=split) | {
        "inventory": selectors.centre_inventory(user=user)}


@login_required
def dashboard(request):
    versions, version, split = _selection(request)
    context = {"versions": versions, "version": version, "split": split,
               "splits": selectors.SPLITS, "worklists": selectors.WORKLISTS,
               "all_centres": can_platform(request.user, PlatformAction.VIEW_ALL_CENTRES)}
    if version is not None:
        data = dashboard_data(user=request.user, versions=versions, version=version,
                              split=split)
        centres = data["performance"]["centres"]
        context |= {
            "data": data,
            "centre_rows": [("all", data["performance"]["overall"])] + list(centres.items()),
            "query": urlencode({"model": version.pk, "split": split}),
            "plot": {"centres": centres, "overall": data["performance"]["overall"],
                     "threshold": version.threshold},
        }
    else:
        context["data"] = {"inventory": selectors.centre_inventory(user=request.user)}
    return render(request, "dashboards/dashboard.html", context)


def _pct(p: dict | None) -> str:
    return "" if p is None else f"{p['estimate']:.4f}"


def _ci(p: dict | None) -> list[str]:
    return ["", ""] if p is None else [f"{p['ci_low']:.4f}", f"{p['ci_high']:.4f}"]


def _num(x) -> str:
    return "" if x is None else f"{x:.4f}"


EXPORTS = ("metrics", "comparison", "inventory")


@login_required
def dashboard_export(request, kind: str):
    if kind not in EXPORTS:
        raise Http404("No such export")
    versions, version, split = _selection(request)
    if version is None:
        raise Http404("No model version")
    data = dashboard_data(user=request.user, versions=versions, version=version, split=split)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    name = f"thyrocine-{kind}-v{version.number}-{split}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    out = csv.writer(response)
    if kind == "metrics":
        out.writerow(["model", "split", "centre", "n", "malignant", "auroc", "auroc_ci_low",
                      "auroc_ci_high", "threshold", "tp", "fp", "tn", "fn",
                      "sensitivity", "sens_ci_low", "sens_ci_high",
                      "specificity", "spec_ci_low", "spec_ci_high",
                      "ppv", "ppv_ci_low", "ppv_ci_high", "npv", "npv_ci_low", "npv_ci_high",
                      "brier"])
        perf = data["performance"]
        for centre, p in [("all", perf["overall"]), *perf["centres"].items()]:
            ci = p["auroc_ci"] or [None, None]
            out.writerow([
                f"v{version.number}", split, centre, p["n"], p["n_malignant"], _num(p["auroc"]),
                _num(ci[0]), _num(ci[1]), f"{version.threshold:.4f}",
                p["tp"], p["fp"], p["tn"], p["fn"],
                *(x for name in ("sensitivity", "specificity", "ppv", "npv")
                  for x in (_pct(p[name]), *_ci(p[name]))),
                _num(p["brier"])])
    elif kind == "comparison":
        out.writerow(["model", "arch", "group", "state", "shared_cases", "malignant", "auroc",
                      "auroc_ci_low", "auroc_ci_high", f"auroc_v{version.number}",
                      "difference", "delong_p"])
        for r in data["comparison"]:
            ci = r["auroc_ci"] or [None, None]
            out.writerow([f"v{r['number']}", r["arch"], r["group"], r["state"], r["n_shared"],
                          r["n_malignant"], _num(r["auroc"]), _num(ci[0]), _num(ci[1]),
                          _num(r["auroc_selected"]), _num(r["difference"]),
                          "" if r["p_value"] is None else f"{r['p_value']:.6g}"])
    else:
        columns = ["centre", "patients", "nodules", "videos", "ready", "annotated", "accepted",
                   "labelled", "malignant", "share_malignant"]
        out.writerow(columns)
        for r in data["inventory"]:
            out.writerow([r[c] if c != "share_malignant" else _num(r[c]) for c in columns])
    audit_record(user=request.user, action=AuditAction.EXPORT, object_type="dashboard",
                 ip_address=client_ip(request),
                 detail={"kind": kind, "model": version.number, "split": split})
    return response


def _worklist_params(request) -> tuple[str, str]:
    kind = request.GET.get("worklist", "all")
    kind = kind if kind in selectors.WORKLIST_NAMES else "all"
    return kind, request.GET.get("centre", "")[:16]


@login_required
def case_list(request):
    versions, version, split = _selection(request)
    kind, centre = _worklist_params(request)
    context = {"versions": versions, "version": version, "split": split,
               "splits": selectors.SPLITS, "worklists": selectors.WORKLISTS, "kind": kind,
               "centre": centre}
    if version is not None:
        cases = selectors.worklist(user=request.user, version=version, split=split, kind=kind,
                                   centre=centre).select_related(
            "video__nodule__patient__centre")
        page = Paginator(cases, CASES_PER_PAGE).get_page(request.GET.get("page"))
        query = {"model": version.pk, "split": split, "worklist": kind}
        if centre:
            query["centre"] = centre
        context |= {"page": page, "query": urlencode(query),
                    "centres": list(centres_visible_to(user=request.user)
                                    .order_by("code").values_list("code", flat=True))}
    return render(request, "dashboards/case_list.html", context)


def _tirads_of(document: dict, nodule) -> dict | None:
    values = (document or {}).get("tirads") or {}
    needed = ("composition", "echogenicity", "shape", "margin")
    if not all(values.get(k) for k in needed) or not values.get("echogenic_foci"):
        return None
    result = tirads.tirads_score(**{k: values[k] for k in needed},
                                 echogenic_foci=values["echogenic_foci"],
                                 max_diameter_mm=nodule.max_diameter_mm)
    return {"label": result.label, "risk_percent": result.level.risk_percent,
            "recommendation": result.recommendation.label}


@login_required
def case_review(request, prediction_id: int):
    prediction = selectors.case_review(user=request.user, prediction_id=prediction_id)
    if prediction is None:
        raise Http404("No such case")
    version = prediction.model_version
    video, nodule = prediction.video, prediction.video.nodule
    split = request.GET.get("split", "")
    split = split if split in selectors.SPLIT_NAMES else "external_test"
    kind, centre = _worklist_params(request)
    ids = list(selectors.worklist(user=request.user, version=version, split=split, kind=kind,
                                  centre=centre).values_list("pk", flat=True))
    query = {"model": version.pk, "split": split, "worklist": kind}
    if centre:
        query["centre"] = centre
    query_string = urlencode(query)
    previous = following = None
    position = None
    if prediction.pk in ids:
        position = ids.index(prediction.pk)
        previous = ids[position - 1] if position > 0 else None
        following = ids[position + 1] if position + 1 < len(ids) else None
    case_split, truth = selectors.case_truth(prediction=prediction)
    pathology = getattr(nodule, "pathology", None)
    annotation = selectors.case_annotation(user=request.user, prediction=prediction)
    audit_record(user=request.user, action=AuditAction.VIEW, obj=video,
                 ip_address=client_ip(request), detail={"page": "case review",
                                                         "prediction": prediction.pk})
    chunk_base = reverse("video-chunk", kwargs={"video_id": video.pk,
                                                "version": video.frames_version, "chunk": 0})
    config = {
        "frameCount": video.frame_count or 0, "fps": video.fps or 25,
        "chunkSize": video.frames_chunk_size or 32, "chunkBase": chunk_base[:-1],
        "heatmapUrl": reverse("dashboards-heatmaps", kwargs={"prediction_id": prediction.pk}),
        "region": prediction.region or [0, 0, video.width or 0, video.height or 0],
        "annotation": annotation.data if annotation is not None else None,
        "probability": prediction.probability, "threshold": version.threshold,
    }
    return render(request, "dashboards/case_review.html", {
        "prediction": prediction, "version": version, "video": video, "nodule": nodule,
        "patient": nodule.patient, "centre": nodule.patient.centre,
        "split": split, "split_name": selectors.SPLIT_NAMES[split], "kind": kind,
        "kind_name": selectors.WORKLIST_NAMES[kind], "query": query_string,
        "previous": previous, "next": following,
        "position": None if position is None else position + 1, "total": len(ids),
        "case_split": case_split, "truth": truth or label_of(pathology),
        "pathology": pathology, "annotation": annotation,
        "tirads": _tirads_of(annotation.data if annotation else {}, nodule),
        "positive": prediction.probability >= version.threshold, "config": config,
    })


@login_required
def heatmap_data(request, prediction_id: int):
    source = selectors.heatmap_source(user=request.user, prediction_id=prediction_id)
    if source is None or not source["heatmaps"]:
        raise Http404("No such heatmaps")
    etag = f'"hm-{source["id"]}-{source["frames_version"]}"'
    if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        response = HttpResponse(status=304)
    else:
        response = HttpResponse(heatmaps.heatmap_bytes(source["heatmaps"]),
                                content_type="application/octet-stream")
        response["Content-Encoding"] = "gzip"
    response["ETag"] = etag
    response["Cache-Control"] = "private, max-age=86400"
    return response
