from django.urls import path

from rounds.views import dashboard, live, models, scheduling

app_name = "rounds"
urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("dashboard/series/<int:model_id>.json", dashboard.series, name="dashboard-series"),
    path("rounds/", live.round_list, name="round-list"),
    path("rounds/<int:round_id>/", live.round_detail, name="round-detail"),
    path("rounds/new/", scheduling.round_new, name="round-new"),
    path("rounds/<int:round_id>/cancel/", scheduling.round_cancel, name="round-cancel"),
    path("rounds/series/<uuid:series>/", scheduling.series_detail, name="series-detail"),
    path("rounds/series/<uuid:series>/cancel/", scheduling.series_cancel, name="series-cancel"),
    path("models/", models.model_list, name="model-list"),
    path("models/new/", models.model_create, name="model-create"),
    path(
        "models/new/template/",
        models.model_create_from_template,
        name="model-create-template",
    ),
    path("models/new/upload/", models.model_create_from_upload, name="model-create-upload"),
    path("models/<slug:slug>/", models.model_detail, name="model-detail"),
    path("models/<slug:slug>/settings/", models.model_settings, name="model-settings"),
    path("models/<slug:slug>/versions/", models.version_upload, name="version-upload"),
    path(
        "models/<slug:slug>/versions/<int:number>/weights",
        models.version_download,
        name="version-download",
    ),
]
