"""What ``tether run APP`` can run, and how ``module:attr`` becomes it.

``APP`` may name an ASGI app, a WSGI app (hosted through a2wsgi), a
:class:`App` that declares an HTTP app and other members (a queue consumer, a
scheduler), or a factory: a callable with no required parameters that returns
one of those. Whatever it names is turned into an :class:`App` here, so the
runtime has one shape to run. Every failure is an
:class:`~tether.errors.AppLoadError` whose message says what was found and
what was expected.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Literal

from tether.errors import AppLoadError
from tether.group import Member

__all__ = ["App", "load_app"]

Kind = Literal["asgi", "wsgi"]


class App:
    """A service made of an optional HTTP app and any number of other members.

    ::

        app = tether.App(http=my_asgi_app)

        @app.member
        async def consume(stop: tether.StopToken) -> None:
            while not stop.is_set():
                ...

    Members run in the same :class:`~tether.Group` as the HTTP server and the
    debug server: when any of them exits, all stop.
    """

    def __init__(
        self,
        http: Any = None,
        *,
        members: dict[str, Member] | None = None,
        interface: Literal["auto", "asgi", "wsgi"] = "auto",
    ) -> None:
        self.http = http
        self.interface = interface
        self.members: dict[str, Member] = dict(members or {})

    def member(self, fn: Member) -> Member:
        """Decorator: add ``fn`` as a member, named after the function."""
        name = getattr(fn, "__name__", f"member-{len(self.members) + 1}")
        if name in self.members:
            msg = f"this App already has a member named {name!r}"
            raise ValueError(msg)
        self.members[name] = fn
        return fn


def interface_of(obj: Any) -> Kind | None:
    """ "asgi" or "wsgi" from how many positional arguments the callable takes, else None.

    ASGI apps take ``(scope, receive, send)``, WSGI apps ``(environ,
    start_response)``; counting is enough, and also recognises ASGI
    middleware written as a plain method that returns the inner app's
    coroutine.
    """
    if not callable(obj):
        return None
    call = obj if inspect.isfunction(obj) or inspect.ismethod(obj) else type(obj).__call__
    try:
        params = [
            p
            for p in inspect.signature(call).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
        ]
    except (TypeError, ValueError):
        return None
    if len(params) == 3:
        return "asgi"
    if len(params) == 2:
        return "wsgi"
    return None


def _is_factory(obj: Any) -> bool:
    if not callable(obj) or isinstance(obj, type):
        return False
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in sig.parameters.values()
    )


def _import(target: str, app_dir: str) -> Any:
    module_name, _, attr = target.partition(":")
    path = str(Path(app_dir).resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppLoadError(
                target,
                f"cannot import {module_name!r}: no such module in {path}; "
                "check the APP argument, or point --app-dir at the directory holding it",
            ) from exc
        raise AppLoadError(target, _failed_import(module_name, exc)) from exc
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise AppLoadError(target, _failed_import(module_name, exc)) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(
                target,
                f"module {module_name!r} has no attribute {attr!r}; "
                "name the app object after the colon, for example main:app",
            ) from None
    return obj


_IMPORTLIB = os.path.dirname(importlib.__file__) + os.sep


def _in_import_machinery(filename: str) -> bool:
    return filename.startswith(("<frozen ", _IMPORTLIB)) or filename == __file__


def _failed_import(module_name: str, exc: BaseException) -> str:
    # The last frame of the app's own code, not of the import machinery; a SyntaxError
    # has none (it names its file and line in its message).
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    last = [f for f in frames if not _in_import_machinery(f.filename)][-1:]
    where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
    return f"importing {module_name!r} raised {type(exc).__name__}: {exc}{where}"


def load_app(
    target: str,
    *,
    app_dir: str = ".",
    interface: Literal["auto", "asgi", "wsgi"] = "auto",
    factory: bool = False,
) -> tuple[App, Kind | None]:
    """Import ``module:attr`` and return it as an :class:`App`, with its HTTP interface.

    A factory is recognised by its signature; ``factory=True`` (``--factory``)
    calls ``attr`` whatever its signature looks like.
    """
    obj = _import(target, app_dir)
    if factory and not callable(obj):
        raise AppLoadError(target, f"--factory: {target!r} is not callable; drop --factory")
    if factory or (not isinstance(obj, App) and interface_of(obj) is None and _is_factory(obj)):
        try:
            obj = obj()
        except Exception as exc:
            raise AppLoadError(
                target, f"the app factory {target!r} raised {type(exc).__name__}: {exc}"
            ) from exc
    app = obj if isinstance(obj, App) else App(http=obj, interface=interface)
    if app.http is None:
        if not app.members:
            raise AppLoadError(target, f"{target!r} is an App with no HTTP app and no members")
        return app, None
    chosen = app.interface if interface == "auto" else interface
    kind = interface_of(app.http) if chosen == "auto" else chosen
    if kind is None:
        raise AppLoadError(
            target,
            f"{target!r} is a {type(app.http).__name__}, which is neither an ASGI app "
            "(async (scope, receive, send)), a WSGI app ((environ, start_response)), "
            "nor a tether.App; point APP at one of those, or pass --interface",
        )
    return app, kind
