"""The master-worker contract (tether.worker): one typed object in, typed reports out."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tether
from masterproc import MasterProc
from test_master_faults import http_get
from tether.errors import ConfigError
from tether.worker import (
    FAILED_STATUS,
    PARENT_FD_ENV,
    RECYCLE_FIELD,
    UpgradeContract,
    WorkerContract,
    WorkerReport,
    failed_report,
    failure_cause,
    handoff_env,
    is_successor,
    recycle_report,
    started_by_master,
    take_handoff,
    withdraw,
)

from proc import APPS, free_port

SRC = Path(tether.__file__).parent
CONTRACT_MODULE = SRC / "worker.py"

FULL = WorkerContract(
    notify_address="/run/tether-x/notify.sock",
    parent_fd=5,
    parent_pid=4321,
    worker_id=3,
    generation=2,
    final_metrics="/run/tether-x/w3.final",
    stop_plan="/run/tether-x/stop-plan",
)


def test_the_environment_a_master_gives_is_the_one_it_always_gave() -> None:
    """to_env writes the names and values a worker of any tether version reads."""
    assert FULL.to_env() == {
        "TETHER_NOTIFY_SOCKET": "/run/tether-x/notify.sock",
        "TETHER_PARENT_FD": "5",
        "TETHER_PARENT_PID": "4321",
        "TETHER_WORKER_ID": "3",
        "TETHER_GENERATION": "2",
        "TETHER_METRICS_FINAL": "/run/tether-x/w3.final",
        "TETHER_STOP_PLAN": "/run/tether-x/stop-plan",
    }


@pytest.mark.parametrize(
    "contract",
    [
        FULL,
        WorkerContract(
            notify_address="@abstract", parent_fd=3, parent_pid=1, worker_id=0, generation=0
        ),
    ],
    ids=["full", "no-optional-files"],
)
def test_round_trip(contract: WorkerContract) -> None:
    """from_env(to_env()) is the same contract, with other variables around it ignored."""
    env = {"HOME": "/h", "PATH": "/bin", **contract.to_env()}
    assert WorkerContract.from_env(env) == contract


def test_no_contract_means_not_a_masters_worker() -> None:
    """Without the parent pipe's variable a process runs on its own: from_env is None."""
    env = {"TETHER_WORKER_ID": "1", "NOTIFY_SOCKET": "/x"}
    assert WorkerContract.from_env(env) is None
    assert not started_by_master(env)
    assert started_by_master(FULL.to_env())


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "TETHER_NOTIFY_SOCKET",
            None,
            "$TETHER_NOTIFY_SOCKET is not set, but $TETHER_PARENT_FD says a tether master "
            "started this process; a master sets both: unset $TETHER_PARENT_FD to run on its own",
        ),
        (
            "TETHER_WORKER_ID",
            None,
            "$TETHER_WORKER_ID is not set, but $TETHER_PARENT_FD says a tether master "
            "started this process; a master sets both: unset $TETHER_PARENT_FD to run on its own",
        ),
        (
            "TETHER_PARENT_FD",
            "five",
            "$TETHER_PARENT_FD='five' is not a number; it is set by a tether master for its "
            "workers: unset $TETHER_PARENT_FD to run on its own",
        ),
        (
            "TETHER_GENERATION",
            "-1",
            "$TETHER_GENERATION='-1' is not a number; it is set by a tether master for its "
            "workers: unset $TETHER_PARENT_FD to run on its own",
        ),
    ],
)
def test_a_missing_or_malformed_variable_is_a_clear_error(
    name: str, value: str | None, message: str
) -> None:
    """A half-told worker raises ConfigError naming the variable and the way out."""
    env = FULL.to_env()
    if value is None:
        del env[name]
    else:
        env[name] = value
    with pytest.raises(ConfigError) as caught:
        WorkerContract.from_env(env)
    assert str(caught.value) == message


def test_a_process_with_a_broken_contract_exits_2_before_it_serves() -> None:
    """``tether run`` told it is a worker, with a parent fd that is no number: exit 2, one line."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tether",
            "run",
            "plain:app",
            "--workers",
            "0",
            "--no-debug",
            "--bind",
            f"127.0.0.1:{free_port()}",
        ],
        cwd=APPS,
        env={**os.environ, **FULL.to_env(), "TETHER_PARENT_FD": "five"},
        capture_output=True,
        text=True,
        timeout=30,  # the old code ran as a process of its own here, serving until killed
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "tether: error: $TETHER_PARENT_FD='five' is not a number; it is set by a tether master "
        "for its workers: unset $TETHER_PARENT_FD to run on its own"
    )


#: hello.py: what the app sees of its worker's contract, at import and while serving.
SEEN_APP = """\
import json
import os

NAMES = %r
AT_IMPORT = {name: os.environ.get(name) for name in NAMES}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    now = {name: os.environ.get(name) for name in NAMES}
    body = json.dumps({"import": AT_IMPORT, "serving": now}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""

SEEN_NAMES = (
    "TETHER_NOTIFY_SOCKET",
    "NOTIFY_SOCKET",
    "TETHER_PARENT_FD",
    "TETHER_PARENT_PID",
    "TETHER_WORKER_ID",
    "TETHER_GENERATION",
    "TETHER_METRICS_FINAL",
    "TETHER_STOP_PLAN",
    "TETHER_UPGRADE_FROM",
    "TETHER_SYSTEMD_NOTIFY_SOCKET",
    "TETHER_HANDOFF_NOTIFY",
)


def test_a_masters_worker_shows_its_app_what_it_always_did(tmp_path: Path) -> None:
    """A real worker's app sees its id, generation and master; never the addresses, pipe, files."""
    (tmp_path / "hello.py").write_text(SEEN_APP % (SEEN_NAMES,))

    async def scenario() -> None:
        async with MasterProc(tmp_path, workers=1) as master:
            await master.wait_for("READY")
            status, body = await asyncio.to_thread(http_get, master.port)
            assert status == 200, body
            seen: dict[str, dict[str, str | None]] = json.loads(body)
            expected = dict.fromkeys(SEEN_NAMES)
            expected.update(
                TETHER_PARENT_PID=str(master.pid), TETHER_WORKER_ID="1", TETHER_GENERATION="1"
            )
            assert seen == {"import": expected, "serving": expected}
            assert await master.stop() == 0

    asyncio.run(scenario())


def test_withdraw_removes_what_the_app_must_not_see() -> None:
    """Notify addresses, the pipe and the files go; the worker's id, generation, master stay."""
    env = {"HOME": "/h", "NOTIFY_SOCKET": "/systemd", **FULL.to_env()}
    withdraw(env)
    assert env == {
        "HOME": "/h",
        "TETHER_PARENT_PID": "4321",
        "TETHER_WORKER_ID": "3",
        "TETHER_GENERATION": "2",
    }
    assert WorkerContract.from_env(env) is None


def test_reports_round_trip_through_their_fields() -> None:
    """What a worker sends (failed, recycling) reads back as the same typed report."""

    def fields(lines: tuple[str, ...]) -> dict[str, str]:
        return dict(line.split("=", 1) for line in lines)

    failed = WorkerReport.parse(fields(failed_report(ValueError("bad\nsecond line"))))
    assert failed == WorkerReport(status=f"{FAILED_STATUS}ValueError: bad")
    assert failure_cause(failed.status or "") == "ValueError: bad"
    recycle = WorkerReport.parse(fields(recycle_report("--max-requests 100 reached")))
    assert recycle == WorkerReport(recycle=True, status="recycling: --max-requests 100 reached")
    assert failure_cause(recycle.status or "") is None
    assert WorkerReport.parse({"READY": "1", "WATCHDOG": "1"}) == WorkerReport(
        ready=True, heartbeat=True
    )
    assert RECYCLE_FIELD == "TETHER_RECYCLE"


UPGRADE = {"TETHER_UPGRADE_FROM": "41", "NOTIFY_SOCKET": "/run/m/notify.sock"}


@pytest.mark.parametrize(
    ("contract", "expected"),
    [
        (
            UpgradeContract(41, "/run/m/notify.sock", "/run/systemd/notify"),
            {**UPGRADE, "TETHER_SYSTEMD_NOTIFY_SOCKET": "/run/systemd/notify"},
        ),
        (UpgradeContract(41, "/run/m/notify.sock"), UPGRADE),
    ],
    ids=["under-systemd", "alone"],
)
def test_an_upgrade_contract_round_trips_and_leaves_the_environment(
    contract: UpgradeContract, expected: dict[str, str]
) -> None:
    """A new master reads who it replaces and where to report, and removes them."""
    old = {"HOME": "/h", "WATCHDOG_PID": "9", "TETHER_SYSTEMD_NOTIFY_SOCKET": "/stale"}
    env = contract.environ(old)
    assert env == {"HOME": "/h", **expected}
    assert is_successor(env)
    assert UpgradeContract.take(env) == contract
    assert env == {"HOME": "/h"}
    assert UpgradeContract.take(env) is None
    assert not is_successor(env)


def test_a_malformed_upgrade_contract_is_a_clear_error() -> None:
    """A predecessor that is not a pid, or no address to report to, raises ConfigError."""
    with pytest.raises(ConfigError) as caught:
        UpgradeContract.take({"TETHER_UPGRADE_FROM": "x", "NOTIFY_SOCKET": "/n"})
    assert str(caught.value) == (
        "$TETHER_UPGRADE_FROM='x' is not a pid; it is set by a tether master for the master "
        "that replaces it: unset it to start on its own"
    )
    with pytest.raises(ConfigError) as caught:
        UpgradeContract.take({"TETHER_UPGRADE_FROM": "41"})
    assert str(caught.value) == (
        "$NOTIFY_SOCKET is not set, but $TETHER_UPGRADE_FROM says a tether master started this "
        "one to replace it; unset $TETHER_UPGRADE_FROM to start on its own"
    )


def test_a_handoff_keeps_the_supervisor_and_names_the_predecessor() -> None:
    """A --workers 0 copy reports to its predecessor and still to systemd, never to ours."""
    base = {"HOME": "/h", "NOTIFY_SOCKET": "/ours", "TETHER_HANDOFF_NOTIFY": "/our-predecessor"}
    env = handoff_env(base, notify_address="/rx", supervisor_address="/run/systemd/notify")
    assert env == {
        "HOME": "/h",
        "TETHER_HANDOFF_NOTIFY": "/rx",
        "NOTIFY_SOCKET": "/run/systemd/notify",
    }
    assert is_successor(env)
    assert take_handoff(env) == "/rx"
    assert take_handoff(env) is None
    assert handoff_env(base, notify_address="/rx", supervisor_address=None) == {
        "HOME": "/h",
        "TETHER_HANDOFF_NOTIFY": "/rx",
    }


#: Every name the contract carries; only its module may spell them.
CONTRACT_NAMES = (
    "TETHER_NOTIFY_SOCKET",
    PARENT_FD_ENV,
    "TETHER_PARENT_PID",
    "TETHER_WORKER_ID",
    "TETHER_GENERATION",
    "TETHER_METRICS_FINAL",
    "TETHER_STOP_PLAN",
    RECYCLE_FIELD,
    "TETHER_UPGRADE_FROM",
    "TETHER_SYSTEMD_NOTIFY_SOCKET",
    "TETHER_HANDOFF_NOTIFY",
)


def _docstrings(tree: ast.Module) -> set[int]:
    """The ids of the docstring nodes (they may mention a variable; they do not use it)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def spellings(path: Path) -> list[str]:
    """``line: name`` for each string literal in ``path`` that spells a contract name."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    return [
        f"{path.relative_to(SRC.parent)}:{node.lineno}: {name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
        for name in CONTRACT_NAMES
        if name in node.value
    ]


def test_no_other_module_reads_or_writes_the_contract() -> None:
    """The contract changes in one file: no other source module spells its variables."""
    assert spellings(CONTRACT_MODULE)  # the check finds them where they are
    elsewhere = [
        hit
        for path in sorted(SRC.rglob("*.py"))
        if path != CONTRACT_MODULE
        for hit in spellings(path)
    ]
    assert elsewhere == []
