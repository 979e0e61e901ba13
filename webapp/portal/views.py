"""Home pages per role, the audit log, and system status. Views parse input, call a selector
or service, and render."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from annotations.models import AuditAction, Centre, CentreRole, User
from annotations.permissions import PlatformAction, can_platform
from annotations.selectors import audit_events_filtered, centre_summaries
from webapp.portal import services


def _require_platform(request, action: PlatformAction) -> None:
    # Platform pages answer 404 to everyone else, like objects of another centre.
    if not can_platform(request.user, action):
        raise Http404("Page not found")


@login_required
def home(request):
    user: User = request.user
    centres = list(centre_summaries(user=user))
    roles = dict(user.memberships.values_list("centre_id", "role"))
    member_centres = [c for c in centres if c.pk in roles]
    for centre in member_centres:
        centre.my_role = CentreRole(roles[centre.pk]).label
    context = {
        "member_centres": member_centres,
        "all_centres": centres if user.platform_role else [],
        "is_platform_admin": can_platform(user, PlatformAction.ADMINISTER),
        "is_ml_engineer": can_platform(user, PlatformAction.TRAIN),
    }
    return render(request, "portal/home.html", context)


@login_required
def audit_log(request):
    _require_platform(request, PlatformAction.VIEW_AUDIT)

    def as_int(name: str) -> int | None:
        value = request.GET.get(name, "")
        return int(value) if value.isdigit() else None

    events = audit_events_filtered(
        user=request.user,
        centre_id=as_int("centre"),
        user_id=as_int("user"),
        action=request.GET.get("action", ""),
    )
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "centres": Centre.objects.all(),
        "users": User.objects.order_by("username"),
        "actions": AuditAction.choices,
        "selected": {k: request.GET.get(k, "") for k in ("centre", "user", "action")},
    }
    return render(request, "portal/audit_log.html", context)


@login_required
def system_status(request):
    _require_platform(request, PlatformAction.ADMINISTER)
    return render(
        request,
        "portal/system_status.html",
        {"probes": services.latest_probes(), "queues": services.QUEUES},
    )


@login_required
def system_status_json(request):
    _require_platform(request, PlatformAction.ADMINISTER)
    return JsonResponse(
        {
            q: services.probe_as_dict(p) if p else None
            for q, p in services.latest_probes().items()
        }
    )


@login_required
@require_POST
def system_probe(request):
    _require_platform(request, PlatformAction.ADMINISTER)
    for queue in services.QUEUES:
        services.probe_send(queue=queue)
    return redirect("system-status")
