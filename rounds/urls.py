from django.urls import path

from rounds import views

app_name = "rounds"
urlpatterns = [
    path("rounds/", views.round_list, name="round-list"),
    path("rounds/<int:round_id>/", views.round_detail, name="round-detail"),
]
