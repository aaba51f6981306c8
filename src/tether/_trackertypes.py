"""What a tracker hands its callers: the errors it raises, its counters, its shutdown report.

Kept apart from :mod:`tether.tracker` so that the tracker module is the
tracker's machinery alone; everything here is re-exported from there (and the
public names from :mod:`tether`). The invariant the types carry:
``TrackerStats.spawned`` is always the sum of the five outcome counters.

The tracker's phases live here too, not in :mod:`tether.tracker`: the adoption
factory (:mod:`tether._adoption`) reads them, and the tracker imports the
factory, so this is the one place both can import without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from tether.errors import AbandonedWork, TetherError

__all__ = [
    "CANCELLING",
    "DONE",
    "DRAINING",
    "OPEN",
    "PHASE_NAMES",
    "AbandonedTask",
    "BaseExceptionInWork",
    "NoCurrentTracker",
    "TrackerClosed",
    "TrackerFull",
    "TrackerReport",
    "TrackerStats",
]


#: The phases of a tracker's life, in order. Plain ints, not an enum: the adoption
#: factory compares one on every ``create_task`` inside a request.
OPEN, DRAINING, CANCELLING, DONE = range(4)
#: Each phase as the tracker's repr names it.
PHASE_NAMES = ("open", "draining", "cancelling", "closed")


class TrackerClosed(TetherError, RuntimeError):
    """Work was offered to a tracker whose shutdown has begun."""

    def __init__(self, tracker: str, work: str) -> None:
        super().__init__(
            f"tracker {tracker!r} is shutting down and refused new work {work!r}; "
            "start work before shutdown begins, or create the tracker with "
            'when_closed="inline" to run late work in the caller'
        )
        self.tracker = tracker
        self.work = work


class TrackerFull(TetherError, RuntimeError):
    """``try_spawn`` found every slot of a limited tracker taken."""

    def __init__(self, tracker: str, work: str, limit: int) -> None:
        super().__init__(
            f"tracker {tracker!r} is full ({limit} tasks running) and refused {work!r}; "
            "use `await tracker.spawn(...)` to wait for a free slot, or raise the limit"
        )
        self.tracker = tracker
        self.work = work
        self.limit = limit


class NoCurrentTracker(TetherError, RuntimeError):
    """``tether.spawn`` was called in a process where no tracker is installed."""

    def __init__(self, call: str) -> None:
        super().__init__(
            f"{call} needs the process's tracker, and none is installed; "
            "run the app with `tether run`, or in a script or test install one with "
            "`tether.tracker.set_current_tracker(tether.Tracker())` and shut it down at the end"
        )
        self.call = call


class BaseExceptionInWork(TetherError):
    """Tracked work raised ``KeyboardInterrupt`` or ``SystemExit``; it counts as a failure.

    Letting either escape would stop the event loop and lose every other task,
    which is what the tracker exists to prevent; the original is the ``__cause__``.
    """

    def __init__(self, work: str, original: BaseException) -> None:
        super().__init__(
            f"tracked work {work!r} raised {original!r}; tracked work cannot stop the "
            "process, so this was recorded as a failure; to stop the service, let a "
            "Group member exit instead"
        )
        self.work = work
        self.original = original


@dataclass(frozen=True)
class TrackerStats:
    """Counters of one tracker.

    ``spawned == running + completed + failed + cancelled + abandoned`` always holds.
    """

    spawned: int  #: tasks accepted, explicitly or by adoption
    running: int  #: tasks not finished yet
    completed: int  #: returned normally
    failed: int  #: raised (logged at once)
    cancelled: int  #: cancelled by someone else before shutdown reached them
    abandoned: int  #: still running at the shutdown deadline
    adopted: int  #: of ``spawned``, how many came in through adoption
    waiting: int  #: ``spawn`` calls waiting for a free slot


@dataclass(frozen=True)
class AbandonedTask:
    """A task still running when the shutdown deadline passed."""

    name: str
    #: Where it was suspended when the deadline passed, outermost frame first.
    stack: str
    #: True if it was still running after the hard deadline that followed its cancellation.
    ignored_cancellation: bool
    #: The request scope it was adopted from, or None for explicitly spawned work.
    origin: str | None = None

    def to_abandoned_work(self) -> AbandonedWork:
        """This item as the runtime's shutdown report entry."""
        detail = "ignored cancellation" if self.ignored_cancellation else "cancelled"
        if self.origin is not None:
            detail += f"; started by {self.origin}"
        return AbandonedWork(kind="task", name=self.name, stack=self.stack, detail=detail)


@dataclass(frozen=True)
class TrackerReport:
    """What :meth:`Tracker.shutdown` found: lifetime counts, and what it abandoned."""

    completed: int
    failed: int
    cancelled: int
    abandoned: tuple[AbandonedTask, ...]
    #: Seconds the shutdown took.
    elapsed: float

    @property
    def clean(self) -> bool:
        """True if nothing was abandoned."""
        return not self.abandoned

    def abandoned_work(self) -> list[AbandonedWork]:
        """The abandoned items, ready for :class:`tether.errors.ShutdownAbandoned`."""
        return [item.to_abandoned_work() for item in self.abandoned]

    def summary(self) -> str:
        """One line for the log."""
        text = (
            f"{self.completed} completed, {self.failed} failed, {self.cancelled} cancelled, "
            f"{len(self.abandoned)} abandoned in {self.elapsed:.2f}s"
        )
        if self.abandoned:
            text += ": " + ", ".join(repr(item.name) for item in self.abandoned)
        return text
