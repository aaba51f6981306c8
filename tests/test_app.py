"""What APP can name, and the errors for what it cannot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tether import App, AppLoadError
from tether.app import interface_of, load_app


async def asgi(scope: Any, receive: Any, send: Any) -> None: ...


def wsgi(environ: Any, start_response: Any) -> list[bytes]:
    return []


class AsgiClass:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...


class PlainMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        return self.app(scope, receive, send)


class WsgiClass:
    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        return []


def test_interfaces_are_detected_from_signatures() -> None:
    """ASGI and WSGI callables, functions or instances, are told apart; others are None."""
    assert interface_of(asgi) == "asgi"
    assert interface_of(AsgiClass()) == "asgi"
    assert interface_of(PlainMiddleware(asgi)) == "asgi"
    assert interface_of(wsgi) == "wsgi"
    assert interface_of(WsgiClass()) == "wsgi"
    assert interface_of(42) is None
    assert interface_of(lambda: None) is None


def test_load_app_from_app_dir(tmp_path: Path) -> None:
    """A module in --app-dir is imported and its app wrapped in an App."""
    (tmp_path / "svc_one.py").write_text("async def app(scope, receive, send):\n    pass\n")
    app, kind = load_app("svc_one:app", app_dir=str(tmp_path))
    assert isinstance(app, App)
    assert kind == "asgi"


def test_app_object_with_members_only(tmp_path: Path) -> None:
    """A tether.App without HTTP but with members is valid and has no interface."""
    (tmp_path / "svc_two.py").write_text(
        "import tether\napp = tether.App()\n@app.member\nasync def loop(stop):\n    await stop\n"
    )
    app, kind = load_app("svc_two:app", app_dir=str(tmp_path))
    assert kind is None
    assert list(app.members) == ["loop"]


def test_empty_app_is_refused(tmp_path: Path) -> None:
    """An App with nothing to run is an error that says so."""
    (tmp_path / "svc_three.py").write_text("import tether\napp = tether.App()\n")
    with pytest.raises(AppLoadError, match="no HTTP app and no members"):
        load_app("svc_three:app", app_dir=str(tmp_path))


def test_factory_error_is_reported(tmp_path: Path) -> None:
    """A factory that raises is an AppLoadError naming it."""
    (tmp_path / "svc_four.py").write_text("def make():\n    raise KeyError('DB_URL')\n")
    with pytest.raises(AppLoadError, match="the app factory 'svc_four:make' raised KeyError"):
        load_app("svc_four:make", app_dir=str(tmp_path))


def test_duplicate_member_names_are_refused() -> None:
    """Two members with one name would be ambiguous in reports."""
    app = App()

    @app.member
    async def work(stop: Any) -> None: ...

    with pytest.raises(ValueError, match="already has a member named 'work'"):
        app.member(work)
