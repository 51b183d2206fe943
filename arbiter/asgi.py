"""ASGI entry point: HTTP to Django behind per-route body limits, websockets to the consumers behind session auth."""

from __future__ import annotations

import gc
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arbiter.settings")
# Django must be set up before the consumers (and their models) import; as get_asgi_application() does.
django.setup(set_prefix=False)

from arbiter.asgi_handler import ArbiterASGIHandler  # noqa: E402

# Django's ASGI handler with one thread hop per request (see arbiter.asgi_handler).
django_asgi_app = ArbiterASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import get_resolver  # noqa: E402

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

# What is loaded by now (Django, the apps, every view: the URLconf imports them) lives as long as the
# process. gc.freeze() moves it out of the cyclic collector's sight, so a full collection walks only what
# requests create: before, each one walked ~140,000 start-up objects, ~100 ms of CPU (up to 270 ms on a
# busy machine) during which the whole worker stood still and every request in it waited
# (bench/bench_annotation.py; notes in arbiter.asgi_handler). As Instagram's servers do (gc.freeze).
get_resolver().url_patterns  # noqa: B018  # import the views now, not on the first request
gc.freeze()
