"""Adoption: plain ``asyncio.create_task`` inside a request becomes tracked work.

A handler that calls ``asyncio.create_task`` leaves a task nobody owns. The
adoption factory, installed on a loop with :func:`install_adoption`, registers
every task created, directly or transitively, inside a request with a
:class:`~tether.tracker.Tracker`, so existing code is tracked without a change.

How a request is recognised: tether's server hands :data:`REQUESTS` to its
HTTP engine as the set of tasks running requests (uvicorn keeps that set
anyway), so a task created by one of them is a request's; your own code can
mark a block with :func:`request_scope`, which sets :data:`REQUEST_SCOPE`. A
task adopted from a request gets a context in which ``REQUEST_SCOPE`` names
that request, so the tasks it creates are adopted too. Serving a request
costs adoption nothing: a context variable set per request kept enough
objects alive to trigger about a hundred young garbage collections a second
under load (3 µs per FastAPI GET).

What is not adopted: tasks created outside a request (lifespan loops), inside
:func:`no_adoption`, and tasks whose coroutine function belongs to a module
named with :func:`no_adoption_for` (a library's own long-lived loop, which
the user cannot wrap, such as sse-starlette's shutdown watcher).

Invariant: the factory creates exactly the task the loop would have created
without it (through the factory installed before it, if any, which is how it
chains with leak detection's); adoption only adds a registration, and
uninstalling never breaks a chain another factory built on top of it.

The factory is on the path of every ``create_task`` in the process, so it is
one flat function that reaches into the tracker's registration lists directly
(as ``Tracker._start`` does for spawned work), without a method call between.
Everything here is re-exported from :mod:`tether.tracker`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextvars import Context, ContextVar, copy_context
from typing import TYPE_CHECKING, Any

from tether._logsafe import printable_path
from tether._trackertypes import CANCELLING

if TYPE_CHECKING:
    from tether.tracker import Tracker

__all__ = [
    "REQUESTS",
    "REQUEST_SCOPE",
    "Adoption",
    "current_origin",
    "request_of",
    "task_scope",
    "install_adoption",
    "no_adoption",
    "no_adoption_for",
    "origin_label",
    "request_name",
    "request_scope",
]

#: Set inside :func:`request_scope` to its label (``"GET /events"``), and in the
#: context of every task adopted from a request to that request's origin (a
#: label, or the request's ASGI scope, turned into a label only if a report
#: needs one). Tasks copy their creator's context, so every task created,
#: directly or transitively, from there sees it; the adoption factory looks here.
REQUEST_SCOPE: ContextVar[object] = ContextVar("tether_request_scope", default=None)

#: The tasks running a request right now (HTTP or websocket): tether's server
#: gives this set to uvicorn, which adds each request's task and discards it when
#: done. The adoption factory looks here when ``REQUEST_SCOPE`` is not set.
REQUESTS: set[asyncio.Future[Any]] = set()

# False inside no_adoption(): the task at hand may be a request's, but adopts nothing.
_ADOPTING: ContextVar[bool] = ContextVar("tether_adopting", default=True)


def origin_label(origin: object) -> str | None:
    """The value of :data:`REQUEST_SCOPE` as a label for reports ("GET /events")."""
    if origin is None or isinstance(origin, str):
        return origin
    if isinstance(origin, Mapping):
        # The path is the client's: escaped, since the label goes into log lines.
        return f"{origin.get('method', 'WEBSOCKET')} {printable_path(origin.get('path', ''))}"
    return str(origin)


@contextlib.contextmanager
def request_scope(label: str = "a request") -> Iterator[None]:
    """Mark the code inside as handling a request: tasks it creates are adopted."""
    token = REQUEST_SCOPE.set(label)
    try:
        yield
    finally:
        REQUEST_SCOPE.reset(token)


@contextlib.contextmanager
def no_adoption() -> Iterator[None]:
    """Tasks created inside are not adopted, even in a request (for lazily started loops)."""
    token = REQUEST_SCOPE.set(None)
    adopting = _ADOPTING.set(False)
    try:
        yield
    finally:
        _ADOPTING.reset(adopting)
        REQUEST_SCOPE.reset(token)


def current_origin() -> object:
    """The request the running code handles (a label or an ASGI scope), or None."""
    origin = REQUEST_SCOPE.get()
    if origin is None and REQUESTS and _ADOPTING.get():
        task = asyncio.current_task()
        if task in REQUESTS:
            origin = request_of(task)
    return origin


def task_scope(task: asyncio.Future[Any]) -> dict[str, Any] | None:
    """The ASGI scope of a task uvicorn runs a request in, else None.

    The task runs ``run_asgi`` of the request's cycle (HTTP) or of the
    connection's protocol (websocket); either holds the scope. Read only when
    a task is adopted or a report names a request, never per request.
    """
    scope = getattr(task_owner(task), "scope", None)
    return scope if isinstance(scope, dict) and "path" in scope else None


def request_name(task: asyncio.Task[Any]) -> str:
    """``METHOD /path`` for a request's task (``WS /path`` for a websocket), else its name."""
    scope = task_scope(task)
    if scope is not None:
        return f"{scope.get('method', 'WS')} {scope['path']}"
    return task.get_name()


def task_owner(task: asyncio.Future[Any]) -> object:
    """The object whose method the task's coroutine runs (uvicorn's request cycle), or None."""
    get_coro = getattr(task, "get_coro", None)
    frame = getattr(get_coro(), "cr_frame", None) if get_coro is not None else None
    return frame.f_locals.get("self") if frame is not None else None


def request_of(task: asyncio.Future[Any]) -> object:
    """What adoption records as the origin of work a request task creates."""
    return task_scope(task) or "a request"


# Dotted prefixes of the modules whose tasks are never adopted ("pkg." matches pkg.sub too).
_opted_out: tuple[str, ...] = ()


def no_adoption_for(*modules: str) -> None:
    """Never adopt tasks whose coroutine function is defined in ``modules`` or their submodules.

    For library code that starts a long-lived task lazily inside a request and
    cannot be wrapped in :func:`no_adoption`: ``no_adoption_for("sse_starlette")``.
    Process-wide, and adds to the names given before.
    """
    global _opted_out
    for module in modules:
        if not isinstance(module, str) or not module or module.startswith("."):
            msg = f"no_adoption_for() takes module names such as 'sse_starlette', got {module!r}"
            raise ValueError(msg)
    _opted_out = (*_opted_out, *(f"{m}." for m in modules if f"{m}." not in _opted_out))


def _opted_out_module(coro: object) -> bool:
    frame = getattr(coro, "cr_frame", None)
    module = frame.f_globals.get("__name__") if frame is not None else None
    return isinstance(module, str) and f"{module}.".startswith(_opted_out)


TaskFactory = Callable[..., "asyncio.Future[Any]"]


class Adoption:
    """An installed adoption factory; :meth:`uninstall` or leaving ``with`` removes it."""

    def __init__(self, tracker: Tracker, loop: asyncio.AbstractEventLoop) -> None:
        tracker._bind(loop)
        self.tracker = tracker
        self.loop = loop
        self._previous: TaskFactory | None = loop.get_task_factory()
        self._factory, self._disable = _make_factory(tracker, self._previous)
        self._installed = True
        loop.set_task_factory(self._factory)

    def uninstall(self) -> None:
        """Stop adopting; restore the previous factory if ours is still the loop's."""
        if not self._installed:
            return
        self._installed = False
        if self.loop.get_task_factory() is self._factory:
            self.loop.set_task_factory(self._previous)
        else:
            # Another factory was installed on top and chains to ours: keep the chain
            # intact and only stop adopting.
            self._disable()

    def __enter__(self) -> Adoption:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()


def install_adoption(tracker: Tracker, loop: asyncio.AbstractEventLoop | None = None) -> Adoption:
    """Make ``loop`` (default: the running one) adopt request-scope tasks into ``tracker``."""
    return Adoption(tracker, loop if loop is not None else asyncio.get_running_loop())


def _make_factory(
    tracker: Tracker, previous: TaskFactory | None
) -> tuple[TaskFactory, Callable[[], None]]:
    cancelling = CANCELLING
    scope = REQUEST_SCOPE
    current_scope = scope.get
    adopting = _ADOPTING.get
    requests = REQUESTS
    current_task = asyncio.current_task
    origin_of = request_of
    make_task = asyncio.Task
    enabled = True

    # Runs on every create_task in the process, so it is kept flat: outside a request
    # it costs a ContextVar read and a set lookup; inside, the request's scope, a
    # context for the new task (so that what it creates is adopted too) and two list
    # appends (Tracker._settle).
    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any],
        context: Context | None = None,
        **kwargs: Any,
    ) -> asyncio.Future[Any]:
        origin = current_scope() if context is None else context.get(scope)
        if origin is None and requests:
            creator = current_task(loop)
            if (
                creator in requests
                and enabled
                and (adopting() if context is None else context.get(_ADOPTING, True))
                and not (_opted_out and _opted_out_module(coro))
            ):
                origin = origin_of(creator)
                # What the new task creates belongs to the request too.
                context = copy_context() if context is None else context.copy()
                context.run(scope.set, origin)
        if origin is None and previous is None and not kwargs:
            # Not a request's (the server's own task for each request is one of these).
            return make_task(coro, loop=loop, context=context)
        adopt = (
            origin is not None
            and enabled
            and not tracker._spawning  # Tracker._start registers its own task
            and not (_opted_out and _opted_out_module(coro))
        )
        done = None
        if adopt and tracker.observer is not None:  # a span per adopted task (tether._otel)
            name = getattr(coro, "__qualname__", None) or type(coro).__name__
            context, done = tracker.observer(name, origin_label(origin), False, context)
        task: asyncio.Future[Any]
        if previous is None:
            if kwargs:
                task = make_task(coro, loop=loop, context=context, **kwargs)
            else:
                task = make_task(coro, loop=loop, context=context)
        elif context is None and not kwargs:
            task = previous(loop, coro)  # the legacy call, for factories without **kwargs
        else:
            task = previous(loop, coro, context=context, **kwargs)
        if adopt and isinstance(task, asyncio.Task):
            if done is not None:
                task.add_done_callback(done)
            if tracker._phase == cancelling:
                tracker._adopt_late(task, origin)
            else:
                fresh = tracker._fresh
                if not fresh:
                    loop.call_soon(tracker._hop, loop)
                fresh.append(task)
                tracker._fresh_origins.append(origin)
        return task

    def disable() -> None:
        nonlocal enabled
        enabled = False

    return factory, disable
