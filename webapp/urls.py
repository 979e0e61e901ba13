from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.authtoken.views import obtain_auth_token

from annotations.urls import api_urlpatterns
from webapp.training.urls import api_urlpatterns as training_api_urlpatterns

urlpatterns = [
    path("", include("webapp.portal.urls")),
    path("", include("annotations.urls")),
    path("", include("webapp.training.urls")),
    path("review/", include("webapp.review.urls")),
    path("", include("webapp.dashboards.urls")),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password/",
        auth_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "accounts/password/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("admin/", admin.site.urls),
    path("api/training/", include(training_api_urlpatterns)),
    path("api/", include(api_urlpatterns)),
    path("api/auth/token/", obtain_auth_token, name="api-token"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]
