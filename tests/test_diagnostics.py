"""What the log tells an operator: abandoned members' stacks, blocked loops, OOM kills, and
client bytes that never reach a log line raw."""

from __future__ import annotations

import json
import re
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from waiting import eventually

from proc import get, tether


@pytest.mark.parametrize("workers", ["0", "1"])
def test_member_cancelled_at_the_deadline_is_reported_with_its_stack(workers: str) -> None:
    """A member still running at the deadline is logged with the function it was blocked in."""
    with tether("diag:stuck", "--workers", workers, "--graceful-timeout", "0.3") as t:
        t.ready()
        t.signal(signal.SIGTERM)
        assert t.wait() == 4
        err = t.stderr()
    report = err[err.index("abandoned at the deadline: member 'deaf_consumer'") :]
    assert "in deaf_consumer" in report, err
    assert "in wait_for_the_queue" in report, err


#: A path that, written decoded, would end the line, forge a record, colour the terminal,
#: and carry a NUL and a C1 escape (CSI, U+009B).
FORGING = (
    "%0d%0a2026-01-01%2000:00:00,000%20[1]%20INFO%20tether.access:%20FORGED"
    "%1b[31mred%00nul%c2%9bcsi"
)
RAW_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def raw_request(port: int, request: bytes) -> bytes:
    """Send ``request`` as is on a new connection; the whole answer (the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


@pytest.mark.parametrize(
    ("log_format", "http"), [("text", "h11"), ("json", "h11"), ("text", "httptools")]
)
def test_client_control_characters_never_reach_a_log_line_raw(log_format: str, http: str) -> None:
    """Decoded CR LF, ESC, NUL, C1 in a path or header: no raw byte, no forged line, any format."""
    fmt = '%(h)s "%(r)s" %(s)s "%(a)s" %({x-probe}i)s'
    args = ("--http", http, "--log-format", log_format, "--access-logformat", fmt)
    # h11 lets an ESC through in a header value (httptools answers 400 to it).
    headers = (
        b"User-Agent: ev\x1b[2Jil\r\nX-Probe: p\x1b]0;title\x07q\r\n" if http == "h11" else b""
    )
    with tether("diag:hostile", *args, debug=False) as t:
        t.ready()
        for path, status in (("/a", b"200"), ("/fail", b"500"), ("/spawn", b"200")):
            answer = raw_request(
                t.port,
                f"GET {path}{FORGING} HTTP/1.1\r\nHost: x\r\n".encode()
                + headers
                + b"Connection: close\r\n\r\n",
            )
            assert answer.startswith(b"HTTP/1.1 " + status), answer
        eventually(lambda: "tracked task 'doomed'" in t.output(), "the failed task's log line")
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
        err = t.stderr()
    assert not RAW_CONTROLS.search(err.replace("\t", " ")), repr(err)
    lines = err.splitlines()
    if log_format == "json":
        records = [json.loads(line) for line in lines]  # one object per line: none split
        access = [r for r in records if r["logger"] == "tether.access"]
        assert len(access) == 3, err
        assert access[0]["path"].startswith("/a\r\n2026-01-01")  # the field keeps what was sent
        failure = next(r for r in records if r["logger"] == "uvicorn.error" and "exc_info" in r)
        assert "cannot serve /fail\r\n2026-01-01" in failure["exc_info"]
        texts = [r["message"] for r in records]
    else:
        texts = lines
    forged = [line for line in texts if "FORGED" in line]
    # Each request's lines keep the forgery inside them, escaped, never at a line's start.
    assert forged and all(("%0D%0A2026" in x or "\\x0d\\x0a2026" in x) for x in forged), forged
    assert not any(line.startswith("2026-01-01") for line in lines)
    access_lines = [x for x in texts if x.count('"GET /') and "FORGED" in x]
    assert len(access_lines) == 3, texts
    assert all("%1B[31mred%00nul%C2%9Bcsi" in x for x in access_lines), access_lines
    if http == "h11":
        assert all('"ev\\x1b[2Jil" p\\x1b]0;title\\x07q' in x for x in access_lines), access_lines
    if log_format == "text":  # the app's exception message, on its own line
        assert any("cannot serve /fail\\x0d\\x0a2026-01-01" in x for x in texts), err
    assert any("(started by GET /spawn%0D%0A2026-01-01" in x for x in texts), err


def test_a_blocked_loop_is_logged_with_its_stack_while_it_is_blocked(tmp_path: Path) -> None:
    """A handler blocking the loop: one line naming it while blocked, one when it ends."""
    flag = tmp_path / "release"
    with tether("diag:blocking_handler", "--blocked-loop-threshold", "0.3", debug=False) as t:
        t.ready()
        with ThreadPoolExecutor(1) as pool:
            # Neither the client nor the handler gives up on a slow, shared machine: the
            # loop stays blocked until the flag exists, whenever the line comes.
            answer = pool.submit(get, t.port, f"/crunch?flag={flag}&limit=120", timeout=150)
            line = eventually(
                lambda: next((x for x in t.output().splitlines() if "loop blocked" in x), None),
                "the blocked-loop line",
            )
            assert not answer.done()  # written while the handler still blocks the loop
            report = t.output()[t.output().index(line) :]
            assert "in crunch_until" in report, report
            assert "in blocking_handler" in report, report
            flag.touch()
            assert answer.result(timeout=30)[0] == 200
        unblocked = eventually(
            lambda: [x for x in t.output().splitlines() if "event loop unblocked" in x],
            "the unblocked line",
        )
        assert len(unblocked) == 1
        assert get(t.port, "/")[0] == 200
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
        err = t.stderr()
    assert err.count("loop blocked for") == 1, err  # one line per episode, however long
    seconds = re.search(r"event loop blocked for (\d+\.\d+)s so far", line)
    assert seconds is not None and float(seconds[1]) >= 0.3, line
