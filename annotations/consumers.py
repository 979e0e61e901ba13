"""Websocket relays for case pages: a nodule's videos change status as the worker goes."""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from annotations.selectors import nodules_visible_to


class NoduleVideosConsumer(AsyncJsonWebsocketConsumer):
    """Relays `video.status` events of one nodule to the people who may see it."""

    async def connect(self):
        user = self.scope.get("user")
        nodule_id = int(self.scope["url_route"]["kwargs"]["nodule_id"])
        allowed = user is not None and await database_sync_to_async(
            lambda: nodules_visible_to(user=user).filter(pk=nodule_id).exists()
        )()
        if not allowed:
            await self.close(code=4404)
            return
        self.group = f"nodule-{nodule_id}"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def video_status(self, event):
        await self.send_json(event["data"])
