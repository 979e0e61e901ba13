"""Websocket routes. Each consumer authorises through the permission layer, then relays."""

from django.urls import path

from annotations.consumers import NoduleVideosConsumer
from webapp.portal.consumers import SystemStatusConsumer

websocket_urlpatterns = [
    path("ws/system/", SystemStatusConsumer.as_asgi()),
    path("ws/nodules/<int:nodule_id>/", NoduleVideosConsumer.as_asgi()),
]
