"""Workers and generations: the pool's bookkeeping, without the policy.

A *generation* is the set of workers started by one (re)load of the app; a
*slot* is one place in it (``--workers N`` gives slots 0..N-1). When a worker
dies, its replacement takes the same slot, and the slot counts restarts.

States a worker goes through: ``starting`` (spawned, not yet ``READY=1``),
``ready``, ``stopping`` (asked to drain), ``exited``. A generation is
``starting`` until every worker is ready, then ``serving``; the one it
replaces becomes ``draining``; one that failed to start is ``failed``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from tether._children import Child
from tether._waits import first
from tether.errors import TetherError
from tether.worker import failure_cause

__all__ = ["Generation", "Worker", "WorkerFailed", "WorkersFailed"]

WorkerState = Literal["starting", "ready", "stopping", "exited"]
GenerationState = Literal["starting", "serving", "draining", "failed", "exited"]


class WorkerFailed(Exception):
    """A worker exited (or timed out) before it was ready; the message says which and why.

    The worker's own error went to the same stderr as the master's (inherited),
    so the message does not copy it; ``cause`` is the one line the worker sent
    as ``STATUS=failed: ...`` (empty if it died without saying), for
    those who do not see that stderr (``tether ctl reload``).
    """

    def __init__(self, worker: Worker | None, why: str, cause: str = "") -> None:
        label = worker.label if worker is not None else "a new worker"
        super().__init__(f"{label} {why}")
        self.worker = worker
        self.why = why
        if not cause and worker is not None:
            cause = failure_cause(worker.status) or ""
        self.cause = cause

    def with_cause(self) -> str:
        """The message, and the worker's own reason when it gave one."""
        return f"{self} ({self.cause})" if self.cause else str(self)


class WorkersFailed(TetherError):
    """Workers that served exited with an error while the master stopped them."""

    exit_code = 1

    def __init__(self, failures: list[str]) -> None:
        super().__init__("worker(s) failed while stopping: " + "; ".join(failures))
        self.failures = failures


@dataclass(eq=False)
class Worker:
    """One worker process in one slot of one generation."""

    id: int
    generation: int
    slot: int
    child: Child
    debug_path: str | None
    restarts: int = 0
    state: WorkerState = "starting"
    status: str = ""
    started_at: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    last_heartbeat: float | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    watchdog: asyncio.TimerHandle | None = None
    #: The master asked it to stop (drain, scale down, discard): its exit is expected.
    asked_to_stop: bool = False
    #: The master had to kill it at the end of its shutdown budget.
    killed: bool = False
    #: The watchdog killed it: its event loop sent no heartbeat (a restart's cause).
    watchdog_killed: bool = False
    #: It asked to be recycled (--max-requests, --max-worker-memory).
    recycle_due: bool = False
    #: The pool is replacing it: its successor starts, or is retried after a failure.
    recycling: bool = False

    @property
    def failed(self) -> bool:
        """The worker said why it fails."""
        return failure_cause(self.status) is not None

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def label(self) -> str:
        return f"worker {self.id} (pid {self.pid}, generation {self.generation})"

    def mark_ready(self) -> None:
        if self.state == "starting":
            self.state = "ready"
            self.ready_at = time.monotonic()
            self.last_heartbeat = self.ready_at
        self.ready.set()

    async def until_ready(self) -> None:
        """Return once READY=1 arrived; raise WorkerFailed if the worker exits first."""
        await first(self.ready.wait(), self.child.exited)  # the exit future is shared: left alone
        if self.child.exited.done() and not self.ready.is_set():
            raise WorkerFailed(self, self.child.describe_exit() + " before READY")

    def snapshot(self, now: float) -> dict[str, Any]:
        exit_code = self.child.exited.result() if self.child.exited.done() else None
        return {
            "id": self.id,
            "pid": self.pid,
            "slot": self.slot,
            "generation": self.generation,
            "state": self.state,
            "age": round(now - self.started_at, 3),
            "restarts": self.restarts,
            "status": self.status,
            "heartbeat_age": None
            if self.last_heartbeat is None
            else round(now - self.last_heartbeat, 3),
            "exit": None if exit_code is None else self.child.describe_exit(),
        }


@dataclass(eq=False)
class Generation:
    """The workers started by one load of the app."""

    number: int
    size: int
    state: GenerationState = "starting"
    slots: dict[int, Worker] = field(default_factory=dict)
    #: Workers that left their slot (replaced, scaled down) and may still be running.
    retired: list[Worker] = field(default_factory=list)
    failures: dict[int, int] = field(default_factory=dict)
    replacing: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    #: Successors starting for slots whose worker served its --max-requests.
    successors: dict[int, Worker] = field(default_factory=dict)
    created_at: float = field(default_factory=time.monotonic)

    def workers(self) -> list[Worker]:
        """Every worker of this generation that may still be running."""
        everyone = [*self.slots.values(), *self.successors.values(), *self.retired]
        return [w for w in everyone if w.child.alive]

    def ready_count(self) -> int:
        return sum(1 for w in self.slots.values() if w.state == "ready")

    def snapshot(self, now: float) -> dict[str, Any]:
        workers = sorted(self.slots.values(), key=lambda w: w.slot)
        workers += [w for w in self.retired if w.child.alive]
        return {
            "number": self.number,
            "state": self.state,
            "size": self.size,
            "age": round(now - self.created_at, 3),
            "workers": [w.snapshot(now) for w in workers],
        }
