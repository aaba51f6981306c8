"""gunicorn's command line and gunicorn.conf.py under `tether run`: real processes, loopback only.

Each config file is written here as a gunicorn user writes it (untyped, gunicorn's
names), and run by a real `tether run -c FILE`; hooks report by appending to a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from waiting import eventually

from proc import APPS, Tether, fetch, free_port, get, run_cli

#: A config with every hook tether calls, each appending what it saw to $HOOK_LOG.
HOOKS_CONF = """\
import json
import os
import sys

workers = 2
timeout = 20
keepalive = 7
worker_class = "uvicorn.workers.UvicornWorker"
raw_env = ["FROM_RAW_ENV=yes"]
proc_name = "svc"


def _log(name, **fields):
    with open(os.environ["HOOK_LOG"], "a") as f:
        f.write(json.dumps({"hook": name, "pid": os.getpid(), **fields}) + "\\n")


def on_starting(server):
    _log("on_starting", server_pid=server.pid)


def when_ready(server):
    _log("when_ready", bind=server.cfg.bind)


def pre_fork(server, worker):
    _log("pre_fork", worker_pid=worker.pid, age=worker.age)


def post_fork(server, worker):
    server.log.info("Worker spawned (pid: %s)", worker.pid)
    _log("post_fork", worker_pid=worker.pid, server_pid=server.pid, app="hooked" in sys.modules)


def post_worker_init(worker):
    _log("post_worker_init", worker_pid=worker.pid, app="hooked" in sys.modules)


def pre_request(worker, req):
    _log("pre_request", path=req.path, method=req.method)


def post_request(worker, req, environ, resp):
    _log("post_request", path=req.path, status=resp.status_code, method=environ["REQUEST_METHOD"])


def child_exit(server, worker):
    _log("child_exit", worker_pid=worker.pid)


def worker_exit(server, worker):
    _log("worker_exit", worker_pid=worker.pid)


def on_reload(server):
    _log("on_reload")


def on_exit(server):
    _log("on_exit")
"""

#: ddtrace's documented way under gunicorn: import the tracer's bootstrap in post_worker_init.
DDTRACE_STYLE_CONF = """\
def post_worker_init(worker):
    import tracing_boot  # noqa: F401  (ddtrace: import ddtrace.bootstrap.sitecustomize)
"""

#: prometheus_client's documented gunicorn config, as written.
PROMETHEUS_CONF = """\
from prometheus_client import multiprocess


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This test's environment without the TETHER_ variables of whoever runs the suite."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    for var in ("PORT", "WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS"):
        base.pop(var, None)
    return {**base, **extra}


@contextlib.contextmanager
def started(*args: str, **env: str) -> Iterator[Tether]:
    """`tether run ARGS` on a free debug port, ready; killed at the end if still alive."""
    t = Tether([*args, "--debug-bind", f"127.0.0.1:{free_port()}"], env=env)
    t.start()
    try:
        t.ready()
        yield t
    finally:
        t.close()


def hook_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def named(lines: list[dict[str, Any]], hook: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["hook"] == hook]


def run_here(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`tether run ARGS` to completion in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "tether", "run", *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# -- the command line -------------------------------------------------------------------


def test_gunicorn_bind_forms_and_short_flags_mean_what_they_mean_in_gunicorn(
    tmp_path: Path,
) -> None:
    """-b HOST is HOST:8000, -b :PORT every address; -w -t -p -e -k -c are tether's options."""
    (tmp_path / "t.toml").write_text("threads = 3\n")
    out = run_here(
        tmp_path,
        "echo:app",
        "-b",
        "127.0.0.1",
        "-b",
        ":9123",
        "-b",
        "unix:///run/x.sock",
        "-w",
        "3",
        "-t",
        "12",
        "-p",
        "x.pid",
        "-e",
        "A=1",
        "-k",
        "uvicorn.workers.UvicornH11Worker",
        "-c",
        "t.toml",
        "--print-config",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert (
        'bind = ["127.0.0.1:8000", "0.0.0.0:9123", "unix:/run/x.sock"]  # --bind: command line'
        in lines
    )
    assert "workers = 3  # command line" in lines
    assert "watchdog-timeout = 12.0  # command line" in lines
    assert 'pidfile = "x.pid"  # command line' in lines
    assert 'env = ["A=1"]  # command line' in lines
    assert 'http = "h11"  # --worker-class' in lines
    assert "threads = 3  # --config t.toml" in lines


def test_bind_colon_port_serves_every_address_and_e_reaches_the_app(tmp_path: Path) -> None:
    """`-b :PORT -w 2 -e NAME=VALUE -p PIDFILE`: served on 0.0.0.0, env in the app, master's pid."""
    port = free_port()
    pidfile = tmp_path / "m.pid"
    with started(
        "hooked:app", "-b", f":{port}", "-w", "2", "-e", "FROM_RAW_ENV=yes", "-p", str(pidfile)
    ) as t:
        assert t.proc is not None
        status, data, _ = fetch(port, "/")
        assert status == 200
        assert data["raw_env"] == "yes"
        assert data["pid"] != t.proc.pid  # a worker answered
        assert pidfile.read_text().strip() == str(t.proc.pid)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            assert conn.getsockname()[0] == "127.0.0.1"
        # 0.0.0.0: the wildcard address holds the port, so no other socket can bind it.
        probe = socket.socket()
        with probe, pytest.raises(OSError, match="in use"):
            probe.bind(("0.0.0.0", port))
        t.signal(signal.SIGTERM)
        assert t.wait() == 0


@pytest.mark.parametrize(
    ("flag", "says"),
    [
        (["-D"], "-D is gunicorn's: tether does not daemonize; run it under systemd"),
        (["--preload"], "--preload is gunicorn's: tether's workers import the app themselves"),
        (["--user", "nobody"], "--user is gunicorn's: tether does not switch users"),
        (["--keep-alive", "5"], "--keep-alive is gunicorn's: use --timeout-keep-alive S"),
        (["-k", "gevent"], "worker class 'gevent': tether does not monkey-patch"),
    ],
)
def test_gunicorn_flag_tether_has_not_is_one_line_and_exit_2(flag: list[str], says: str) -> None:
    """A gunicorn flag with no tether equivalent: exit 2 and one line saying what tether does."""
    out = run_cli("run", "echo:app", *flag)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert says in lines[0]


def test_ws_library_not_installed_refuses_to_start() -> None:
    """--ws wsproto without wsproto installed: one line, exit 2, before anything binds."""
    pytest.importorskip("websockets")
    if __import__("importlib.util").util.find_spec("wsproto") is not None:
        pytest.skip("wsproto is installed here")
    port = free_port()
    out = run_cli("run", "echo:app", "--ws", "wsproto", "--bind", f"127.0.0.1:{port}")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "tether: error: --ws wsproto: the wsproto package is not installed; "
        "`pip install wsproto`, or use --ws auto (whichever is installed) or --ws none"
    )


def _log_package(tmp_path: Path, filter_path: str) -> Path:
    """An app whose package holds a logging filter, and a dictConfig naming ``filter_path``."""
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "logs.py").write_text(
        "import logging\n\n\nclass Tagged(logging.Filter):\n"
        "    def filter(self, record):\n        record.tag = 'shop'\n        return True\n"
    )
    (tmp_path / "shopapp.py").write_text((APPS / "plain.py").read_text())
    config = {
        "version": 1,
        "filters": {"tag": {"()": filter_path}},
        "formatters": {"f": {"format": "%(tag)s|%(name)s|%(message)s"}},
        "handlers": {"h": {"class": "logging.StreamHandler", "filters": ["tag"], "formatter": "f"}},
        "root": {"handlers": ["h"], "level": "INFO"},
    }
    path = tmp_path / "logging.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("workers", ["0", "1"])
def test_log_config_with_a_filter_from_the_app_package(tmp_path: Path, workers: str) -> None:
    """--log-config naming a filter in the app's own package works, in master and workers."""
    log_config = _log_package(tmp_path, "shop.logs.Tagged")
    port = free_port()
    args = ["shopapp:app", "--app-dir", str(tmp_path), "--log-config", str(log_config)]
    with started(*args, "--workers", workers, "--bind", f"127.0.0.1:{port}") as t:
        assert get(port, "/")[0] == 200
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
        err = t.stderr()
    assert "shop|tether.runtime|serving shopapp:app" in err
    if workers == "1":
        assert "shop|tether.master|" in err


def test_log_config_whose_module_is_missing_shows_the_real_cause(tmp_path: Path) -> None:
    """A filter whose module does not exist: exit 2, and the line says what was not found."""
    log_config = _log_package(tmp_path, "shop.nothere.Tagged")
    out = run_cli("run", "shopapp:app", "--app-dir", str(tmp_path), "--log-config", str(log_config))
    assert out.returncode == 2
    assert "Unable to configure filter 'tag'" in out.stderr
    assert "shop.nothere" in out.stderr or "'nothere'" in out.stderr


# -- gunicorn.conf.py ---------------------------------------------------------------------


def test_config_file_settings_under_gunicorn_names_with_file_and_line(tmp_path: Path) -> None:
    """gunicorn.conf.py's settings become tether's options; --print-config names file and line."""
    (tmp_path / "gunicorn.conf.py").write_text(
        "import multiprocessing\n"
        "bind = ['127.0.0.1', ':9000']\n"
        "workers = 2\n"
        "timeout = 45\n"
        "keepalive = 9\n"
        "max_requests = 1000\n"
        "max_requests_jitter = 50\n"
        "graceful_timeout = 20\n"
        "loglevel = 'WARNING'\n"
        "wsgi_app = 'echo:create_app()'\n"
        "proc_name = 'shop'\n"
        "daemon = False\n"
        "accesslog = '-'\n"
    )
    out = run_here(tmp_path, "-c", "gunicorn.conf.py", "--print-config", "-w", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert 'app = "echo:create_app"  # gunicorn.conf.py:10 (wsgi_app)' in lines
    assert "factory = true  # gunicorn.conf.py:10 (wsgi_app)" in lines
    assert 'bind = ["127.0.0.1:8000", "0.0.0.0:9000"]  # --bind: gunicorn.conf.py:2 (bind)' in lines
    assert "workers = 3  # command line" in lines
    assert "watchdog-timeout = 45.0  # gunicorn.conf.py:4 (timeout)" in lines
    assert "timeout-keep-alive = 9  # gunicorn.conf.py:5 (keepalive)" in lines
    assert "max-requests = 1000  # gunicorn.conf.py:6 (max_requests)" in lines
    assert "max-requests-jitter = 50  # gunicorn.conf.py:7 (max_requests_jitter)" in lines
    assert "graceful-timeout = 20.0  # gunicorn.conf.py:8 (graceful_timeout)" in lines
    assert 'log-level = "warning"  # gunicorn.conf.py:9 (loglevel)' in lines
    assert out.stderr.strip() == (
        "tether: note: gunicorn.conf.py:11: proc_name: tether does not set process titles; ignored"
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("workers = 2\nbind = [\n", "gunicorn.conf.py:2: '[' was never closed; fix the file"),
        (
            "import os\nworkers = int(os.environ['NOPE_X'])\n",
            "gunicorn.conf.py:2: KeyError: 'NOPE_X'",
        ),
        (
            "workers = 'four'\n",
            "gunicorn.conf.py:1: workers = 'four': 'four' is not a valid integer",
        ),
        ("user = 'nobody-else-x'\n", "gunicorn.conf.py:1: user = 'nobody-else-x': tether does not"),
        ("daemon = True\n", "gunicorn.conf.py:1: daemon = True: tether does not daemonize"),
        ("worker_class = 'gevent'\n", "gunicorn.conf.py:1: worker class 'gevent'"),
        (
            "def child_exit(worker):\n    pass\n",
            "gunicorn.conf.py:1: child_exit must take (server, worker)",
        ),
        ("def ssl_context(c, f):\n    pass\n", "gunicorn.conf.py:1: ssl_context: tether builds"),
    ],
)
def test_config_file_errors_name_file_and_line_exit_2(tmp_path: Path, text: str, says: str) -> None:
    """A config that does not run, a value or hook tether cannot take: one line, exit 2."""
    (tmp_path / "gunicorn.conf.py").write_text(text)
    out = run_here(tmp_path, "echo:app", "-c", "gunicorn.conf.py")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("tether: error: gunicorn.conf.py:")
    assert says in lines[0]


def test_python_module_config(tmp_path: Path) -> None:
    """-c python:MODULE reads the config from an importable module."""
    (tmp_path / "deploy_conf.py").write_text("workers = 5\n")
    out = run_here(tmp_path, "echo:app", "-c", "python:deploy_conf", "--print-config")
    assert out.returncode == 0, out.stderr
    assert "workers = 5  # python:deploy_conf:1 (workers)" in out.stdout.splitlines()


def test_every_hook_runs_where_its_moment_is_under_a_master(tmp_path: Path) -> None:
    """Master hooks in the master, worker hooks in each worker, in gunicorn's order; HUP, TERM."""
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(HOOKS_CONF)
    log = tmp_path / "hooks.log"
    port = free_port()
    with started("hooked:app", "-c", str(conf), "-b", f"127.0.0.1:{port}", HOOK_LOG=str(log)) as t:
        assert t.proc is not None
        master = t.proc.pid
        status, data, _ = fetch(port, "/first")
        assert (status, data["raw_env"]) == (200, "yes")  # raw_env reached the workers
        first = {line["worker_pid"] for line in named(hook_lines(log), "post_worker_init")}
        t.signal(signal.SIGHUP)
        eventually(
            lambda: len(named(hook_lines(log), "child_exit")) == 2, "the old generation's exits"
        )
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
        assert "Worker spawned (pid:" in t.stderr()
    lines = hook_lines(log)
    order = [line["hook"] for line in lines]
    assert order[:2] == ["on_starting", "when_ready"]
    assert order[-1] == "on_exit"
    assert named(lines, "when_ready")[0]["bind"] == [f"127.0.0.1:{port}"]
    for hook in ("on_starting", "when_ready", "pre_fork", "child_exit", "on_reload", "on_exit"):
        assert {line["pid"] for line in named(lines, hook)} == {master}, hook
    forks = named(lines, "post_fork")
    workers = {line["pid"] for line in forks}
    assert len(workers) == 4 and master not in workers  # two generations of two
    assert all(line["worker_pid"] == line["pid"] and line["server_pid"] == master for line in forks)
    assert not any(line["app"] for line in forks)  # post_fork: before the app is imported
    inits = named(lines, "post_worker_init")
    assert {line["pid"] for line in inits} == workers and all(line["app"] for line in inits)
    assert [line["age"] for line in named(lines, "pre_fork")] == [1, 2, 3, 4]
    assert all(line["worker_pid"] is None for line in named(lines, "pre_fork"))
    assert {line["worker_pid"] for line in named(lines, "worker_exit")} == workers
    assert {line["worker_pid"] for line in named(lines, "child_exit")} == workers
    assert len(named(lines, "on_reload")) == 1
    # the first generation's exits come after the reload began, and before the second's
    exits = [line["worker_pid"] for line in named(lines, "child_exit")]
    assert set(exits[:2]) == first
    pre, post = named(lines, "pre_request"), named(lines, "post_request")
    assert [(p["path"], p["method"]) for p in pre] == [("/first", "GET")]
    assert [(p["path"], p["status"], p["method"]) for p in post] == [("/first", 200, "GET")]
    assert pre[0]["pid"] == data["pid"] == post[0]["pid"]


def test_hooks_in_one_process(tmp_path: Path) -> None:
    """--workers 0: server and worker are one process; every hook but pre_fork/child_exit runs."""
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(HOOKS_CONF)
    log = tmp_path / "hooks.log"
    port = free_port()
    args = ["hooked:app", "-c", str(conf), "-w", "0", "-b", f"127.0.0.1:{port}"]
    with started(*args, HOOK_LOG=str(log)) as t:
        assert t.proc is not None
        assert fetch(port, "/")[0] == 200
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
        pid = t.proc.pid
    lines = hook_lines(log)
    assert [line["hook"] for line in lines] == [
        "on_starting",
        "when_ready",
        "post_fork",
        "post_worker_init",
        "pre_request",
        "post_request",
        "worker_exit",
        "on_exit",
    ]
    assert {line["pid"] for line in lines} == {pid}


def test_a_failing_post_fork_fails_the_start_exit_3(tmp_path: Path) -> None:
    """post_fork that raises: the worker does not start; exit 3 with the hook named."""
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("def post_fork(server, worker):\n    raise RuntimeError('no tracer')\n")
    out = run_here(
        APPS, "echo:app", "-c", str(conf), "-w", "0", "--no-debug", "-b", f"127.0.0.1:{free_port()}"
    )
    assert out.returncode == 3
    assert "hook post_fork in" in out.stderr
    assert "raised RuntimeError: no tracer" in out.stderr


def test_ddtrace_style_post_worker_init_patches_each_worker(tmp_path: Path) -> None:
    """post_worker_init importing a tracer bootstrap: it patches each worker, never the master."""
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(DDTRACE_STYLE_CONF)
    boot = tmp_path / "boot.log"
    port = free_port()
    args = ["hooked:app", "-c", str(conf), "-w", "2", "-b", f"127.0.0.1:{port}"]
    with started(*args, BOOT_LOG=str(boot)) as t:
        assert t.proc is not None
        answers = [fetch(port, "/")[1] for _ in range(6)]
        booted = {int(pid) for pid in boot.read_text().split()}
        assert len(booted) == 2 and t.proc.pid not in booted
        assert {a["pid"] for a in answers} <= booted
        # the patch counts json.dumps calls: a worker's second answer has seen its first
        assert all(a["dumps_calls"] is not None for a in answers)
        assert max(a["dumps_calls"] for a in answers) >= 1
        t.signal(signal.SIGTERM)
        assert t.wait() == 0


def test_prometheus_child_exit_config_removes_a_dead_workers_live_gauges(tmp_path: Path) -> None:
    """prometheus_client's child_exit config, as written: a reloaded worker's live files go."""
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(PROMETHEUS_CONF)
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    port = free_port()
    args = ["prom_live:app", "-c", str(conf), "-w", "1", "-b", f"127.0.0.1:{port}"]
    with started(*args, PROMETHEUS_MULTIPROC_DIR=str(metrics)) as t:
        status, body, _ = get(port, "/")
        assert status == 200
        old = int(body)
        live = metrics / f"gauge_livesum_{old}.db"
        assert live.exists()
        t.signal(signal.SIGHUP)
        eventually(lambda: not live.exists(), "the old worker's live gauge file removed")
        status, body, _ = get(port, "/")
        assert status == 200 and int(body) != old
        assert (metrics / f"gauge_livesum_{int(body)}.db").exists()
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
    assert not list(metrics.glob("gauge_livesum_*.db"))


def test_nworkers_changed_and_worker_int(tmp_path: Path) -> None:
    """nworkers_changed at start and on TTIN, in the master; worker_int in each worker on QUIT."""
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "import json, os\n\n\n"
        "def _log(*fields):\n"
        "    with open(os.environ['HOOK_LOG'], 'a') as f:\n"
        "        f.write(json.dumps([os.getpid(), *fields]) + '\\n')\n\n\n"
        "def nworkers_changed(server, new_value, old_value):\n"
        "    _log('nworkers_changed', new_value, old_value)\n\n\n"
        "def post_worker_init(worker):\n"
        "    _log('post_worker_init')\n\n\n"
        "def worker_int(worker):\n"
        "    _log('worker_int')\n"
    )
    log = tmp_path / "hooks.log"

    def lines() -> list[list[Any]]:
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    port = free_port()
    with started(
        "hooked:app", "-c", str(conf), "-w", "1", "-b", f"127.0.0.1:{port}", HOOK_LOG=str(log)
    ) as t:
        assert t.proc is not None
        master = t.proc.pid
        t.signal(signal.SIGTTIN)
        # READY, not just post_worker_init: a QUIT before its signal handlers would kill it.
        ready = re.compile(r"worker 2 \(pid \d+, generation 1\) ready in")
        eventually(lambda: ready.search(t.output()), "the second worker READY")
        t.signal(signal.SIGQUIT)
        t.wait()
    seen = lines()
    assert [x for x in seen if x[1] == "nworkers_changed"] == [
        [master, "nworkers_changed", 1, None],
        [master, "nworkers_changed", 2, 1],
    ]
    workers = {x[0] for x in seen if x[1] == "post_worker_init"}
    assert {x[0] for x in seen if x[1] == "worker_int"} == workers
