"""The master's reaper: orphans are reaped on SIGCHLD, owned children keep their exit status.

The scenario runs in a fresh interpreter (a subreaper and a SIGCHLD handler
are process-wide) and prints what it saw as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCENARIO = textwrap.dedent(
    """
    import asyncio, json, os, time
    from tether._reaper import Reaper, disown, own

    def children():
        '''This process's children (re-parented orphans included): pid -> state.'''
        found = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat", "rb") as f:
                        stat = f.read()
                except OSError:
                    continue
                fields = stat[stat.rfind(b")") + 2 :].split()
                if int(fields[1]) == os.getpid():
                    found[int(name)] = fields[0].decode()
        return found

    async def until(predicate, within):
        deadline = time.monotonic() + within
        while not predicate() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return predicate()

    def leave_orphans():
        '''A shell, waited for by its owner, that leaves 10 short sleeps behind.'''
        shell = os.posix_spawn(
            "/bin/sh", ["sh", "-c", "for i in $(seq 10); do sleep 0.5 & done"], os.environ
        )
        own(shell)
        os.waitpid(shell, 0)
        disown(shell)
        return len(children())

    async def main():
        out = {}
        reaper = Reaper(asyncio.get_running_loop())
        out["orphans"] = leave_orphans()
        out["orphans_reaped"] = await until(lambda: not children(), 0.5 + 1.0)

        waited = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 7"], os.environ)
        own(waited)
        out["orphans_2"] = leave_orphans()
        # Every child has exited: the owned one and the ten orphans.
        await until(lambda: set(children().values()) == {"Z"}, 5)
        await asyncio.sleep(0.2)  # SIGCHLDs delivered and handled meanwhile
        out["owned_still_waitable"] = children().get(waited) == "Z"
        _, status = os.waitpid(waited, 0)
        out["owned_status"] = os.waitstatus_to_exitcode(status)
        disown(waited)
        out["left_after_disown"] = len(children())  # at once: disown looks again
        reaper.close()
        print(json.dumps(out))

    asyncio.run(main())
    """
)


def test_orphans_reaped_and_an_owned_child_keeps_its_exit_status() -> None:
    """Ten orphans are reaped within a second; an owned child's status waits for its owner."""
    done = subprocess.run(
        [sys.executable, "-c", SCENARIO], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "orphans": 10,
        "orphans_reaped": True,
        "orphans_2": 11,
        "owned_still_waitable": True,
        "owned_status": 7,
        "left_after_disown": 0,
    }
