"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flportal.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from flportal.body_limit import BodyLimitMiddleware  # noqa: E402
from rounds.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        # the largest legitimate body is an update; leave room for the rest of the request
        "http": BodyLimitMiddleware(
            django_asgi_app, max_bytes=settings.FLPORTAL_MAX_UPDATE_BYTES + 64 * 1024
        ),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
