"""`tether run` under a real init as PID 1 (`docker run --init`, `ENTRYPOINT ["tini", "--"]`).

Each test starts `unshare --pid --fork --mount-proc INIT -- tether run ...`:
tini or dumb-init is PID 1 of a fresh PID namespace, as in a container, and
watches the one process it started; when that process exits, the init exits
and the kernel kills everything left in the namespace. Nothing gives tether a
``NOTIFY_SOCKET`` (a container does not), so nobody follows ``MAINPID=``.

Every reload and upgrade, in every mode, must keep the container up with no
failed request: the pid the init started stays the service's for its whole
life, and a TERM to the init still stops the service cleanly. A shell is
such a watcher too: Ctrl-Z must stop the pid it waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadclient import Load
from waiting import eventually

from proc import Tether, free_port, get, on_a_terminal

INITS = {"tini": ("tini", "--"), "dumb-init": ("dumb-init",)}

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("unshare") is None,
        reason="a PID namespace needs root and unshare(1)",
    ),
    pytest.mark.skipif(
        not all(shutil.which(argv[0]) for argv in INITS.values()),
        reason="tini and dumb-init are needed (Debian packages tini, dumb-init: make pytest)",
    ),
]

#: What a serving process logs once READY: its pid (in the namespace) is the last number.
SINGLE_SERVING = re.compile(r"serving family:app on \S+ \(pid (\d+)\)")
MASTER_SERVING = re.compile(r"master (\d+): serving family:app on ")
KEEPER_FOLLOWS = re.compile(r"keeper: pid (\d+) is now the main process")
#: Bounded traffic: how many requests each scenario serves after its last handover.
AFTER = 200


@dataclass
class UnderInit:
    """A `tether run family:app` started by an init that is PID 1 of its own namespace."""

    t: Tether
    serving: re.Pattern[str]

    def servers(self) -> list[int]:
        """Every pid that has said it serves, in order (the namespace's numbers)."""
        return [int(m) for m in self.serving.findall(self.t.output())]

    def mains(self) -> list[int]:
        """Every pid the keeper has followed as the service's main process."""
        return [int(m) for m in KEEPER_FOLLOWS.findall(self.t.output())]

    def wait_servers(self, count: int, within: float = 30.0) -> list[int]:
        """Wait until ``count`` processes have served, the last as the main; the init must live."""

        def enough() -> list[int] | None:
            assert self.t.proc is not None
            if self.t.proc.poll() is not None:
                tail = self.t.output()[-3000:]
                msg = f"the init exited with {self.t.proc.returncode}; the log ends:\n{tail}"
                raise AssertionError(msg)
            found = self.servers()
            if len(found) < count:
                return None
            # A successor is the main process once the keeper says so: signals go to it.
            return found if count == 1 or found[-1] in self.mains() else None

        return eventually(enough, f"{count} serving processes", within)

    def kill_init(self, sig: int) -> None:
        """What `docker kill -s SIG` does: the signal goes to PID 1, the init."""
        assert self.t.proc is not None
        os.kill(_child_of(self.t.proc.pid), sig)

    def alive(self) -> bool:
        """Whether the init (and so the container) is still there."""
        return self.t.proc is not None and self.t.proc.poll() is None


def _child_of(parent: int) -> int:
    """The host's pid of ``parent``'s only child (unshare's: the init)."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
                if int(stat[stat.rfind(b")") + 2 :].split()[1]) == parent:
                    return int(name)
    raise AssertionError(f"{parent} has no child")


@contextlib.contextmanager
def under_init(init: str, *extra: str, **env: str) -> Iterator[UnderInit]:
    """A serving `tether run family:app EXTRA` under ``init`` as PID 1, without NOTIFY_SOCKET."""
    t = Tether([], env=env)
    # `env -u` execs tether itself: the init's child is tether, as in an image's ENTRYPOINT.
    t.prefix = ["unshare", "--pid", "--fork", "--mount-proc", *INITS[init]]
    t.prefix += ["env", "-u", "NOTIFY_SOCKET"]
    t.args = ["family:app", "--bind", f"127.0.0.1:{t.port}"]
    t.args += ["--debug-bind", f"127.0.0.1:{t.debug_port}", "--no-access-log", *extra]
    master = "--workers" in extra and extra[extra.index("--workers") + 1] != "0"
    u = UnderInit(t, MASTER_SERVING if master else SINGLE_SERVING)
    t.start()
    try:
        u.wait_servers(1)
        yield u
    finally:
        t.close()


def served_pid(u: UnderInit) -> int:
    status, body, _ = get(u.t.port, "/pid")
    assert status == 200, body
    return int(body)


def handovers_under_load(
    u: UnderInit, trigger: Callable[[], None] | None, handovers: int
) -> tuple[int, int, list[str]]:
    """Keep-alive load while ``trigger`` (or the load itself) causes ``handovers``; (ok, failed)."""

    async def scenario() -> tuple[int, int, list[str]]:
        async with Load(u.t.port, connections=8) as load:
            for n in range(handovers):
                if trigger is not None:
                    trigger()
                await asyncio.to_thread(u.wait_servers, n + 2)
            before = load.stats.ok
            while load.stats.ok < before + AFTER and u.alive():
                await asyncio.sleep(0.01)
        return load.stats.ok, load.stats.failed, load.stats.errors

    return asyncio.run(scenario())


def stops_cleanly(u: UnderInit) -> None:
    """TERM to the init reaches the service, which drains; everything exits 0."""
    u.kill_init(signal.SIGTERM)
    assert u.t.wait() == 0, u.t.stderr()


INIT_NAMES = list(INITS)


@pytest.mark.parametrize("init", INIT_NAMES)
@pytest.mark.parametrize("signame", ["SIGHUP", "SIGUSR2"])
def test_one_process_reloads_keep_the_container_up(init: str, signame: str) -> None:
    """`--workers 0`, HUP or USR2 twice under load: the init lives, 0 failures, a new pid serves."""
    with under_init(init, "--workers", "0") as u:
        first = served_pid(u)
        ok, failed, errors = handovers_under_load(
            u, lambda: u.kill_init(getattr(signal, signame)), handovers=2
        )
        assert u.alive(), u.t.stderr()
        assert failed == 0, errors
        assert ok > AFTER
        now = served_pid(u)
        assert now != first and now == u.servers()[-1]
        stops_cleanly(u)


@pytest.mark.parametrize("init", INIT_NAMES)
def test_one_process_max_requests_keeps_the_container_up(init: str) -> None:
    """`--workers 0 --max-requests 20` under load: three recycles, the init lives, 0 failures."""
    with under_init(init, "--workers", "0", "--max-requests", "20") as u:
        first = served_pid(u)
        ok, failed, errors = handovers_under_load(u, None, handovers=3)
        assert u.alive(), u.t.stderr()
        assert failed == 0, errors
        assert ok > AFTER
        assert served_pid(u) != first
        stops_cleanly(u)


@pytest.mark.parametrize("init", INIT_NAMES)
def test_master_upgrade_keeps_the_container_up(init: str) -> None:
    """`--workers 2`, USR2 twice under load: new masters take over, the init lives, 0 failures."""
    with under_init(init, "--workers", "2") as u:
        first = served_pid(u)
        ok, failed, errors = handovers_under_load(
            u, lambda: u.kill_init(signal.SIGUSR2), handovers=2
        )
        assert u.alive(), u.t.stderr()
        assert failed == 0, errors
        assert ok > AFTER
        assert served_pid(u) != first
        masters = u.servers()
        assert len(set(masters)) == 3, masters
        stops_cleanly(u)


@pytest.mark.parametrize("init", INIT_NAMES)
def test_master_reload_keeps_the_container_up(init: str) -> None:
    """`--workers 2`, HUP under load: a new generation serves under the same master, 0 failures."""
    with under_init(init, "--workers", "2") as u:
        first = served_pid(u)

        def reloaded() -> bool:
            return served_pid(u) != first

        async def scenario() -> tuple[int, list[str]]:
            async with Load(u.t.port, connections=8) as load:
                u.kill_init(signal.SIGHUP)
                await asyncio.to_thread(eventually, reloaded, "a new generation serves", 30)
                before = load.stats.ok
                while load.stats.ok < before + AFTER:
                    await asyncio.sleep(0.01)
            return load.stats.failed, load.stats.errors

        failed, errors = asyncio.run(scenario())
        assert u.alive(), u.t.stderr()
        assert failed == 0, errors
        assert len(u.servers()) == 1  # the same master
        stops_cleanly(u)


def test_a_stop_during_a_reload_ends_the_container_cleanly(tmp_path: Path) -> None:
    """TERM to the init while a HUP's copy is starting: that copy stops too; exit 0."""
    hold = tmp_path / "hold"  # while it exists, a process that starts holds its startup
    with under_init("tini", "--workers", "0", FAMILY_HOLD=str(hold)) as u:
        hold.touch()
        u.kill_init(signal.SIGHUP)
        u.t.wait_for_log("reload: started pid")
        u.kill_init(signal.SIGTERM)
        u.t.wait_for_log("stopped; waiting for the reload in progress to end")
        hold.unlink()  # the copy finishes starting after the stop
        assert u.t.wait() == 0, u.t.stderr()
        err = u.t.stderr()
    assert "became ready while stopping: passing the stop on" in err
    assert err.count("INFO tether: stopped cleanly") == 2, err


def test_ctrl_z_in_a_shell_stops_the_keeper_with_the_service() -> None:
    """A job in a terminal: Ctrl-Z stops the pid the shell waits for; SIGCONT resumes serving."""
    port = free_port()
    argv = [sys.executable, "-m", "tether", "run", "family:app", "--workers", "0"]
    argv += ["--bind", f"127.0.0.1:{port}", "--no-debug", "--no-access-log"]
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    with on_a_terminal(argv, env) as (proc, controller):
        assert proc.stderr is not None
        for line in proc.stderr:  # until it serves
            if "serving family:app" in line:
                break
        os.write(controller, b"\x1a")  # what the terminal sends on Ctrl-Z
        pid, status = os.waitpid(proc.pid, os.WUNTRACED)  # what a shell waits for
        assert pid == proc.pid and os.WIFSTOPPED(status), status
        os.kill(proc.pid, signal.SIGCONT)  # `bg`
        assert get(port, "/pid", timeout=10)[0] == 200
        os.write(controller, b"\x03")  # Ctrl-C: the service stops once, cleanly
        rest = proc.stderr.read()
        assert proc.wait(30) == 0, rest
        assert rest.count("SIGINT received") == 1, rest
