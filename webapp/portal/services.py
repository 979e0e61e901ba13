"""Worker probes: prove that each queue has a live worker."""

from __future__ import annotations

import os
import platform
import socket

from django.db import transaction
from django.utils import timezone

from annotations.realtime import group_notify
from webapp.portal.models import WorkerProbe

QUEUES = ("cpu", "gpu")
STATUS_GROUP = "system-status"


def probe_send(*, queue: str) -> WorkerProbe:
    """Record a probe and enqueue it on `queue` once the row is committed."""
    from webapp.portal.tasks import worker_probe

    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}")
    probe = WorkerProbe.objects.create(queue=queue)
    transaction.on_commit(lambda: worker_probe.apply_async(args=[probe.pk], queue=queue))
    return probe


def probe_complete(*, probe: WorkerProbe) -> WorkerProbe:
    """Run inside the worker: stamp the probe with this worker's identity."""
    probe.completed_at = timezone.now()
    probe.worker_hostname = socket.gethostname()
    probe.worker_detail = _worker_detail()
    probe.save(update_fields=["completed_at", "worker_hostname", "worker_detail"])
    group_notify(STATUS_GROUP, event_type="probe.completed", data=probe_as_dict(probe))
    return probe


def _worker_detail() -> dict:
    detail = {"pid": os.getpid(), "python": platform.python_version()}
    try:
        import torch

        detail["torch"] = torch.__version__
        detail["cuda"] = torch.cuda.is_available()
        if detail["cuda"]:
            detail["gpus"] = [
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ]
    except ImportError:  # pragma: no cover - torch is a pinned dependency
        detail["torch"] = None
    return detail


def probe_as_dict(probe: WorkerProbe) -> dict:
    return {
        "id": probe.pk,
        "queue": probe.queue,
        "requested_at": probe.requested_at.isoformat(),
        "completed_at": probe.completed_at.isoformat() if probe.completed_at else None,
        "round_trip_ms": probe.round_trip_ms,
        "worker_hostname": probe.worker_hostname,
        "worker_detail": probe.worker_detail,
    }


def latest_probes() -> dict[str, WorkerProbe | None]:
    return {q: WorkerProbe.objects.filter(queue=q).first() for q in QUEUES}
