"""RunConfig: one set of options, validated once, passed to workers whole; ShutdownBudget."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether._configsources import resolve
from tether.cli import run
from tether.config import SSL_PASSWORD_ENV, HttpOptions, RunConfig, ShutdownBudget
from tether.errors import ConfigError
from tether.worker import PARENT_FD_ENV

#: Parameters of `tether run` that are not a RunConfig field of the same name, and why.
CLI_ONLY = {
    "app": "the argument",
    "bind": "with host, port, uds and fd: RunConfig.binds",
    "host": "binds",
    "port": "binds",
    "uds": "binds",
    "fd": "binds",
    "no_debug": "debug_bind=None",
    "debug_token_file": "read into debug_token",
    "print_config": "an action",
    "config": "a source of the others",
    "env": "gunicorn's -e: set in the environment every worker inherits",
    "worker_class": "gunicorn's -k: checked, and may choose http",
}


def resolved(args: list[str]) -> RunConfig:
    ctx = run.make_context("run", list(args))
    with ctx:
        return resolve(ctx, dict(ctx.params)).config


def test_every_option_is_a_field() -> None:
    """Each `tether run` parameter is a RunConfig or HttpOptions field, or a known CLI-only one."""
    fields = {f.name for f in dataclasses.fields(RunConfig)} | {
        f.name for f in dataclasses.fields(HttpOptions)
    }
    names = {p.name for p in run.params if p.name is not None}
    assert names - fields - set(CLI_ONLY) == set()


def everything_changed(tmp_path: Path) -> RunConfig:
    """A config in which every option a worker needs differs from its default."""
    env = tmp_path / "app.env"
    env.write_text("A=1\n")
    log = tmp_path / "log.json"
    log.write_text("{}")
    cert = tmp_path / "cert.pem"
    cert.write_text("")
    http = HttpOptions(
        timeout_keep_alive=75,
        proxy_headers=False,
        forwarded_allow_ips="10.0.0.0/8",
        root_path="/api",
        limit_concurrency=50,
        backlog=128,
        ssl_keyfile=str(cert),
        ssl_certfile=str(cert),
        ssl_version=2,
        ssl_cert_reqs=2,
        ssl_ca_certs=str(cert),
        ssl_ciphers="ECDHE",
        ws="websockets-sansio",
        ws_max_size=1000,
        ws_max_queue=4,
        ws_ping_interval=3.5,
        ws_ping_timeout=4.5,
        ws_per_message_deflate=False,
        headers=(("x-a", "1"), ("x-b", "two words")),
        server_header=False,
        date_header=False,
        http="h11",
        h11_max_incomplete_event_size=4096,
        reset_contextvars=True,
    )
    return RunConfig(
        app="echo:app",
        graceful_timeout=12.5,
        idle_grace=1.5,
        timeout_request_head=3.5,
        interface="wsgi",
        threads=3,
        app_dir=str(tmp_path),
        log_level="debug",
        gc_freeze=False,
        lifespan="on",
        loop="asyncio",
        factory=True,
        env_file=str(env),
        limit_max_requests=10,
        limit_max_requests_jitter=5,
        max_worker_memory=512,
        access_log=False,
        access_logformat="%(h)s %(s)s",
        log_format="json",
        log_config=str(log),
        use_colors=False,
        http=http,
    )


def test_to_argv_carries_every_worker_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker started with to_argv() resolves exactly the config its master had."""
    monkeypatch.setenv(PARENT_FD_ENV, "99")
    monkeypatch.setenv("TETHER_WORKERS", "7")  # never read by a worker
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[tool.tether]\npidfile = "/run/x.pid"\n')
    config = everything_changed(tmp_path)
    argv = config.to_argv(debug_path=str(tmp_path / "w.sock"))
    assert argv[:2] == ["run", "echo:app"]
    worker = resolved(argv[1:])
    master_only = {f.name for f in dataclasses.fields(RunConfig) if not f.metadata.get("worker")}
    for f in dataclasses.fields(RunConfig):
        if f.name not in master_only | {"cancel_timeout", "extra"}:
            assert getattr(worker, f.name) == getattr(config, f.name), f.name
    assert (worker.workers, worker.pidfile, worker.drain_delay) == (0, None, 0.0)
    assert worker.debug_bind == f"unix:{tmp_path / 'w.sock'}"
    # What a forked or prestarted worker is handed instead of parsing: the same, exactly.
    assert config.for_worker(debug_path=str(tmp_path / "w.sock")) == worker
    assert config.for_worker(debug_path=None) == resolved(config.to_argv(debug_path=None)[1:])
    # The key's password never rides on a command line: a worker reads it as its master left it.
    locked = config.replace(http=dataclasses.replace(config.http, ssl_keyfile_password="pw"))
    monkeypatch.setenv(SSL_PASSWORD_ENV, "pw")
    parsed = resolved(locked.to_argv(debug_path=None)[1:])
    assert locked.for_worker(debug_path=None) == parsed
    assert parsed.http.ssl_keyfile_password == "pw"


def test_defaults_of_the_cli_are_the_dataclass_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no options, the CLI resolves RunConfig's defaults (to_argv relies on it)."""
    monkeypatch.chdir(tmp_path)
    for var in ("PORT", "WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS"):
        monkeypatch.delenv(var, raising=False)
    config = resolved(["echo:app"])
    assert config.http == HttpOptions()
    assert config.replace(workers=0) == RunConfig(app="echo:app")
    assert config.to_argv(debug_path=None) == [
        "run", "echo:app", "--workers", "0", "--no-debug", "--drain-delay", "0"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"http": {"timeout_keep_alive": -1}}, "--timeout-keep-alive must be a whole number >= 0"),
        ({"http": {"forwarded_allow_ips": "10.1.2.0/40"}}, "'10.1.2.0/40' is not an IP address"),
        ({"http": {"root_path": "api"}}, "--root-path must start with /"),
        ({"http": {"ssl_keyfile": "/nonexistent"}}, "TLS needs a certificate"),
        ({"http": {"http": "h3"}}, "--http must be one of auto, h11, httptools"),
        ({"lifespan": "maybe"}, "--lifespan must be one of auto, on, off"),
        ({"limit_max_requests": 0}, "--limit-max-requests must be a whole number >= 1"),
        ({"max_worker_memory": 0}, "--max-worker-memory must be a whole number >= 1"),
        ({"access_logformat": "%(zz)s"}, "unknown atom %(zz)s"),
        ({"env_file": "/nonexistent.env"}, "--env-file /nonexistent.env: no such file"),
    ],
)
def test_bad_values_name_the_option(changes: dict[str, Any], message: str) -> None:
    """Each bad value is a ConfigError naming the option and what to give instead."""
    http = changes.pop("http", {})
    with pytest.raises(ConfigError) as err:
        RunConfig(app="m:app", http=HttpOptions(**http), **changes)
    assert message in str(err.value)


def test_header_needs_a_name_and_a_value() -> None:
    """--header without a colon is a usage error that shows the form."""
    with pytest.raises((ConfigError, click.UsageError)) as err:
        resolved(["echo:app", "--header", "x-no-colon"])
    assert "expected NAME:VALUE" in str(err.value)


seconds = st.floats(min_value=0, max_value=3600, allow_nan=False)


@given(graceful=seconds, cancel=seconds)
def test_the_bounds_keep_their_order(graceful: float, cancel: float) -> None:
    """tracker report <= http report grace <= group abandon < hard stop < master kill."""
    b = ShutdownBudget(graceful, cancel)
    assert b.tracker_report <= b.http_report_grace <= b.group_abandon < b.hard_stop
    assert b.hard_stop < b.master_kill
    assert b.deadline(100.0) == 100.0 + graceful


def test_the_budget_comes_from_the_run_config() -> None:
    """--graceful-timeout and the cancel timeout are the only inputs."""
    b = ShutdownBudget.of(RunConfig(app="x:app", graceful_timeout=10, cancel_timeout=2))
    assert (b.graceful, b.cancel, b.hard_stop, b.master_kill) == (10, 2, 5.0, 7.0)
