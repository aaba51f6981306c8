"""uvicorn's options under `tether run`: real command lines, real processes, real sockets."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shlex
import socket
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from waiting import eventually

from proc import APPS, Tether, fetch, free_port, get, running


def unix_get(path: str, target: str = "/") -> tuple[int, dict[str, Any]]:
    """GET over a unix socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    conn = http.client.HTTPConnection("localhost")
    conn.sock = sock
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def wait_listening(port: int, proc: subprocess.Popen[str], within: float = 20.0) -> None:
    """Until something accepts on 127.0.0.1:port (or the process has exited)."""

    def accepting() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}: {proc.communicate()[1]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        return False

    eventually(accepting, f"something listening on {port}", within)


# Command lines as deployments write them for uvicorn; {port} and {tmp} are filled in.
UVICORN_LINES = [
    "echo:app --host 127.0.0.1 --port {port} --proxy-headers --forwarded-allow-ips 127.0.0.1 "
    "--timeout-keep-alive 75 --root-path /api --no-server-header --header x-frame-options:DENY "
    "--log-level warning --no-access-log --lifespan on --loop uvloop --http httptools "
    "--ws websockets --limit-concurrency 100 --backlog 256 --timeout-graceful-shutdown 10",
    "echo:create_app --factory --port {port} --env-file {tmp}/.env --interface asgi3 "
    "--ws-max-size 1048576 --ws-ping-interval 5 --ws-ping-timeout 5 "
    "--ws-per-message-deflate false --h11-max-incomplete-event-size 16384 --http h11 "
    "--loop asyncio --date-header --server-header --use-colors --log-level debug "
    "--lifespan auto --no-proxy-headers --limit-max-requests 1000 --app-dir .",
]


@pytest.mark.parametrize("line", range(len(UVICORN_LINES)))
@pytest.mark.parametrize("workers", ["0", "2"])
def test_uvicorn_command_lines_run_unchanged(line: int, workers: str, tmp_path: Path) -> None:
    """A line uvicorn itself serves is served the same by `tether run`, one process or a master."""
    (tmp_path / ".env").write_text("ECHO_SETTING=from-the-env-file\n")
    port = free_port()
    args = shlex.split(UVICORN_LINES[line].format(port=port, tmp=tmp_path))
    uvicorn = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", *args],
        cwd=APPS,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_listening(port, uvicorn)
        expected_status, expected, expected_headers = fetch(port, "/api/x")
    finally:
        uvicorn.terminate()
        uvicorn.communicate(timeout=20)
    with running(args, TETHER_WORKERS=workers) as t:
        status, seen, headers = fetch(port, "/api/x")
        assert status == expected_status == 200
        for key in ("root_path", "path", "scheme", "env"):
            assert seen[key] == expected[key], key
        assert ("server" in headers) == ("server" in expected_headers)
        assert ("date" in headers) == ("date" in expected_headers)
        assert headers.get("x-frame-options") == expected_headers.get("x-frame-options")
        if line == 0:
            assert seen["root_path"] == "/api" and headers["x-frame-options"] == "DENY"
            assert "server" not in headers
        else:
            assert seen["env"] == "from-the-env-file"
            assert headers["server"] == "tether"
        if workers == "2":
            assert t.proc is not None and seen["pid"] != t.proc.pid  # a worker answered
        t.signal(15)
        assert t.wait() == 0


@pytest.mark.parametrize("workers", ["0", "1"])
def test_proxy_headers_are_honoured_from_trusted_peers_only(workers: str) -> None:
    """X-Forwarded-For/-Proto count from a trusted CIDR, not from others, not when switched off."""
    forwarded = {"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https"}
    cases = [
        (["--forwarded-allow-ips", "127.0.0.0/8"], ("203.0.113.7", "https")),
        (["--forwarded-allow-ips", "10.0.0.0/8,192.168.1.1"], ("127.0.0.1", "http")),
        (["--no-proxy-headers", "--forwarded-allow-ips", "*"], ("127.0.0.1", "http")),
    ]
    for extra, (client, scheme) in cases:
        port = free_port()
        args = ["echo:app", "--port", str(port), "--workers", workers, *extra]
        with running(args) as t:
            _, seen, _ = fetch(port, "/", forwarded)
            assert (seen["client"][0], seen["scheme"]) == (client, scheme), extra
            t.signal(15)
            assert t.wait() == 0


def test_forwarded_allow_ips_from_the_environment_and_a_bad_network() -> None:
    """$FORWARDED_ALLOW_IPS is read as uvicorn reads it; a malformed CIDR is one line, exit 2."""
    port = free_port()
    with running(["echo:app", "--port", str(port)], FORWARDED_ALLOW_IPS="127.0.0.1") as t:
        _, seen, _ = fetch(port, "/", {"x-forwarded-for": "198.51.100.1"})
        assert seen["client"][0] == "198.51.100.1"
        t.signal(15)
        assert t.wait() == 0
    bad = Tether(["echo:app", "--forwarded-allow-ips", "10.0.0.0/33"]).start()
    try:
        assert bad.wait() == 2
        err = bad.stderr().strip()
        assert err.count("\n") == 0 and "'10.0.0.0/33' is not an IP address or network" in err
    finally:
        bad.close()


def make_certificate(directory: Path, password: str | None = None) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with openssl."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
            *(["-passout", f"pass:{password}"] if password else ["-noenc"]),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


def https_get(port: int, cert: Path) -> tuple[int, dict[str, Any]]:
    context = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize("workers", ["0", "2"])
def test_tls_is_served(workers: str, tmp_path: Path) -> None:
    """--ssl-certfile/--ssl-keyfile serve https; the key's password reaches workers by env."""
    key, cert = make_certificate(tmp_path, password="s3cret")
    port = free_port()
    args = ["echo:app", "--port", str(port), "--workers", workers]
    args += ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    with running(args, TETHER_SSL_KEYFILE_PASSWORD="s3cret") as t:
        status, seen = https_get(port, cert)
        assert (status, seen["scheme"]) == (200, "https")
        with pytest.raises((http.client.HTTPException, OSError)):
            get(port, "/")  # plain http on the TLS port is refused
        if workers != "0":
            assert t.proc is not None
            ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
            assert "s3cret" not in ps
        t.signal(15)
        assert t.wait() == 0


def test_client_certificates_required(tmp_path: Path) -> None:
    """--ssl-cert-reqs 2 with --ssl-ca-certs: a client without a certificate is refused."""
    key, cert = make_certificate(tmp_path)
    port = free_port()
    args = ["echo:app", "--port", str(port), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    args += ["--ssl-cert-reqs", "2", "--ssl-ca-certs", str(cert), "--ssl-ciphers", "ECDHE+AESGCM"]
    with running(args) as t:
        with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
            https_get(port, cert)
        context = ssl.create_default_context(cafile=str(cert))
        context.load_cert_chain(str(cert), str(key))
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
        conn.close()
        t.signal(15)
        assert t.wait() == 0


def test_keep_alive_beyond_five_seconds() -> None:
    """With --timeout-keep-alive 8, a connection idle for 6 s is still open for the next request."""
    port = free_port()
    with running(["echo:app", "--port", str(port), "--timeout-keep-alive", "8"]) as t:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        first = json.loads(conn.getresponse().read())
        time.sleep(6)  # the idle time is the scenario
        conn.request("GET", "/")
        second = json.loads(conn.getresponse().read())
        assert second["client"] == first["client"]  # same connection: same client port
        conn.close()
        t.signal(15)
        assert t.wait() == 0


def in_flight(debug_port: int) -> float:
    _, text, _ = get(debug_port, "/metrics")
    line = next(x for x in text.splitlines() if x.startswith("tether_http_requests_in_flight "))
    return float(line.split()[1])


def test_limit_concurrency_answers_503() -> None:
    """At --limit-concurrency open connections (its own included), a request is answered 503."""
    port, debug = free_port(), free_port()
    args = ["echo:app", "--port", str(port), "--workers", "0", "--limit-concurrency", "2"]
    with running(args, TETHER_DEBUG_BIND=f"127.0.0.1:{debug}") as t:
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(fetch, port, "/slow?seconds=3")
            eventually(lambda: in_flight(debug) >= 1, "the slow request in flight", 10)
            assert in_flight(debug) == 1
            status, _, _ = fetch(port, "/")
            assert status == 503
            assert slow.result()[0] == 200
        t.signal(15)
        assert t.wait() == 0


def test_limit_max_requests_stops_the_process_gracefully() -> None:
    """With --workers 0 --limit-max-requests 3, the third response is the last; exit code 0."""
    port = free_port()
    args = ["echo:app", "--port", str(port), "--workers", "0", "--limit-max-requests", "3"]
    with running(args) as t:
        assert [fetch(port)[0] for _ in range(3)] == [200, 200, 200]
        assert t.wait(20) == 0
        assert "served 3 requests (--limit-max-requests)" in t.stderr()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_fd_and_uds_are_served(workers: str, tmp_path: Path) -> None:
    """--fd N serves the socket the parent bound; --uds PATH a unix socket (both at once here)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    uds = str(tmp_path / "app.sock")
    env = {**os.environ, "TETHER_DEBUG_BIND": f"127.0.0.1:{free_port()}"}
    args = ["echo:app", "--workers", workers, "--fd", str(listener.fileno()), "--uds", uds]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether", "run", *args],
        cwd=APPS,
        env=env,
        pass_fds=[listener.fileno()],
        stderr=subprocess.PIPE,
        text=True,
    )
    listener.close()  # the child holds its copy
    try:
        wait_listening(port, proc)
        assert fetch(port)[0] == 200
        eventually(lambda: os.path.exists(uds), f"{uds} bound", 10)
        assert unix_get(uds)[0] == 200
        proc.terminate()
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.communicate()


def test_the_scope_has_each_connections_addresses_for_every_family(tmp_path: Path) -> None:
    """IPv4, IPv6 and a unix socket at once: scope client and server are the connection's own.

    tether hands uvicorn the addresses the event loop read at the accept
    (tether._transport.addresses_known); they must be what the sockets say.
    """
    port, port6 = free_port(), free_port()
    uds = str(tmp_path / "app.sock")
    args = ["echo:app", "--workers", "0", "--bind", f"127.0.0.1:{port}"]
    args += ["--bind", f"[::1]:{port6}", "--uds", uds]
    with running(args) as t:
        inet = ((socket.AF_INET, "127.0.0.1", port), (socket.AF_INET6, "::1", port6))
        for family, host, at in inet:
            with socket.socket(family) as sock:
                sock.settimeout(10)
                sock.connect((host, at))
                conn = http.client.HTTPConnection(host)
                conn.sock = sock
                conn.request("GET", "/")
                seen = json.loads(conn.getresponse().read())
                assert seen["client"] == [host, sock.getsockname()[1]], family
                assert seen["server"] == [host, at], family
        _, seen = unix_get(uds)
        assert seen["client"] is None
        assert seen["server"] == [uds, None]
        t.signal(15)
        assert t.wait() == 0


def test_date_header_and_custom_headers() -> None:
    """--no-date-header drops the date; each --header is on every response."""
    port = free_port()
    args = ["echo:app", "--port", str(port), "--no-date-header", "--workers", "0"]
    args += ["--header", "x-one: 1", "--header", "X-Two:two words"]
    with running(args) as t:
        _, _, headers = fetch(port)
        assert "date" not in headers
        assert (headers["x-one"], headers["x-two"], headers["server"]) == (
            "1",
            "two words",
            "tether",
        )
        t.signal(15)
        assert t.wait() == 0


def test_interface_asgi2_and_lifespan_modes() -> None:
    """--interface asgi2 serves an ASGI 2 class; --lifespan off skips a lifespan that would fail."""
    port = free_port()
    with running(["echo:Asgi2App", "--interface", "asgi2", "--port", str(port)]) as t:
        assert fetch(port)[0] == 200
        t.signal(15)
        assert t.wait() == 0
    port = free_port()
    with running(["echo:no_lifespan", "--lifespan", "off", "--port", str(port)]) as t:
        assert fetch(port)[0] == 200
        t.signal(15)
        assert t.wait() == 0
    on = Tether(["echo:no_lifespan", "--lifespan", "on", "--workers", "0", "--no-debug"]).start()
    try:
        assert on.wait() == 3
    finally:
        on.close()


def test_websocket_max_size_is_enforced() -> None:
    """--ws-max-size: a larger message closes the websocket with 1009 (message too big)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    port = free_port()
    with running(["echo:app", "--port", str(port), "--ws-max-size", "1000"]) as t:
        with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            ws.send("small")
            assert ws.recv(timeout=10) == "small"
            ws.send("x" * 5000)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        t.signal(15)
        assert t.wait() == 0


def listen_queue(port: int) -> int:
    """The accept queue's size of the socket listening on 127.0.0.1:port (ss's Send-Q)."""
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[2])


@pytest.mark.parametrize("workers", ["0", "1"])
def test_backlog_sizes_the_accept_queue(workers: str) -> None:
    """--backlog 100 is the listening socket's queue, under a master too (its workers set it)."""
    port = free_port()
    with running(["echo:app", "--port", str(port), "--workers", workers, "--backlog", "100"]) as t:
        assert listen_queue(port) == 100
        t.signal(15)
        assert t.wait() == 0


def test_limit_max_requests_under_a_master_replaces_the_worker() -> None:
    """A worker past --limit-max-requests drains and is replaced; no request fails meanwhile.

    The master keeps the listening socket, so connections wait for the new worker.
    """
    port = free_port()
    args = ["echo:app", "--port", str(port), "--workers", "1", "--limit-max-requests", "3"]
    with running(args) as t:
        # Five requests: the second worker serves one or two, below its own limit.
        answers = [fetch(port) for _ in range(5)]
        assert [status for status, _, _ in answers] == [200] * 5
        pids = [seen["pid"] for _, seen, _ in answers]
        # A connection accepted while the stop begins is still served by the old worker.
        assert pids[0] == pids[2] != pids[-1]
        t.signal(15)
        assert t.wait() == 0
