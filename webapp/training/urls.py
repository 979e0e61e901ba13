from django.urls import include, path
from rest_framework.routers import DefaultRouter

from webapp.training import api, views

router = DefaultRouter()
router.register("snapshots", api.SnapshotViewSet, basename="api-training-snapshot")
router.register("runs", api.RunViewSet, basename="api-training-run")
router.register("models", api.ModelVersionViewSet, basename="api-training-model")
router.register("predictions", api.PredictionViewSet, basename="api-training-prediction")

urlpatterns = [
    path("training/", views.run_list, name="training-runs"),
    path("training/runs/new/", views.run_new, name="training-run-new"),
    path("training/runs/<int:run_id>/", views.run_detail, name="training-run"),
    path("training/runs/<int:run_id>/state.json", views.run_state_json,
         name="training-run-state"),
    path("training/runs/<int:run_id>/cancel/", views.run_cancel, name="training-run-cancel"),
    path("training/runs/<int:run_id>/resume/", views.run_resume, name="training-run-resume"),
    path("training/snapshots/", views.snapshot_list, name="training-snapshots"),
    path("training/snapshots/<int:snapshot_id>/", views.snapshot_detail,
         name="training-snapshot"),
    path("training/models/", views.model_list, name="training-models"),
    path("training/models/<int:version_id>/", views.model_detail, name="training-model"),
    path("training/models/<int:version_id>/promote/", views.model_promote,
         name="training-model-promote"),
    path("files/predictions/<int:prediction_id>/heatmaps.npz", views.prediction_heatmaps,
         name="training-prediction-heatmaps"),
]

api_urlpatterns = [path("", include(router.urls))]
