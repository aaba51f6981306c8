"""`tether run` end to end: real processes, real signals, real sockets on loopback."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tether.worker import WorkerContract

from proc import APPS, free_port, get, run_cli, tether, until_in_flight


@pytest.mark.parametrize("workers", ["0", "1"])
def test_ten_slow_requests_all_complete_after_sigterm(workers: str) -> None:
    """10 concurrent 2 s requests, SIGTERM once all are in flight: all 200, exit 0 (both modes)."""
    with tether("plain:app", "--workers", workers) as t:
        t.ready()
        with ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(get, t.port, "/slow?seconds=2") for _ in range(10)]
            until_in_flight(t, 10)
            t.signal(signal.SIGTERM)
            results = [f.result() for f in futures]
        assert [status for status, _, _ in results] == [200] * 10
        assert t.wait() == 0


@pytest.mark.parametrize("workers", ["0", "1"])
def test_ctrl_c_drains_gracefully(workers: str) -> None:
    """Ctrl-C (SIGINT to the process group) drains in-flight requests once; exit code 0."""
    with tether("plain:app", "--workers", workers) as t:
        t.ready()
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(get, t.port, "/slow?seconds=1") for _ in range(3)]
            until_in_flight(t, 3)
            t.ctrl_c()
            assert [f.result()[0] for f in futures] == [200] * 3
        assert t.wait() == 0
        assert "second SIG" not in t.stderr()


def test_drain_delay_turns_readiness_off_while_still_serving() -> None:
    """With --drain-delay 3, /readyz is 503 once the stop begins while / still answers 200."""
    drain = 3.0
    with tether("plain:app", "--drain-delay", str(drain)) as t:
        t.ready()
        assert get(t.debug_port, "/readyz")[0] == 200
        t.signal(signal.SIGTERM)
        sent = time.monotonic()
        t.wait_for("STOPPING")
        status, body, _ = get(t.debug_port, "/readyz")
        assert status == 503, body
        assert get(t.port, "/")[0] == 200
        # Both answers came inside the drain delay: readiness went off when the stop began,
        # not when the listeners close. (The first look right after STOPPING is the "at once";
        # how long the test takes to make it is the machine's, so the delay leaves it seconds.)
        assert time.monotonic() - sent < drain
        assert t.wait() == 0


def test_second_sigterm_ends_a_hung_drain_at_once() -> None:
    """A drain stuck on a long request ends at a second SIGTERM with exit code 4, naming it."""
    with tether("plain:app", "--graceful-timeout", "60") as t:
        t.ready()
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(get, t.port, "/slow?seconds=120", 60)
            until_in_flight(t, 1)
            t.signal(signal.SIGTERM)
            t.wait_for("STOPPING")
            second = time.monotonic()
            t.signal(signal.SIGTERM)
            assert t.wait(timeout=10) == 4
            assert time.monotonic() - second < 5
            with pytest.raises((http.client.HTTPException, OSError)):
                future.result()
        assert "request 'GET /slow'" in t.stderr()


def test_keep_alive_connection_is_told_to_close_while_draining() -> None:
    """A request on an idle keep-alive connection during the drain gets Connection: close."""
    # The idle grace is what the test takes to send its request after STOPPING: on a loaded
    # machine that is more than the default half second.
    with tether("plain:app", "--graceful-timeout", "30", "--idle-grace", "20") as t:
        t.ready()
        conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=30)
        conn.request("GET", "/")
        first = conn.getresponse()
        first.read()
        assert first.getheader("connection") is None
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(get, t.port, "/slow?seconds=1")
            until_in_flight(t, 1)
            t.signal(signal.SIGTERM)
            t.wait_for("STOPPING")
            conn.request("GET", "/")
            second = conn.getresponse()
            assert second.status == 200
            assert second.read() == b"hello\n"
            assert second.getheader("connection") == "close"
            assert slow.result()[0] == 200
        conn.close()
        assert t.wait() == 0


def test_quit_is_a_fast_stop() -> None:
    """SIGQUIT does not wait for in-flight requests."""
    with tether("plain:app", "--graceful-timeout", "60") as t:
        t.ready()
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(get, t.port, "/slow?seconds=60", 60)
            until_in_flight(t, 1)
            started = time.monotonic()
            t.signal(signal.SIGQUIT)
            assert t.wait(timeout=10) == 4
            assert time.monotonic() - started < 5
            with pytest.raises((http.client.HTTPException, OSError)):
                future.result()


def test_hanging_app_shutdown_exits_by_the_deadline_with_code_4() -> None:
    """An app whose lifespan shutdown hangs is cut at the deadline; the log names it; exit 4."""
    with tether("plain:hanging_shutdown", "--graceful-timeout", "1") as t:
        t.ready()
        started = time.monotonic()
        t.signal(signal.SIGTERM)
        assert t.wait(timeout=15) == 4
        assert time.monotonic() - started < 5
        err = t.stderr()
        assert "lifespan 'lifespan shutdown'" in err
        assert "in _lifespan" in err


def test_failing_lifespan_startup_exits_3_and_releases_the_port() -> None:
    """An app whose startup fails: exit code 3, one clear line, and the port is free again."""
    port = free_port()
    result = run_cli("run", "plain:failing_startup", "--bind", f"127.0.0.1:{port}", "--no-debug")
    assert result.returncode == 3
    assert "tether: error: the app's lifespan startup failed" in result.stderr
    assert "database unreachable" in result.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_wsgi_app_is_served() -> None:
    """A WSGI app is detected and served through a2wsgi."""
    with tether("plain:wsgi_app") as t:
        t.ready()
        assert get(t.port, "/")[:2] == (200, "hello from wsgi\n")
        t.signal(signal.SIGTERM)
        assert t.wait() == 0


def test_factory_is_called() -> None:
    """A zero-argument factory is called to build the app."""
    with tether("plain:create_app") as t:
        t.ready()
        assert get(t.port, "/")[:2] == (200, "hello\n")
        t.signal(signal.SIGINT)
        assert t.wait() == 0


def test_app_with_extra_member_stops_it_with_the_service() -> None:
    """A tether.App's consumer member runs beside HTTP and stops on SIGTERM with the reason."""
    with tether("plain:service") as t:
        t.ready()
        assert get(t.port, "/")[0] == 200
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
        assert t.proc is not None and t.proc.stdout is not None
        assert "consumer stopped: SIGTERM received" in t.proc.stdout.read()


def test_debug_endpoints_answer() -> None:
    """The debug server serves health, readiness, metrics, and task and thread dumps."""
    with tether("plain:app") as t:
        t.ready()
        assert get(t.debug_port, "/healthz")[:2] == (200, "ok\n")
        assert get(t.debug_port, "/readyz")[:2] == (200, "ready\n")
        assert "tether_ready 1.0" in get(t.debug_port, "/metrics")[1]
        tasks = get(t.debug_port, "/debug/tasks")[1]
        assert "service:http" in tasks
        assert "in wait" in tasks
        assert "MainThread" in get(t.debug_port, "/debug/threads")[1]
        t.signal(signal.SIGTERM)
        assert t.wait() == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["nosuchmodule:app"], 3, "cannot import 'nosuchmodule': no such module"),
        (["plain:nothing"], 3, "module 'plain' has no attribute 'nothing'"),
        (["plain:not_an_app"], 3, "is a int, which is neither an ASGI app"),
        (["broken_import:app"], 3, "raised RuntimeError: settings file missing"),
        (["syntax_error:app"], 3, "raised SyntaxError: invalid syntax (syntax_error.py, line 1)"),
        (["plain"], 2, "APP must look like module:attribute"),
        (["plain:app", "--bind", "127.0.0.1:"], 2, "--bind"),
        (["plain:app", "--bind", "localhost:99999"], 2, "--bind"),
        (["plain:app", "--bind", "unix:/no/such/dir/s.sock"], 2, "cannot bind unix:/no/such/dir"),
        (["plain:app", "--graceful-timeout", "-1"], 2, "--graceful-timeout must be a number"),
        (["plain:app", "--graceful-timeout", "soon"], 2, "'soon' is not a valid float"),
        (["plain:app", "--drain-delay", "-3"], 2, "--drain-delay must be a number"),
        (["plain:app", "--drain-delay", "5", "--graceful-timeout", "5"], 2, "leaves no time"),
        (["plain:app", "--idle-grace", "-1"], 2, "--idle-grace must be a number"),
        (["plain:app", "--debug-bind", "0.0.0.0:0"], 2, "pass --debug-token"),
    ],
)
def test_bad_input_gets_one_line_and_exit_code(args: list[str], code: int, message: str) -> None:
    """Each bad input: the documented exit code and one line on stderr that says what to do."""
    port = free_port()
    full = ["run", *args]
    if "--bind" not in args:
        full += ["--bind", f"127.0.0.1:{port}"]
    if "--debug-bind" not in args:
        full += ["--no-debug"]
    result = run_cli(*full)
    assert result.returncode == code, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert any(message in line for line in errors), result.stderr
    assert "<frozen" not in result.stderr  # where the import machinery was is no help


def test_port_in_use_is_refused_with_code_2() -> None:
    """A port already in use: exit code 2 and a hint to pick another port."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("run", "plain:app", "--bind", f"127.0.0.1:{port}", "--no-debug")
    assert result.returncode == 2
    assert "address already in use" in result.stderr


def test_debug_bind_equal_to_app_bind_is_refused() -> None:
    """The debug server cannot share the app's address."""
    port = free_port()
    addr = f"127.0.0.1:{port}"
    result = run_cli("run", "plain:app", "--bind", addr, "--debug-bind", addr)
    assert result.returncode == 2
    assert "is also an app --bind" in result.stderr


def test_nothing_stays_bound_after_a_failed_start(tmp_path: Path) -> None:
    """When the app fails to import, the sockets bound before are released."""
    port, debug_port = free_port(), free_port()
    result = run_cli(
        "run",
        "nosuchmodule:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--debug-bind",
        f"127.0.0.1:{debug_port}",
    )
    assert result.returncode == 3
    for p in (port, debug_port):
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_python_dash_m_tether_shows_help() -> None:
    """`python -m tether run --help` documents every option."""
    result = run_cli("run", "--help")
    assert result.returncode == 0
    for option in ("--bind", "--debug-bind", "--no-debug", "--graceful-timeout", "--drain-delay"):
        assert option in result.stdout
    assert APPS.is_dir()


def test_blocked_event_loop_still_exits_after_the_deadline() -> None:
    """A handler blocking the loop forever: the process still exits, code 4, with thread stacks."""
    with tether("plain:blocking", "--graceful-timeout", "0.5") as t:
        t.ready()
        with ThreadPoolExecutor(1) as pool:
            pool.submit(get, t.port, "/block", 2.0)
            t.wait_for_log("blocking the event loop")
            started = time.monotonic()
            t.signal(signal.SIGTERM)
            assert t.wait(timeout=20) == 4
            assert time.monotonic() - started < 10
        err = t.stderr()
        assert "the event loop does not answer" in err
        assert "time.sleep(3600)" in err


def test_idle_service_uses_no_cpu() -> None:
    """Nothing polls: an idle service spends (almost) no CPU time in a second."""
    with tether("plain:app") as t:
        t.ready()
        assert t.proc is not None
        stat = Path(f"/proc/{t.proc.pid}/stat")

        def ticks() -> int:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])  # utime + stime

        before = ticks()
        time.sleep(1.0)
        assert ticks() - before <= 2  # clock ticks of 10 ms
        t.signal(signal.SIGTERM)
        assert t.wait() == 0


def test_member_failure_stops_the_service_with_exit_code_1() -> None:
    """A member that raises stops the HTTP server too; exit 1 naming the member and the error."""
    with tether("plain:crashing") as t:
        t.ready()
        assert t.wait(timeout=15) == 1
        err = t.stderr()
    assert "ConnectionError: broker went away" in err
    assert "in member 'flaky_consumer'" in err
    assert "Traceback" in err


def test_what_the_app_leaves_running_is_logged_at_exit() -> None:
    """After the group stops, tether logs the task and thread the app left behind."""
    with tether("plain:leaky") as t:
        t.ready()
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
        err = t.stderr()
    assert "the app leaked" in err
    assert "in consume" in err or "consume()" in err
    assert "forgotten-thread" in err
    assert "/dev/null" not in err


def test_parent_death_during_startup_stops_the_process(tmp_path: Path) -> None:
    """A worker whose master dies while the app is still starting exits within seconds."""
    read_end, write_end = os.pipe()
    try:
        port = free_port()
        contract = WorkerContract(
            notify_address=str(tmp_path / "notify.sock"),  # no one listens: the master is gone
            parent_fd=read_end,
            parent_pid=os.getpid(),
            worker_id=1,
            generation=1,
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tether",
                "run",
                "plain:slow_startup",
                "--workers",
                "0",
                "--no-debug",
                "--bind",
                f"127.0.0.1:{port}",
            ],
            cwd=APPS,
            env={**os.environ, **contract.to_env()},
            pass_fds=(read_end,),
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(read_end)
        read_end = -1
        assert proc.stderr is not None
        for line in proc.stderr:  # until the app is in its minute-long startup: the scenario
            if "lifespan startup begins" in line:
                break
        else:
            raise AssertionError(f"exited with {proc.wait()} before the app's startup")
        os.close(write_end)  # the master is gone
        write_end = -1
        started = time.monotonic()
        code = proc.wait(timeout=15)
        assert time.monotonic() - started < 6
        assert code != 0
        assert "the master process exited" in proc.stderr.read()
        proc.stderr.close()
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)


def test_usr1_dumps_thread_stacks_even_when_the_loop_is_blocked() -> None:
    """SIGUSR1 writes every thread's stack while a handler blocks the event loop."""
    with tether("plain:blocking", "--graceful-timeout", "0.5") as t:
        t.ready()
        with ThreadPoolExecutor(1) as pool:
            pool.submit(get, t.port, "/block", 2.0)
            t.wait_for_log("blocking the event loop")
            t.signal(signal.SIGUSR1)
            t.wait_for_log("in blocking")  # the dump, written before the kill
            t.signal(signal.SIGKILL)
            t.wait(timeout=10)
        err = t.stderr()
    assert "Current thread" in err or "Thread 0x" in err
    assert "in blocking" in err


def test_idle_keep_alive_connection_is_closed_after_the_idle_grace() -> None:
    """An idle keep-alive connection is closed about idle-grace after SIGTERM, not at once."""
    with tether("plain:app", "--graceful-timeout", "10") as t:
        t.ready()
        idle = socket.create_connection(("127.0.0.1", t.port), timeout=30)
        idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"hello\n"):  # headers and body may come in two reads
            chunk = idle.recv(4096)
            assert chunk, answer
            answer += chunk
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(get, t.port, "/slow?seconds=5", 30)
            until_in_flight(t, 1)
            signalled = time.monotonic()  # the grace cannot begin before this
            t.signal(signal.SIGTERM)
            t.wait_for("STOPPING")
            stopping = time.monotonic()  # nor after this (STOPPING is sent as the stop begins)
            assert idle.recv(4096) == b""  # the server closed it
            closed = time.monotonic()
            # The default grace is 0.5 s; the slow request holds the drain open for 5 s.
            assert closed - signalled > 0.3
            assert closed - stopping < 3.0
            assert slow.result()[0] == 200
        idle.close()
        assert t.wait() == 0


def test_service_without_http_still_drains_its_background_work() -> None:
    """An App of members only: tether.spawn work started before SIGTERM still finishes."""
    with tether("plain:worker_only", "--no-debug") as t:
        t.ready()
        t.signal(signal.SIGTERM)
        assert t.wait() == 0, t.stderr()
        assert t.proc is not None and t.proc.stdout is not None
        assert "background job finished" in t.proc.stdout.read()


def test_websocket_gets_a_close_frame_when_draining() -> None:
    """An open websocket is closed with code 1012 (service restart) during the drain."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with tether("plain:echo_ws", "--graceful-timeout", "10") as t:
        t.ready()
        with connect(f"ws://127.0.0.1:{t.port}/chat", open_timeout=30) as ws:
            ws.send("ping")
            assert ws.recv(timeout=30) == "ping"
            t.signal(signal.SIGTERM)
            t.wait_for("STOPPING")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1012
        assert t.wait() == 0
