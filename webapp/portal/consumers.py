from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from annotations.permissions import PlatformAction, can_platform
from webapp.portal.services import STATUS_GROUP


class SystemStatusConsumer(AsyncJsonWebsocketConsumer):
    """Relays worker-probe results to platform administrators' status pages."""

    async def connect(self):
        user = self.scope.get("user")
        allowed = user is not None and await database_sync_to_async(can_platform)(
            user, PlatformAction.ADMINISTER
        )
        if not allowed:
            await self.close(code=4404)
            return
        await self.channel_layer.group_add(STATUS_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(STATUS_GROUP, self.channel_name)

    async def probe_completed(self, event):
        await self.send_json(event["data"])
