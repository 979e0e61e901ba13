from django.urls import path

from webapp.portal import views

urlpatterns = [
    path("", views.home, name="home"),
    path("audit/", views.audit_log, name="audit-log"),
    path("system/", views.system_status, name="system-status"),
    path("system/status.json", views.system_status_json, name="system-status-json"),
    path("system/probe/", views.system_probe, name="system-probe"),
]
