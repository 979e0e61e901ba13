from django.urls import path

from webapp.review import api, views

urlpatterns = [
    path("studies/", views.study_list, name="review-studies"),
    path("studies/new/", views.study_new, name="review-study-new"),
    path("studies/<int:study_id>/", views.study_detail, name="review-study"),
    path("studies/<int:study_id>/read/", views.read_next, name="review-read"),
    path("studies/<int:study_id>/reads/<int:read_id>/", views.read_submit,
         name="review-read-submit"),
    path("studies/<int:study_id>/reads/<int:read_id>/chunks/<int:chunk>", views.case_chunk,
         name="review-case-chunk"),
    path("studies/<int:study_id>/reads/<int:read_id>/heatmaps.bin", views.case_heatmaps,
         name="review-case-heatmaps"),
    path("studies/<int:study_id>/results/", views.study_results_page, name="review-results"),
    path("studies/<int:study_id>/export.csv", views.study_export, name="review-export"),
    path("api/studies/", api.study_list, name="api-review-studies"),
    path("api/studies/<int:study_id>/reading/", api.reading_state, name="api-review-reading"),
    path("api/studies/<int:study_id>/reads/<int:read_id>/", api.read_submit,
         name="api-review-read-submit"),
]
