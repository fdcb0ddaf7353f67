from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from clients.forms import PortalAuthenticationForm
from rounds.views import audit

urlpatterns = [
    path("admin/", admin.site.urls),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(authentication_form=PortalAuthenticationForm),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/", include("clients.api.urls")),
    path("api/v1/", include("rounds.api.urls")),
    path("", include("rounds.urls")),
    path("merchants/", include("clients.urls")),
    path("audit/", audit.audit_log, name="audit-log"),
]

handler403 = "flportal.views.permission_denied"
handler404 = "flportal.views.not_found"
handler500 = "flportal.views.server_error"
