from django.urls import path

from rounds.views import live

app_name = "rounds"
urlpatterns = [
    path("rounds/", live.round_list, name="round-list"),
    path("rounds/<int:round_id>/", live.round_detail, name="round-detail"),
]
