"""One process hands its listening sockets to a fresh copy of itself (``--workers 0``, HUP).

This is the note's "endless" restart done with the same protocol a master
uses for its workers: the copy receives the sockets through ``LISTEN_FDS``,
imports the app from disk, starts it, and says ``READY=1``. Only then does
this process drain and exit; if the copy exits or is not ready within the
reload timeout it is killed and this process keeps serving, so a broken
deploy never takes the service down.

Invariant: at most one copy is starting at any time, and the sockets never
close in between — the kernel queues connections for whichever process
accepts next.

The copy reports readiness to a private receiver named in
:func:`tether.worker.handoff_env`; ``NOTIFY_SOCKET`` keeps pointing at the
supervisor (systemd) if there is one, so the copy announces itself there as
the new ``MAINPID``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Sequence

from tether._children import describe_exit, start_child
from tether._waits import first
from tether.errors import RuntimeDirError
from tether.notify import NotifyReceiver
from tether.worker import handoff_env

__all__ = ["hand_over"]

logger = logging.getLogger("tether.runtime")


async def hand_over(
    sockets: Sequence[tuple[str, socket.socket]],
    *,
    argv: Sequence[str],
    cwd: str,
    supervisor_notify: str | None,
    ready_within: float,
    extra_env: dict[str, str] | None = None,
) -> int | None:
    """Start ``argv`` with ``sockets``; return its pid once it is ready, else None.

    Error handling: every failure (no private socket, no new process, the copy
    exits, or is not ready in time) is logged with the reason and returns None;
    a copy that started is then killed and reaped.
    """
    try:
        receiver = NotifyReceiver()
    except RuntimeDirError as exc:
        logger.error("reload failed: %s; still serving with this one", exc)  # noqa: TRY400
        return None
    async with receiver:
        env = handoff_env(
            {**os.environ, **(extra_env or {})},
            notify_address=receiver.path,
            supervisor_address=supervisor_notify,
        )
        try:
            child, _ = start_child(
                argv, name="successor", env=env, sockets=sockets, capture_stderr=False, cwd=cwd
            )
        except OSError as exc:  # EMFILE, EAGAIN, ENOMEM: this process goes on serving
            logger.error(  # noqa: TRY400 - the reason is the whole story
                "reload failed: cannot start a new process: %s; still serving with this one", exc
            )
            return None
        logger.info("reload: started pid %d with the listening sockets", child.pid)
        try:
            async with asyncio.timeout(ready_within):
                while True:
                    got = await first(receiver.get(), child.exited)
                    if got[0] == 1:
                        logger.error(
                            "reload failed: the new process %d %s before it was ready; "
                            "still serving with this one",
                            child.pid,
                            describe_exit(child.exited.result()),
                        )
                        return None
                    message = got[1]
                    if message.pid == child.pid and message.fields.get("READY") == "1":
                        child.close()  # it lives on without us
                        return child.pid
        except TimeoutError:
            logger.error(  # noqa: TRY400 - the traceback of a timeout says nothing more
                "reload failed: the new process %d was not ready within %.0fs "
                "(--reload-timeout); killed it, still serving with this one",
                child.pid,
                ready_within,
            )
            child.signal(signal.SIGKILL)
            await child.wait(5.0)
            return None
        except BaseException:
            # We are being cancelled or failing ourselves: never leave a half-started copy.
            child.signal(signal.SIGKILL)
            raise
