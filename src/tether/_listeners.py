"""The listening sockets of one process: inherited through ``LISTEN_FDS``, or bound.

Invariant: either every socket is open and owned by the returned
:class:`Listeners`, or none is (a failure closes what was already bound or
inherited).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from tether import sockets as sockets_mod
from tether.config import RunConfig
from tether.worker import started_by_master

__all__ = ["Listeners", "open_listeners"]

logger = logging.getLogger("tether.runtime")


@dataclass
class Listeners:
    """The listening sockets of one process, by role."""

    app: list[socket.socket]
    debug: socket.socket | None
    #: A master's control socket, when one was inherited (an upgrade passes it on).
    control: socket.socket | None = None

    def named(self) -> list[tuple[str, socket.socket]]:
        """The sockets with their roles, as ``LISTEN_FDNAMES`` carries them."""
        named = [("app", s) for s in self.app]
        named += [(role, s) for role, s in (("debug", self.debug), ("control", self.control)) if s]
        return named

    def close(self) -> None:
        for _, sock in self.named():
            sock.close()


def open_listeners(config: RunConfig) -> Listeners:
    """Inherit the sockets passed by ``LISTEN_FDS``, or bind the configured addresses.

    The addresses were checked by :class:`RunConfig`; raises BindError with
    nothing left bound.
    """
    app_addresses = [sockets_mod.parse_address(b, flag="--bind") for b in config.binds]
    debug_address = (
        sockets_mod.parse_address(config.debug_bind, flag="--debug-bind")
        if config.debug_bind is not None
        else None
    )
    inherited = sockets_mod.inherit()
    if inherited:
        app_socks = [s for name, s in inherited if name not in ("debug", "control")]
        debug = next((s for name, s in inherited if name == "debug"), None)
        control = next((s for name, s in inherited if name == "control"), None)
        if debug is None and debug_address is not None:
            # Passed only the app's sockets (systemd, a master): the debug server is ours.
            try:
                debug = sockets_mod.bind(debug_address, flag="--debug-bind")
            except BaseException:
                for _, sock in inherited:
                    sock.close()
                raise
        # A worker's sockets always come from its master, which said so already.
        level = logging.DEBUG if started_by_master(os.environ) else logging.INFO
        logger.log(level, "using %d inherited socket(s) (LISTEN_FDS)", len(inherited))
        return Listeners(app_socks, debug, control)
    bound: list[socket.socket] = []
    try:
        for address in app_addresses:
            bound.append(sockets_mod.bind(address, flag="--bind"))
        debug = (
            sockets_mod.bind(debug_address, flag="--debug-bind")
            if debug_address is not None
            else None
        )
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return Listeners(bound, debug)
