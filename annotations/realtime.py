"""The one helper through which services publish live updates to browsers.

Consumers only relay what arrives here. Without Redis the channel layer is in-memory and does
not cross processes, so pages poll instead (settings.REALTIME_CROSS_PROCESS).
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)


def group_notify(group: str, *, event_type: str, data: dict) -> None:
    """Send `data` to every websocket in `group`; a consumer method named after `event_type`
    (dots become underscores) relays it. Never raises: a live update is best effort, the
    database row is the truth."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, {"type": event_type, "data": data})
    except Exception:  # noqa: BLE001 - a broken push must not fail the job that triggered it
        logger.warning("live update to %s failed", group, exc_info=True)
