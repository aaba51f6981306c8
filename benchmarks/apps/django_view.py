"""A Django view as an ASGI app, configured in one file (what `startproject` spreads over five)."""

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="benchmark-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
    USE_TZ=True,
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402


async def hello(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"hello": "world", "path": request.path})


urlpatterns = [path("", hello)]
app = get_asgi_application()
