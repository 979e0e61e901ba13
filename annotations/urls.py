from django.urls import include, path
from rest_framework.routers import DefaultRouter

from annotations import api, api_annotations, tus, views, views_annotation

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
    path(
        "centres/<slug:code>/members/<int:membership_id>/reviewer/",
        views.membership_reviewer,
        name="membership-reviewer",
    ),
    path("centres/<slug:code>/cases/", views.case_list, name="case-list"),
    path("centres/<slug:code>/cases/new/", views.case_new, name="case-new"),
    path("patients/<int:patient_id>/", views.patient_detail, name="patient-page"),
    path("nodules/<int:nodule_id>/", views.nodule_detail, name="nodule-page"),
    path("nodules/<int:nodule_id>/videos.json", views.nodule_videos_json,
         name="nodule-videos-json"),
    path("nodules/<int:nodule_id>/pathology/", views.pathology_edit, name="pathology-edit"),
    path("videos/<int:video_id>/", views.video_detail, name="video-page"),
    path("videos/<int:video_id>/reprocess/", views.video_reprocess, name="video-reprocess"),
    path("videos/<int:video_id>/annotate/", views_annotation.video_annotate,
         name="video-annotate"),
    path("annotations/<int:annotation_id>/", views_annotation.annotation_workspace,
         name="annotation-workspace"),
    path("centres/<slug:code>/review/", views_annotation.review_queue_page, name="review-queue"),
    path("centres/<slug:code>/agreement/", views_annotation.agreement_page,
         name="agreement"),
    path("files/videos/<int:video_id>/original", views.video_original, name="video-original"),
    path("files/videos/<int:video_id>/v<int:version>/frames/<int:index>.jpg",
         views.video_frame, name="video-frame"),
    path("files/videos/<int:video_id>/v<int:version>/chunks/<int:chunk>",
         views.video_chunk, name="video-chunk"),
    path("files/videos/<int:video_id>/v<int:version>/thumbnail.jpg",
         views.video_thumbnail, name="video-thumbnail"),
    path("files/videos/<int:video_id>/v<int:version>/clip.npy",
         views.video_clip, name="video-clip"),
]

api_urlpatterns = [
    path("uploads/", tus.UploadCreateView.as_view(), name="upload-create"),
    path("uploads/<uuid:upload_id>/", tus.UploadDetailView.as_view(), name="upload-detail"),
    path("videos/<int:video_id>/annotations/", api_annotations.video_annotations,
         name="api-video-annotations"),
    path("annotations/<int:annotation_id>/", api_annotations.annotation_detail,
         name="api-annotation-detail"),
    path("annotations/<int:annotation_id>/transition/", api_annotations.annotation_transition,
         name="api-annotation-transition"),
    path("annotations/<int:annotation_id>/comments/<int:comment_id>/",
         api_annotations.annotation_comment, name="api-annotation-comment"),
    path("annotations/<int:annotation_id>/export.<str:kind>", api_annotations.annotation_export,
         name="api-annotation-export"),
    path("annotations/<int:annotation_id>/import/", api_annotations.annotation_import,
         name="api-annotation-import"),
    path("", include(router.urls)),
]
