from django.urls import path

from webapp.dashboards import views

urlpatterns = [
    path("dashboards/", views.dashboard, name="dashboards"),
    path("dashboards/export/<slug:kind>.csv", views.dashboard_export, name="dashboards-export"),
    path("dashboards/cases/", views.case_list, name="dashboards-cases"),
    path("dashboards/cases/<int:prediction_id>/", views.case_review,
         name="dashboards-case"),
    path("files/predictions/<int:prediction_id>/heatmaps.bin", views.heatmap_data,
         name="dashboards-heatmaps"),
]
