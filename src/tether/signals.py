"""Every signal tether handles, in one table; each becomes a method call on the event loop.

The table (:data:`SIGNALS`) is the one place that says what a signal means.
A row names the signal and the action it asks for in each mode: ``master``
(the master of ``--workers N``), ``single`` (``--workers 0``) and ``worker``
(a master's worker); no action means the mode leaves the signal alone,
:data:`IGNORE` that the mode ignores it. Each mode's handler object (the
master, the :class:`~tether.runtime.Service`) has one method
``handle_<action>(signum)`` per action its column names, and :func:`install`
puts the column in place around the mode's run. Adding a signal is one row
here and, for a new action, one method; what else depends on the table reads
it: the signals ``tether run`` holds while it starts
(:data:`HELD_WHILE_STARTING`), the ones that begin a stop (:data:`STOPPING`),
the one a master forwards for a dump (:func:`signum_for`). The keeper of
:mod:`tether._init` passes every signal on, these included.

Invariant: a mode's handlers are exactly its column of the table, each row's
action has its method (:func:`install` raises before installing anything
when one is missing), and the previous handlers come back when the block
ends.

We install handlers with ``signal.signal`` rather than
``loop.add_signal_handler`` for two reasons: the previous Python-level
handlers can be restored exactly when the runtime returns, and the handler
runs in the main thread even while the event loop is stuck in blocking code,
so the ``immediate`` hook (for example arming a last-resort timer) still
fires. The callback proper always runs on the loop, via
``call_soon_threadsafe``.
"""

from __future__ import annotations

import contextlib
import signal
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "HELD_WHILE_STARTING",
    "IGNORE",
    "MODES",
    "SIGNALS",
    "STOPPING",
    "Mode",
    "Signal",
    "handle_signals",
    "defer_stops",
    "install",
    "signum_for",
    "signums",
]

Handler = Callable[[int], None]
#: The process models: a master, a ``--workers 0`` process, a master's worker.
Mode = Literal["master", "single", "worker"]
MODES: tuple[Mode, ...] = ("master", "single", "worker")
#: The action that sets ``SIG_IGN`` for the mode while installed (no method).
IGNORE = "ignore"
#: Actions that begin a stop: they arm the last-resort timer from the handler itself.
_STOP_ACTIONS = frozenset({"stop", "fast_stop"})


@dataclass(frozen=True)
class Signal:
    """One signal: the action it asks for in each mode (None: left alone), and what it does."""

    signum: signal.Signals
    master: str | None = None
    single: str | None = None
    worker: str | None = None
    #: What it does, for a reader of this table (docs/deploy.md says it to users).
    doc: str = ""

    @property
    def name(self) -> str:
        """The name operators use: ``TERM`` for ``SIGTERM``."""
        return self.signum.name.removeprefix("SIG")

    def action(self, mode: Mode) -> str | None:
        """What this signal asks of a process in ``mode``."""
        action: str | None = getattr(self, mode)
        return action

    @property
    def stops(self) -> bool:
        """Whether it begins a stop in some mode."""
        return any(self.action(mode) in _STOP_ACTIONS for mode in MODES)


#: Every signal tether handles. docs/deploy.md's signal table lists each row (a test checks).
SIGNALS: tuple[Signal, ...] = (
    Signal(
        signal.SIGTERM,
        master="stop",
        single="stop",
        worker="stop",
        doc="graceful stop; a second one cancels what is left",
    ),
    Signal(
        signal.SIGINT,
        master="stop",
        single="stop",
        # Ctrl-C reaches the whole process group; the master turns it into one TERM for
        # its workers. A worker that took the INT too would take that TERM as a second one.
        worker=IGNORE,
        doc="as TERM; a master's worker ignores it (its master sends it TERM)",
    ),
    Signal(
        signal.SIGQUIT,
        master="fast_stop",
        single="fast_stop",
        worker="fast_stop",
        doc="fast stop: cancel what is left at once",
    ),
    Signal(
        signal.SIGHUP,
        master="reload",
        single="reload",
        worker="reload",  # says in the log that reloads of a worker are its master's job
        doc="reload: a new generation, or with --workers 0 a fresh copy of the process",
    ),
    Signal(
        signal.SIGUSR2,
        master="upgrade",
        single="reload",
        worker="reload",
        doc="upgrade the master itself; with --workers 0 as HUP",
    ),
    Signal(signal.SIGTTIN, master="add_worker", doc="one worker more"),
    Signal(signal.SIGTTOU, master="remove_worker", doc="one worker fewer"),
    Signal(
        signal.SIGUSR1,
        master="dump",
        single="dump",
        worker="dump",
        doc="task and thread stacks to the log; a master asks every worker for theirs",
    ),
    Signal(
        signal.SIGCONT,  # tether.worker.RESUME_SIGNAL, what the master sends
        worker="resume",
        doc="the master to a worker waiting for its successor: none could start; serve on",
    ),
)

#: Signals that begin a stop in some mode.
STOPPING = frozenset(row.signum for row in SIGNALS if row.stops)
#: Signals whose default action neither ends nor suspends a process.
_HARMLESS_BY_DEFAULT = frozenset({signal.SIGCHLD, signal.SIGCONT, signal.SIGURG, signal.SIGWINCH})
#: What ``tether run`` ignores until a mode installs its handlers: every signal of the
#: table whose default action would end (or suspend) a process that is still starting,
#: but a stop (a TERM while the app imports ends the process, as it should).
HELD_WHILE_STARTING = tuple(
    row.signum for row in SIGNALS if not row.stops and row.signum not in _HARMLESS_BY_DEFAULT
)


def signums(mode: Mode, action: str) -> tuple[signal.Signals, ...]:
    """Every signal that asks ``action`` of a process in ``mode``."""
    return tuple(row.signum for row in SIGNALS if row.action(mode) == action)


def signum_for(mode: Mode, action: str) -> signal.Signals:
    """The signal to send a process in ``mode`` for ``action`` (the first row that asks it)."""
    for signum in signums(mode, action):
        return signum
    msg = f"no signal asks {action!r} of a {mode} process; add a row to tether.signals.SIGNALS"
    raise LookupError(msg)


@contextlib.contextmanager
def install(
    loop: asyncio.AbstractEventLoop,
    handler: object,
    mode: Mode,
    *,
    immediate: Handler | None = None,
    owner: object = None,
) -> Iterator[None]:
    """Install ``mode``'s column of :data:`SIGNALS` on ``handler`` while the block runs.

    Each row's action calls ``handler.handle_<action>(signum)`` on ``loop``;
    :data:`IGNORE` sets ``SIG_IGN``. ``immediate`` and ``owner`` are as in
    :func:`handle_signals`.

    Error handling: a row whose action ``handler`` has no method for raises
    :exc:`TypeError` before any handler is installed.
    """
    calls: dict[int, Handler] = {}
    ignored: list[int] = []
    for row in SIGNALS:
        action = row.action(mode)
        if action == IGNORE:
            ignored.append(row.signum)
        elif action is not None:
            method = getattr(handler, f"handle_{action}", None)
            if not callable(method):
                msg = (
                    f"{type(handler).__name__} has no handle_{action}(signum), which "
                    f"{row.name} asks of a {mode} process (tether.signals.SIGNALS)"
                )
                raise TypeError(msg)
            calls[row.signum] = method
    previous: dict[int, Any] = {}
    try:
        for signum in ignored:
            previous[signum] = signal.signal(signum, signal.SIG_IGN)
        with handle_signals(loop, calls, immediate=immediate, owner=owner):
            _replay_deferred()
            yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


#: Stop signals kept by :func:`defer_stops` until the next :func:`install`; None: not deferring.
_deferred: list[int] | None = None


def defer_stops() -> None:
    """From now until :func:`install`, a stop signal is kept and then delivered, not fatal.

    For a master between its opening and its event loop: its first workers may
    be serving already (tether._prestart), so a TERM must drain them as it
    would a moment later, not end the master with the default action. Once
    replayed, the signals act as by default again outside a mode's block.
    """
    global _deferred
    _deferred = []
    for signum in STOPPING:
        signal.signal(signum, _defer)


def _defer(signum: int, _frame: FrameType | None) -> None:
    if _deferred is not None:
        _deferred.append(signum)
        return
    signal.signal(signum, signal.SIG_DFL)  # replayed already: what it would have done
    signal.raise_signal(signum)


def _replay_deferred() -> None:
    global _deferred
    pending, _deferred = _deferred or [], None
    for signum in pending:
        signal.raise_signal(signum)


@contextlib.contextmanager
def handle_signals(
    loop: asyncio.AbstractEventLoop,
    handlers: Mapping[int, Handler],
    *,
    immediate: Handler | None = None,
    owner: object = None,
) -> Iterator[None]:
    """Route each signal in ``handlers`` to its callback on ``loop`` while the block runs.

    ``immediate``, when given, is called synchronously in the signal handler
    itself, before the loop sees the signal; it must be short and thread-safe.
    ``owner``, when given, is the object the installed handler is a method of
    (``signal.getsignal(sig).__self__``): libraries written for uvicorn look
    there for its server's ``should_exit``.
    """

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if immediate is not None:
            immediate(signum)
        with contextlib.suppress(RuntimeError):  # the loop has just closed
            loop.call_soon_threadsafe(handlers[signum], signum)

    def bound(_owner: object, signum: int, frame: FrameType | None) -> None:
        on_signal(signum, frame)

    installed: Any = on_signal if owner is None else types.MethodType(bound, owner)
    previous: dict[int, Any] = {}
    try:
        for signum in handlers:
            previous[signum] = signal.signal(signum, installed)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
