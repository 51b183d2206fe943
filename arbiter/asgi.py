"""ASGI entry point: HTTP to Django behind per-route body limits, websockets to the consumers behind session auth."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arbiter.settings")
# Django must be set up before the consumers (and their models) import.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from arbiter.request_limits import BodyLimitMiddleware  # noqa: E402
from arbiter.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        # In front of Django's handler, which reads (and spools to disk) a whole body before any view runs.
        "http": BodyLimitMiddleware(
            django_asgi_app,
            limits=settings.REQUEST_BODY_LIMITS,
            default=settings.REQUEST_BODY_MAX_BYTES,
            anonymous=settings.FILE_UPLOAD_MAX_MEMORY_SIZE,
        ),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
