from django.urls import path

from rounds.consumers import RoundProgressConsumer

websocket_urlpatterns = [
    path("ws/rounds/<int:round_id>/", RoundProgressConsumer.as_asgi()),
]
