"""Tests for tether.sockets: parse, bind, inherit and pass listening sockets."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from tether.errors import BindError, ConfigError
from tether.sockets import (
    Address,
    bind,
    bound_address,
    inherit,
    is_loopback,
    listen_env,
    parse_address,
    spawn,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", Address("tcp", host="127.0.0.1", port=8080)),
        ("localhost:0", Address("tcp", host="localhost", port=0)),
        ("0.0.0.0:65535", Address("tcp", host="0.0.0.0", port=65535)),
        ("[::1]:8080", Address("tcp", host="::1", port=8080)),
        ("unix:/run/app.sock", Address("unix", path="/run/app.sock")),
        ("unix:rel.sock", Address("unix", path="rel.sock")),
    ],
)
def test_parse_address_accepts_the_three_forms(text: str, expected: Address) -> None:
    """Each documented form parses, and str() gives the same text back."""
    assert parse_address(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "the address is empty"),
        ("127.0.0.1", "the port is missing"),
        ("127.0.0.1:", "the port is missing"),
        (":8080", "the host is empty"),
        ("127.0.0.1:http", "the port 'http' is not a number"),
        ("127.0.0.1:-1", "the port '-1' is not a number"),
        ("127.0.0.1:70000", "the port 70000 is out of range 0-65535"),
        ("::1:8080", "an IPv6 address needs brackets"),
        ("[::1:8080", "the IPv6 address has no closing bracket"),
        ("[::1]", "the port is missing after the closing bracket"),
        ("[]:80", "the host inside the brackets is empty"),
        ("[127.0.0.1]:80", "brackets are only for IPv6 addresses"),
        ("[nothost]:80", "'nothost' is not an IPv6 address"),
        ("unix:", "the unix socket path is empty"),
        (" 127.0.0.1:80", "the address has surrounding spaces"),
    ],
)
def test_parse_address_rejects_malformed_input_with_one_line(text: str, why: str) -> None:
    """A malformed address is a ConfigError naming the flag, the problem and an example."""
    with pytest.raises(ConfigError) as info:
        parse_address(text, flag="--debug-bind")
    message = str(info.value)
    assert message == (
        f"--debug-bind {text!r}: {why}; "
        "for example 127.0.0.1:8080, [::1]:8080 or unix:/run/app.sock"
    )
    assert "\n" not in message


def test_is_loopback_knows_local_addresses() -> None:
    """Loopback v4/v6, localhost and unix sockets are local; others are not."""
    assert is_loopback(parse_address("127.0.0.2:1"))
    assert is_loopback(parse_address("[::1]:1"))
    assert is_loopback(parse_address("localhost:1"))
    assert is_loopback(parse_address("unix:/tmp/x.sock"))
    assert not is_loopback(parse_address("0.0.0.0:1"))
    assert not is_loopback(parse_address("[::]:1"))
    assert not is_loopback(parse_address("example.com:1"))


def test_bind_tcp_listens_and_is_not_inherited() -> None:
    """bind() returns a listening, close-on-exec socket with SO_REUSEADDR."""
    with bind(parse_address("127.0.0.1:0")) as sock:
        assert not sock.get_inheritable()
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        address = bound_address(sock)
        assert address.host == "127.0.0.1" and address.port > 0
        with socket.create_connection(("127.0.0.1", address.port), timeout=5):
            pass


def test_bind_ipv6_is_v6_only() -> None:
    """An IPv6 listener does not also claim the IPv4 port."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sock = bind(parse_address("[::1]:0"))
    except BindError:
        pytest.skip("no IPv6 loopback here")
    with sock:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1


def test_bind_port_in_use_names_the_fix() -> None:
    """Binding a port in use raises BindError with the reason and the flag to change."""
    with bind(parse_address("127.0.0.1:0")) as first:
        port = bound_address(first).port
        with pytest.raises(BindError) as info:
            bind(parse_address(f"127.0.0.1:{port}"))
    assert str(info.value) == (
        f"cannot bind 127.0.0.1:{port}: address already in use; "
        "is another server running? pick another port with --bind"
    )
    assert info.value.address == f"127.0.0.1:{port}"


def test_bind_unix_missing_directory(tmp_path: Path) -> None:
    """A unix socket in a missing directory is refused with a clear message."""
    path = tmp_path / "nope" / "app.sock"
    with pytest.raises(BindError) as info:
        bind(parse_address(f"unix:{path}"))
    assert str(info.value) == (
        f"cannot bind unix:{path}: directory {path.parent} does not exist; "
        "create it first or choose another path with --bind"
    )


def test_bind_unix_replaces_a_stale_socket_file(tmp_path: Path) -> None:
    """A socket file nobody listens on is removed and bound again."""
    path = str(tmp_path / "app.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    with bind(parse_address(f"unix:{path}")) as sock:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
        assert bound_address(sock) == Address("unix", path=path)


def test_bind_unix_refuses_a_live_socket(tmp_path: Path) -> None:
    """A socket file with a live listener is not stolen."""
    path = str(tmp_path / "app.sock")
    with bind(parse_address(f"unix:{path}")), pytest.raises(BindError) as info:
        bind(parse_address(f"unix:{path}"))
    assert "address already in use" in str(info.value)


def test_bind_unix_refuses_a_regular_file(tmp_path: Path) -> None:
    """An existing file that is not a socket is an error, and is left alone."""
    path = tmp_path / "app.sock"
    path.write_text("data")
    with pytest.raises(BindError) as info:
        bind(parse_address(f"unix:{path}"))
    assert "the path exists and is not a socket" in str(info.value)
    assert path.read_text() == "data"


def test_inherit_returns_none_without_variables() -> None:
    """No LISTEN_FDS means nothing was passed."""
    env: dict[str, str] = {}
    assert inherit(env, pid=123) is None


def test_inherit_ignores_foreign_pid_and_cleans_env(caplog: pytest.LogCaptureFixture) -> None:
    """Variables meant for another pid are ignored, logged, and removed."""
    env = {"LISTEN_FDS": "2", "LISTEN_PID": "1", "LISTEN_FDNAMES": "a:b", "KEEP": "1"}
    with caplog.at_level("DEBUG", logger="tether.sockets"):
        assert inherit(env, pid=4242) is None
    assert env == {"KEEP": "1"}
    assert "LISTEN_PID=1 is not this process (4242)" in caplog.text


def test_inherit_rejects_a_malformed_count() -> None:
    """A non-numeric LISTEN_FDS for this process is a configuration error."""
    env = {"LISTEN_FDS": "two", "LISTEN_PID": "77"}
    with pytest.raises(ConfigError, match="LISTEN_FDS='two' is not a count of sockets"):
        inherit(env, pid=77)


def test_listen_env_names_and_orders_the_fds() -> None:
    """listen_env gives the count, names and fds in order."""
    with bind(parse_address("127.0.0.1:0")) as a, bind(parse_address("127.0.0.1:0")) as b:
        env, fds = listen_env([("app", a), ("debug", b)])
        assert env == {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "app:debug"}
        assert fds == [a.fileno(), b.fileno()]
        env, _ = listen_env([("app", a)], pid=99)
        assert env["LISTEN_PID"] == "99"


CHILD = """
import json, os, socket, sys
from tether.sockets import inherit
got = inherit()
extra = int(os.environ["EXTRA_FD"])
report = {
    "pid": os.getpid(),
    "names": [name for name, _ in got or []],
    "fds": [s.fileno() for _, s in got or []],
    "ports": [s.getsockname()[1] for _, s in got or []],
    "left": [k for k in os.environ if k.startswith("LISTEN_")],
    "extra": os.read(extra, 10).decode(),
    "cwd": os.getcwd(),
}
print(json.dumps(report), flush=True)
conn, _ = got[0][1].accept()
conn.sendall(b"hi")
conn.close()
"""


def test_spawn_passes_sockets_on_fd_3_with_the_child_pid(tmp_path: Path) -> None:
    """A spawned child inherits the sockets at fds 3.. with LISTEN_PID = its own pid."""
    with bind(parse_address("127.0.0.1:0")) as a, bind(parse_address("127.0.0.1:0")) as b:
        out_r, out_w = os.pipe()
        extra_r, extra_w = os.pipe()
        os.write(extra_w, b"parent")
        os.close(extra_w)
        env = dict(os.environ, EXTRA_FD="", LISTEN_PID="1", LISTEN_FDS="9")
        try:
            # The child reads the extra fd's number from the environment it is given.
            env["EXTRA_FD"] = "5"
            pid, extra = spawn(
                [sys.executable, "-c", CHILD],
                env=env,
                sockets=[("app", a), ("debug", b)],
                extra_fds=[extra_r],
                stdout=out_w,
                cwd=str(tmp_path),
            )
        finally:
            os.close(out_w)
            os.close(extra_r)
        assert extra == [5]
        with os.fdopen(out_r) as out:
            report = json.loads(out.readline())
        assert report["pid"] == pid
        assert report["names"] == ["app", "debug"]
        assert report["fds"] == [3, 4]
        assert report["ports"] == [a.getsockname()[1], b.getsockname()[1]]
        assert report["left"] == []
        assert report["extra"] == "parent"
        assert report["cwd"] == str(tmp_path)
        with socket.create_connection(a.getsockname(), timeout=10) as client:
            assert client.recv(2) == b"hi"
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
