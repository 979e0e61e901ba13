from django.urls import include, path
from rest_framework.routers import DefaultRouter

from annotations import api, views

router = DefaultRouter()
router.register("centres", api.CentreViewSet, basename="centre")
router.register("memberships", api.MembershipViewSet, basename="membership")
router.register("patients", api.PatientViewSet, basename="patient")
router.register("nodules", api.NoduleViewSet, basename="nodule")
router.register("pathology", api.PathologyViewSet, basename="pathology")
router.register("videos", api.VideoViewSet, basename="video")

urlpatterns = [
    path("centres/<slug:code>/", views.centre_detail, name="centre-detail"),
    path("centres/<slug:code>/members/", views.membership_add, name="membership-add"),
    path(
        "centres/<slug:code>/members/<int:membership_id>/remove/",
        views.membership_remove,
        name="membership-remove",
    ),
    path("files/videos/<int:video_id>/original", views.video_original, name="video-original"),
]

api_urlpatterns = [path("", include(router.urls))]
