"""Websocket routes. Each consumer authorises through the permission layer, then relays."""

from django.urls import path

from annotations.consumers import NoduleVideosConsumer
from webapp.portal.consumers import SystemStatusConsumer
from webapp.training.consumers import RunConsumer

websocket_urlpatterns = [
    path("ws/system/", SystemStatusConsumer.as_asgi()),
    path("ws/training/runs/<int:run_id>/", RunConsumer.as_asgi()),
    path("ws/nodules/<int:nodule_id>/", NoduleVideosConsumer.as_asgi()),
]
