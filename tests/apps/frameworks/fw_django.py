"""A one-file Django project, served as ASGI (``fw_django:asgi``) and WSGI (``fw_django:wsgi``).

Views: the version, a slow (async) view, and a counter kept in sqlite
(``$FW_DB``, or a file in the temporary directory).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile

import django
from _marks import mark
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.urls import path

VERSION = "v1"

settings.configure(
    DEBUG=False,
    SECRET_KEY="tests-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("FW_DB")
            or os.path.join(tempfile.gettempdir(), f"fw-django-{os.getpid()}.sqlite3"),
        }
    },
    LOGGING_CONFIG=None,
)
django.setup()


def index(_request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"{VERSION} {os.getpid()}", content_type="text/plain")


async def slow(request: HttpRequest) -> HttpResponse:
    mark("slow-begin")
    seconds = float(request.GET.get("s", "1"))
    await asyncio.sleep(seconds)
    return HttpResponse(f"slept {seconds}", content_type="text/plain")


def hits(_request: HttpRequest) -> HttpResponse:
    """Count a visit in sqlite and answer the total (a view that uses the database)."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS hits (id INTEGER PRIMARY KEY)")
        try:
            cursor.execute("INSERT INTO hits DEFAULT VALUES")
        except django.db.OperationalError as exc:  # pragma: no cover - a busy database
            raise sqlite3.OperationalError(str(exc)) from exc
        cursor.execute("SELECT COUNT(*) FROM hits")
        (count,) = cursor.fetchone()
    return HttpResponse(str(count), content_type="text/plain")


urlpatterns = [path("", index), path("slow", slow), path("hits", hits)]

asgi = ASGIHandler()
wsgi = WSGIHandler()
