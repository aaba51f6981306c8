"""Logging under `tether run`: the access log, JSON lines, and a user's logging config."""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from tether._logsafe import printable, printable_path
from tether.logs import TEXT_FORMAT, JsonFormatter, TextFormatter

from proc import Tether, fetch, free_port, running


def serve_and_stop(args: list[str], paths: list[str], **env: str) -> list[str]:
    """Start `tether run ARGS`, GET each path, stop it; its stderr lines."""
    port = free_port()
    with running([*args, "--port", str(port)], **env) as t:
        for path in paths:
            assert fetch(port, path, {"user-agent": "probe/1", "x-req": "r-1"})[0] == 200
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
        return t.stderr().splitlines()


def access_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "tether.access" in line]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_access_log_is_one_line_per_response_with_its_duration(workers: str) -> None:
    """By default each response is logged once, after it, with status, bytes and seconds."""
    lines = serve_and_stop(["echo:app", "--workers", workers], ["/a?x=1", "/slow?seconds=0.3"])
    logged = access_lines(lines)
    assert len(logged) == 2, lines
    first = re.search(
        r'tether\.access: 127\.0\.0\.1 "GET /a\?x=1 HTTP/1\.1" 200 (\d+) ([\d.]+)s$', logged[0]
    )
    assert first is not None, logged[0]
    slow = re.search(r'"GET /slow\?seconds=0.3 HTTP/1.1" 200 \d+ ([\d.]+)s$', logged[1])
    # The loop's timers have millisecond resolution: a 0.3 s sleep may end a hair early.
    assert slow is not None and float(slow.group(1)) >= 0.29


def test_a_failed_request_is_logged_once_with_the_status_sent() -> None:
    """A handler that raises before responding is logged once, as the 500 the client got."""
    port = free_port()
    with running(["echo:app", "--workers", "0", "--port", str(port)]) as t:
        assert fetch(port, "/boom?raise=1")[0] == 500
        assert fetch(port, "/fine")[0] == 200
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
        logged = access_lines(t.stderr().splitlines())
    assert len(logged) == 2
    assert '"GET /boom?raise=1 HTTP/1.1" 500 ' in logged[0]
    assert '"GET /fine HTTP/1.1" 200 ' in logged[1]


def test_a_websocket_is_logged_at_its_handshake() -> None:
    """A websocket gets one access record, 101, when it is accepted."""
    from websockets.sync.client import connect

    port = free_port()
    with running(["echo:app", "--workers", "0", "--port", str(port)]) as t:
        with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            ws.send("hi")
            assert ws.recv(timeout=10) == "hi"
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
        (line,) = access_lines(t.stderr().splitlines())
    assert '"GET /ws HTTP/1.1" 101 ' in line


def test_no_access_log() -> None:
    """--no-access-log: no access records at all, other records as before."""
    lines = serve_and_stop(["echo:app", "--workers", "0", "--no-access-log"], ["/", "/"])
    assert access_lines(lines) == []
    assert any("serving echo:app" in line for line in lines)


def test_access_logformat_with_gunicorn_atoms() -> None:
    """--access-logformat takes gunicorn's atoms, request and response headers included."""
    fmt = "%(m)s %(U)s q=%(q)s %(s)s %(B)s %(H)s ua=%(a)s req=%({x-req}i)s type=%({content-type}o)s"
    lines = serve_and_stop(["echo:app", "--workers", "0", "--access-logformat", fmt], ["/p?k=v"])
    (line,) = access_lines(lines)
    assert re.search(
        r"GET /p q=k=v 200 \d+ HTTP/1.1 ua=probe/1 req=r-1 type=application/json$", line
    ), line


@pytest.mark.parametrize("workers", ["0", "1"])
def test_json_log_format_makes_every_line_an_object(workers: str) -> None:
    """--log-format json: tether's, uvicorn's, the app's and the access records are JSON lines."""
    lines = serve_and_stop(
        ["echo:app", "--workers", workers, "--log-format", "json"], ["/j?log=hi"]
    )
    records = [json.loads(line) for line in lines]  # every line parses
    for record in records:
        assert {"time", "level", "logger", "message", "pid"} <= record.keys()
    by_logger = {r["logger"] for r in records}
    assert {"tether.access", "echo", "tether.runtime"} <= by_logger
    (access,) = [r for r in records if r["logger"] == "tether.access"]
    assert (access["method"], access["path"], access["status"]) == ("GET", "/j", 200)
    assert access["client"].startswith("127.0.0.1:") and access["duration_ms"] >= 0
    app = next(r for r in records if r["logger"] == "echo")
    assert (app["level"], app["message"]) == ("WARNING", "the app says hi")


LOG_CONFIGS: dict[str, str] = {
    "json": json.dumps(
        {
            "version": 1,
            "formatters": {"mine": {"format": "MINE %(levelname)s %(name)s | %(message)s"}},
            "handlers": {"err": {"class": "logging.StreamHandler", "formatter": "mine"}},
            "root": {"handlers": ["err"], "level": "INFO"},
        }
    ),
    "yaml": """\
version: 1
formatters:
  mine: {format: "MINE %(levelname)s %(name)s | %(message)s"}
handlers:
  err: {class: logging.StreamHandler, formatter: mine}
root: {handlers: [err], level: INFO}
""",
    "ini": """\
[loggers]
keys=root
[handlers]
keys=err
[formatters]
keys=mine
[logger_root]
level=INFO
handlers=err
[handler_err]
class=StreamHandler
formatter=mine
args=(sys.stderr,)
[formatter_mine]
format=MINE %(levelname)s %(name)s | %(message)s
""",
}


@pytest.mark.parametrize("kind", sorted(LOG_CONFIGS))
def test_log_config_governs_every_line(kind: str, tmp_path: Path) -> None:
    """--log-config (JSON, YAML or INI): its format is on every line, the access log's too."""
    path = tmp_path / f"logging.{kind}"
    path.write_text(LOG_CONFIGS[kind])
    lines = serve_and_stop(["echo:app", "--workers", "0", "--log-config", str(path)], ["/c?log=x"])
    assert lines and all(line.startswith("MINE ") for line in lines), lines
    assert any(" tether.access | 127.0.0.1 " in line for line in lines)
    assert any(" echo | the app says x" in line for line in lines)


def test_log_config_with_tethers_json_formatter(tmp_path: Path) -> None:
    """A dictConfig may name tether.logs.JsonFormatter; access fields come with it."""
    config: dict[str, Any] = {
        "version": 1,
        "formatters": {"j": {"()": "tether.logs.JsonFormatter"}},
        "handlers": {"err": {"class": "logging.StreamHandler", "formatter": "j"}},
        "loggers": {"tether.access": {"handlers": ["err"], "level": "INFO", "propagate": False}},
    }
    path = tmp_path / "logging.json"
    path.write_text(json.dumps(config))
    lines = serve_and_stop(["echo:app", "--workers", "0", "--log-config", str(path)], ["/q"])
    (line,) = [line for line in lines if line.startswith("{")]
    assert json.loads(line)["path"] == "/q"


def test_a_broken_log_config_is_one_line(tmp_path: Path) -> None:
    """A --log-config that cannot be applied: one line naming the file, exit code 2."""
    path = tmp_path / "logging.ini"
    path.write_text("[loggers]\nkeys=root\n")
    t = Tether(["echo:app", "--log-config", str(path), "--no-debug"]).start()
    try:
        assert t.wait() == 2
        err = t.stderr().strip()
        assert err.startswith(f"tether: error: --log-config {path}:") and "\n" not in err
    finally:
        t.close()


def test_client_text_is_escaped_for_a_log_line() -> None:
    """Control characters become %XX in a path and \\xNN elsewhere; other text is untouched."""
    assert printable_path("/a\r\nb\x1b[1m\x00\x9b/é") == "/a%0D%0Ab%1B[1m%00%C2%9B/é"
    assert printable("ua\x1b]0;t\x07\x7f") == "ua\\x1b]0;t\\x07\\x7f"
    plain = "/just/a/path?x=1"
    assert printable_path(plain) is plain and printable(plain) is plain


def test_text_formatter_keeps_a_message_with_a_newline_on_its_line() -> None:
    """An exception message with CR LF and ESC stays on one escaped line; tracebacks keep theirs."""
    formatter = TextFormatter(TEXT_FORMAT)
    try:
        try:
            raise KeyError("inner\nline")
        except KeyError as inner:
            raise RuntimeError("cannot serve /a\r\n2026-01-01 forged\x1b[31m") from inner
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    text = formatter.format(record)
    assert "RuntimeError: cannot serve /a\\x0d\\x0a2026-01-01 forged\\x1b[31m" in text
    assert "KeyError: 'inner\\nline'" in text  # a repr: escaped by Python already
    assert not any(line.startswith("2026-01-01") for line in text.splitlines())
    assert "\x1b" not in text and "\r" not in text
    assert "Traceback (most recent call last):\n" in text


def test_json_formatter_escapes_what_json_leaves_raw() -> None:
    """DEL and C1 characters are written \\u-escaped; the value decodes back to what was sent."""
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", ("a\x7fb\x9bc\x1bé",), None)
    line = JsonFormatter().format(record)
    assert "\x7f" not in line and "\x9b" not in line and "\x1b" not in line
    assert json.loads(line)["message"] == "a\x7fb\x9bc\x1bé"
