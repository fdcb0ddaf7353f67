from django.urls import path

from rounds.consumers import RoundProgressConsumer, RoundsOverviewConsumer

websocket_urlpatterns = [
    path("ws/rounds/", RoundsOverviewConsumer.as_asgi()),
    path("ws/rounds/<int:round_id>/", RoundProgressConsumer.as_asgi()),
]
