from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from webapp.training.selectors import runs_visible_to
from webapp.training.services.common import run_group


class RunConsumer(AsyncJsonWebsocketConsumer):
    """Relays a training run's progress to its page. Authorised through the same selector as
    the HTTP views: a run the user may not see closes the socket (4404)."""

    async def connect(self):
        user = self.scope.get("user")
        run_id = self.scope["url_route"]["kwargs"]["run_id"]
        allowed = user is not None and await database_sync_to_async(
            lambda: runs_visible_to(user=user).filter(pk=run_id).exists())()
        if not allowed:
            await self.close(code=4404)
            return
        self.group = run_group(run_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def run_progress(self, event):
        await self.send_json(event["data"])
