"""The ``tether`` command's first steps, taken before it imports its command line.

``tether run`` forks twice before it imports click and its options, when it
will have to anyway: the keeper that holds the pid an init or a shell
watches (:mod:`tether._init`; the service is its child), then, when the
command line asks for a master, that master's first worker, which imports
the HTTP engine while the master reads its options and binds
(:mod:`tether._prestart`). Doing both this early costs nothing and makes the
two stretches overlap. Before either, it holds the garbage collector off
until the process serves (:mod:`tether._startgc`). ``tether.cli.run`` still
forks the keeper itself when the command is started some other way
(``tether.cli.main`` called from Python). Everything else is
:mod:`tether.cli`'s.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tether.config import RunConfig

__all__ = ["main"]


def main() -> None:
    """The ``tether`` command (``python -m tether`` is the same)."""
    argv = sys.argv[1:]
    if argv[:1] == ["run"] and "--help" not in argv and "-h" not in argv:
        from tether._startgc import hold

        hold()  # until the process serves: see tether._startgc
        from tether.worker import keeps_pid, started_by_master

        if not started_by_master(os.environ):  # a worker goes straight to its command line
            if keeps_pid(os.environ):
                from tether._init import become_init

                if (code := become_init()) is not None:
                    sys.exit(code)  # the keeper: its service, the child, has ended
            from tether import _prestart

            if _prestart.wants_master(argv, os.environ):
                _prestart.start(_worker)
    from tether.cli import main as cli_main

    cli_main()


def _worker(config: RunConfig) -> None:
    """A prestarted worker's command: its resolved config, run as a forked worker runs it."""
    from tether._runner import run_worker

    run_worker(config)
