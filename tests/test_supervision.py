"""One process's supervisor link (tether._supervision), over real notify sockets and a pipe."""

from __future__ import annotations

import asyncio
import os
import threading

from tether._supervision import Supervision
from tether.errors import AbandonedWork, ShutdownAbandoned
from tether.notify import NotifyMessage, NotifyReceiver
from tether.worker import HANDOFF_ENV, WorkerContract


async def next_message(receiver: NotifyReceiver) -> NotifyMessage:
    """The next notification that arrives (bounded)."""
    return await asyncio.wait_for(receiver.get(), 5.0)


def test_the_addresses_leave_the_environment_and_each_event_is_said_once() -> None:
    """take() empties NOTIFY_SOCKET and the handoff; READY (+predecessor), STOPPING, failure."""

    async def main() -> None:
        async with NotifyReceiver() as systemd, NotifyReceiver() as predecessor:
            environ = {"NOTIFY_SOCKET": systemd.path, HANDOFF_ENV: predecessor.path, "PATH": "/x"}
            link = Supervision(None)
            link.take(environ)
            assert environ == {"PATH": "/x"} and link.supervisor == systemd.path
            assert link.ready("myapp:app", lambda _late: None) is None  # no WATCHDOG_USEC
            ready = await next_message(systemd)
            assert ready.fields["READY"] == "1" and ready.fields["MAINPID"] == str(os.getpid())
            assert ready.fields["STATUS"] == "serving myapp:app"
            assert (await next_message(predecessor)).fields == {"READY": "1"}
            link.stopping("TERM received")
            stopping = await next_message(systemd)
            assert stopping.fields == {"STOPPING": "1", "STATUS": "stopping: TERM received"}
            abandoned = ShutdownAbandoned([AbandonedWork("request", "GET /slow")])
            link.failed(ExceptionGroup("the service ended with problems", [abandoned]))
            link.failed(RuntimeError("the database is gone"))
            failed = await next_message(systemd)  # the abandoned work said nothing
            assert "the database is gone" in failed.fields["STATUS"]
            link.close()

    asyncio.run(main())


def test_a_worker_reports_to_its_master_not_to_systemd() -> None:
    """With a contract, NOTIFY_SOCKET is not this process's: the master's receiver is."""

    async def main() -> None:
        async with NotifyReceiver() as master:
            contract = WorkerContract(master.path, -1, os.getppid(), 3, 2)
            link = Supervision(contract)
            environ = {"NOTIFY_SOCKET": "/run/systemd/notify", **contract.to_env()}
            link.take(environ)
            assert "NOTIFY_SOCKET" not in environ and link.supervisor is None
            link.send("WATCHDOG=1")
            assert (await next_message(master)).fields == {"WATCHDOG": "1"}
            link.close()

    asyncio.run(main())


def test_the_masters_death_is_seen_at_the_pipes_end() -> None:
    """The parent watch calls back once the write end of the master's pipe is closed."""
    read, write = os.pipe()
    gone = threading.Event()
    try:
        contract = WorkerContract("", read, os.getppid(), 1, 1)
        Supervision(contract).watch_parent(gone.set)
        assert not gone.wait(0.1)
        os.close(write)
        assert gone.wait(5.0)
    finally:
        os.close(read)
    for thread in threading.enumerate():
        if thread.name == "tether-parent-watch":
            thread.join(5.0)
