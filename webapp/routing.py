"""Websocket routes. Each consumer authorises through the permission layer, then relays."""

from django.urls import path

from webapp.portal.consumers import SystemStatusConsumer

websocket_urlpatterns = [
    path("ws/system/", SystemStatusConsumer.as_asgi()),
]
