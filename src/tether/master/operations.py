"""The one queue of a master's operations: reloads, upgrades and resizes, one turn at a time.

A reload asked over HUP, ``tether ctl reload``, a ``--reload`` save and an
upgrade (USR2) may all arrive while another runs. They wait here, and the
pool runs them in turns, never two at once.

Invariants:

- one operation runs at a time; a turn takes everything queued: upgrades
  first, then one reload for every reload asked meanwhile (coalesced), then
  the resize to the size asked last;
- every request's future gets an outcome (a dict with ``ok``), whatever
  happens: the outcome of its turn, "the master was upgraded" when an upgrade
  handed over first, or "the master is stopping" when a stop ends the queue
  (``refuse_all``) or cancels a turn.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from tether.master.pool import Pool

__all__ = ["Operations", "RequestKind"]

log = logging.getLogger("tether.master")

RequestKind = Literal["reload", "upgrade", "scale"]
Request = tuple[RequestKind, "asyncio.Future[dict[str, Any]]"]
Outcome = dict[str, Any]

STOPPING: Outcome = {"ok": False, "error": "the master is stopping"}


class Operations:
    """The queue; ``serve`` runs its turns on the pool until cancelled or handed over."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._pid = os.getpid()
        #: Waiting requests; ``_wake`` is set while there is one.
        self._requests: collections.deque[Request] = collections.deque()
        self._wake = asyncio.Event()
        #: True while a reload runs.
        self.reloading = False

    def request(self, kind: RequestKind) -> asyncio.Future[Outcome]:
        """Queue a reload, an upgrade or a resize; the future gets the outcome."""
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        if self._pool.stopping:
            fut.set_result(dict(STOPPING))
            return fut
        if kind == "reload" and self.reload_queued:
            log.info("master %d: reload already queued; coalesced", self._pid)
        elif kind != "scale":
            log.info("master %d: %s requested", self._pid, kind)
        self._requests.append((kind, fut))
        self._wake.set()
        return fut

    @property
    def reload_queued(self) -> bool:
        return any(kind == "reload" for kind, _ in self._requests)

    def refuse_all(self) -> None:
        """A stop: whatever is queued is answered, and nothing more runs."""
        _resolve([f for _, f in self._take_all()], STOPPING)

    async def serve(self) -> None:
        """Run queued turns one at a time until cancelled or handed over."""
        while not self._pool.handed_over:
            await self._wake.wait()
            batch = self._take_all()
            try:
                await self._run_turn(batch)
            finally:  # cancelled by a stop: nobody is left waiting for an answer
                _resolve([f for _, f in batch], STOPPING)

    async def _run_turn(self, batch: list[Request]) -> None:
        """Upgrades first, then one reload for every reload asked, then the size."""
        pool = self._pool
        upgrades = [f for k, f in batch if k == "upgrade"]
        reloads = [f for k, f in batch if k == "reload"]
        if upgrades:
            outcome = await self._upgrade()
            _resolve(upgrades, outcome)
            if pool.handed_over:
                _resolve(reloads, {"ok": False, "error": "the master was upgraded"})
                return
        if reloads:
            pool.hooks.reloading()
            self.reloading = True
            try:
                outcome = await pool.reload()
            finally:
                self.reloading = False
            _resolve(reloads, outcome)
        _resolve([f for k, f in batch if k == "scale"], {"ok": True})
        pool.reconcile_size()

    async def _upgrade(self) -> Outcome:
        upgrade = self._pool.hooks.upgrade
        if upgrade is None:
            return {"ok": False, "error": "this master cannot be upgraded"}
        return await upgrade()

    def _take_all(self) -> list[Request]:
        taken = list(self._requests)
        self._requests.clear()
        self._wake.clear()
        return taken


def _resolve(futures: list[asyncio.Future[Outcome]], outcome: Outcome) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(dict(outcome))
