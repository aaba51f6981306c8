"""tether._runner: a resolved config run to its exit code, without the command line."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether import _runner
from tether.config import DEBUG_TOKEN_ENV, SSL_PASSWORD_ENV, RunConfig
from tether.errors import ConfigError, ShutdownAbandoned, StartupError


def test_the_most_serious_problem_decides_the_exit_code() -> None:
    """Usage beats a failed start, which beats a failure, which beats abandoned work."""
    abandoned, failed = ShutdownAbandoned(), RuntimeError("boom")
    assert _runner.exit_code_for(ExceptionGroup("x", [abandoned, failed])) == 1
    assert _runner.exit_code_for(ExceptionGroup("x", [abandoned])) == 4
    nested = ExceptionGroup("x", [failed, ExceptionGroup("y", [StartupError("no app")])])
    assert _runner.exit_code_for(nested) == 3
    assert _runner.exit_code_for(ExceptionGroup("x", [nested, ConfigError("bad")])) == 2


@pytest.fixture
def own_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The root logger and sys.path as they were: start() sets up this process's logging."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.usefixtures("own_logging")
def test_a_bad_input_found_at_start_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pidfile naming a live process: one `tether: error:` line, code 2, nothing started."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "none"))  # a supervisor: no keeper
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(f"{os.getppid()}\n")  # alive, and not this process
    config = RunConfig(app="hello:app", pidfile=str(pidfile), debug_bind=None)
    assert _runner.start(config) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("tether: error: already running as pid")
    assert pidfile.read_text() == f"{os.getppid()}\n"  # not taken over


def test_forget_secrets_leaves_the_app_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """The debug token and the key's password are gone from the environment."""
    monkeypatch.setenv(DEBUG_TOKEN_ENV, "t")
    monkeypatch.setenv(SSL_PASSWORD_ENV, "p")
    _runner.forget_secrets()
    assert DEBUG_TOKEN_ENV not in os.environ
    assert SSL_PASSWORD_ENV not in os.environ
