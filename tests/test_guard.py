"""Connections that never finish a request head: cut after the head deadline, and unable to
lock the liveness probe out of the debug port. Real processes, real sockets on loopback."""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from masterproc import MasterProc, write_app
from tether.debug import DEBUG_HEAD_TIMEOUT

from proc import tether

#: Half a request head: the blank line that ends it never comes.
HALF = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Waiting: "

#: Reads the whole body, slowly sent or not, and answers its length.
UPLOAD_APP = """\
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(size).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""


@dataclass
class Closed:
    """A flood connection the server closed: how long it was open, and what it was told."""

    seconds: float
    said: bytes


@dataclass
class Flood:
    """``n`` connections that each send half a request head; closed ones are opened again.

    Reopening happens once per ``every`` seconds, so that the flood keeps the
    cap full without spinning. Once ``done``, the last ones run into the head
    deadline.
    """

    port: int
    n: int = 40
    every: float = 0.25
    closed: list[Closed] = field(default_factory=list)
    #: Set once the first round has opened all ``n``.
    refilling: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    opened: int = 0

    def run(self, within: float) -> list[tuple[socket.socket, float]]:
        """Flood until ``done``, then wait up to ``within`` s for the server to close the rest.

        Returns the connections the server left open (closed here on the way out).
        """
        sel = selectors.DefaultSelector()
        born: dict[socket.socket, float] = {}
        heard: dict[socket.socket, bytes] = {}

        def open_one() -> None:
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
                s.sendall(HALF)
            except OSError:
                return  # refused or reset at once: counted by the next round's refill
            s.setblocking(False)
            born[s] = time.monotonic()
            heard[s] = b""
            sel.register(s, selectors.EVENT_READ)
            self.opened += 1

        end: float | None = None
        try:
            next_refill = 0.0
            while True:
                now = time.monotonic()
                if self.done.is_set() and end is None:
                    end = now + within
                if end is not None and (now >= end or not born):
                    break
                if end is None and now >= next_refill:
                    for _ in range(self.n - len(born)):
                        open_one()
                    next_refill = now + self.every
                    self.refilling.set()
                for key, _ in sel.select(0.05):
                    s = key.fileobj
                    assert isinstance(s, socket.socket)
                    try:
                        data = s.recv(4096)
                    except OSError:
                        data = b""
                    if data:
                        heard[s] += data
                        continue
                    self.closed.append(Closed(time.monotonic() - born.pop(s), heard.pop(s)))
                    sel.unregister(s)
                    s.close()
            return [(s, time.monotonic() - t) for s, t in born.items()]
        finally:
            for s in born:
                s.close()
            sel.close()


def probe(port: int, timeout: float = 1.0) -> float | None:
    """One liveness probe as the kubelet sends it (a new connection): seconds, or None."""
    began = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(max(0.01, timeout - (time.monotonic() - began)))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 10.1.2.3:8001\r\nConnection: close\r\n\r\n")
            answer = b""
            while b"\r\n\r\nok\n" not in answer:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
    except OSError:
        return None
    took = time.monotonic() - began
    return took if answer.startswith(b"HTTP/1.1 200 ") and took <= timeout else None


def flood_and_probe(
    port: int, probes: int = 25, every: float = 0.25
) -> tuple[list[float | None], Flood, list[tuple[socket.socket, float]]]:
    """40 half heads (kept at 40) while ``probes`` probes go out ``every`` s apart.

    Then the flood stops refilling and its last connections are given the
    head deadline and a margin to be cut. Returns each probe's time (None:
    failed), the flood, and the connections the server never closed.
    """
    flood = Flood(port)
    left: list[tuple[socket.socket, float]] = []

    def flooding() -> None:
        left.extend(flood.run(within=DEBUG_HEAD_TIMEOUT + 2))

    thread = threading.Thread(target=flooding, name="flood")
    thread.start()
    try:
        # The flood is in once its first round has opened all 40.
        assert flood.refilling.wait(10)
        results = []
        for _ in range(probes):
            results.append(probe(port))
            time.sleep(every)
    finally:
        flood.done.set()
        thread.join(DEBUG_HEAD_TIMEOUT + 10)
    return results, flood, left


def check(
    results: list[float | None], flood: Flood, left: list[tuple[socket.socket, float]]
) -> None:
    answered = [r for r in results if r is not None]
    assert len(answered) == len(results), (
        f"{len(answered)} of {len(results)} probes answered within 1 s"
    )
    assert flood.opened >= flood.n
    # Every half head was cut: by the deadline (408), or to make room (closed quietly).
    assert not left, (
        f"{len(left)} half-sent connection(s) still open, for {max(t for _, t in left):.1f}s"
    )
    assert all(c.said == b"" or c.said.startswith(b"HTTP/1.1 408 ") for c in flood.closed)
    late = [c for c in flood.closed if c.said.startswith(b"HTTP/1.1 408 ")]
    assert late, "no connection was cut by the head deadline"
    assert all(DEBUG_HEAD_TIMEOUT - 0.5 <= c.seconds <= DEBUG_HEAD_TIMEOUT + 1.5 for c in late), [
        round(c.seconds, 2) for c in late
    ]


def test_half_sent_heads_cannot_starve_the_masters_liveness_probe(tmp_path: Path) -> None:
    """40 half heads to the master's debug port: 25 of 25 probes answer within 1 s; all cut."""
    write_app(tmp_path, "v1")

    async def scenario() -> None:
        async with MasterProc(tmp_path, workers=1, debug=True) as master:
            await master.wait_for("READY")
            results, flood, left = await asyncio.to_thread(flood_and_probe, master.debug_port)
            check(results, flood, left)
            master.seen_workers.update(await master.worker_pids())
        assert "Traceback" not in master.log(), master.log()

    asyncio.run(scenario())


def test_half_sent_heads_cannot_starve_a_single_process_liveness_probe() -> None:
    """--workers 0, the same flood on its debug server: every probe answers; all are cut."""
    with tether("echo:app") as t:
        t.ready()
        results, flood, left = flood_and_probe(t.debug_port)
        check(results, flood, left)
        assert "Traceback" not in t.output()


def read_until_closed(s: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed (None: not in time)."""
    began = time.monotonic()
    s.settimeout(limit)
    got = b""
    try:
        while chunk := s.recv(4096):
            got += chunk
    except TimeoutError:
        return got, float("inf")
    return got, time.monotonic() - began


def read_answer(s: socket.socket, end: bytes, limit: float = 30.0) -> bytes:
    """What the server sends on a kept-alive connection until it ends with ``end`` (or closes)."""
    s.settimeout(limit)
    got = b""
    while not got.endswith(end) and (chunk := s.recv(4096)):
        got += chunk
    return got


def test_the_app_port_cuts_a_head_that_never_ends_but_not_a_slow_body(tmp_path: Path) -> None:
    """--timeout-request-head 1: half a head gets 408, silence a close; a slow body passes."""
    (tmp_path / "upload.py").write_text(UPLOAD_APP)
    with tether("upload:app", "--app-dir", str(tmp_path), "--timeout-request-head", "1") as t:
        t.ready()
        # The deadline runs from a moment between these two: the lower bound counts from
        # before the connect, the upper from after the send (the test may be slow between).
        opened = time.monotonic()
        with (
            socket.create_connection(("127.0.0.1", t.port)) as half,
            socket.create_connection(("127.0.0.1", t.port)) as silent,
        ):
            half.sendall(b"POST /upload HTTP/1.1\r\nHost: app\r\n")
            said, after = read_until_closed(half, 5)
            assert said.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), said
            assert after <= 2.5, after
            assert time.monotonic() - opened >= 0.8
            said, after = read_until_closed(silent, 5)
            assert said == b""
            assert after <= 2.5, after
        # The head in time, the body over 2.5 s: a slow upload is the app's business.
        with socket.create_connection(("127.0.0.1", t.port)) as slow:
            slow.sendall(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 50\r\n\r\n")
            for _ in range(5):
                time.sleep(0.5)  # the slow client's own pace: the scenario, not a wait
                slow.sendall(b"x" * 10)
            said = read_answer(slow, b"\r\n\r\n50")
            assert said.startswith(b"HTTP/1.1 200 OK\r\n") and said.endswith(b"\r\n\r\n50"), said
        # A keep-alive connection: the next request's head is timed from its first byte.
        with socket.create_connection(("127.0.0.1", t.port)) as again:
            again.sendall(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\n\r\n")
            # The whole answer (its head and body may come in two reads), so none is left over.
            assert read_answer(again, b"\r\n\r\n0").startswith(b"HTTP/1.1 200 OK\r\n")
            began = time.monotonic()
            again.sendall(b"POST /upload HTTP/1.1\r\n")
            said, after = read_until_closed(again, 5)
            assert said.startswith(b"HTTP/1.1 408 "), said
            assert 0.8 <= time.monotonic() - began <= 2.5
        assert "Traceback" not in t.output()
