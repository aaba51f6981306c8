"""The app's own ``prometheus_client`` metrics on tether's ``/metrics``, in both process modes.

An app that counts with ``prometheus_client`` in several worker processes
needs that library's multiprocess mode: every process writes its values to
memory-mapped files in one directory (``PROMETHEUS_MULTIPROC_DIR``, read
when the app creates its first metric, so it must be in the worker's
environment at spawn), a reader merges the files as each metric's type and
gauge ``multiprocess_mode`` say, and whoever sees a process die removes its
``live*`` gauge files (``mark_process_dead``). tether does all three, so the
app only defines its metrics:

- :class:`MultiprocDir`, in the master: ``<runtime directory>/prometheus``,
  created empty at start and removed with the runtime directory (a master
  killed with ``-9`` leaves it to the next master's clean-up of stale runtime
  directories); set in every worker's environment and in the master's own
  (a config hook that calls ``mark_process_dead(pid)`` works as written);
  each worker that exits, however it exits, is marked dead at once; the
  master's ``/metrics`` reads the directory with ``MultiProcessCollector``
  without importing the app. The counter, histogram and summary files that
  exited workers leave (their counts stay, as prometheus_client wants) are
  merged into one file per kind at the next scrape, so a service that
  reloads and recycles for months reads a directory of the same size: a
  scrape costs what the live workers cost. A directory the user named in
  ``PROMETHEUS_MULTIPROC_DIR`` is used as it is: never emptied or removed
  (another master during an upgrade, an old generation still draining or
  another service may be writing there), only checked at start;
- a single process (``--workers 0``) serves the default registry
  (``prometheus_client.REGISTRY``) without the library's own process, platform
  and GC collectors (tether's ``tether_process_*`` cover the process), or the
  directory the user named;
- a worker's private ``/metrics`` (what the master scrapes for tether's own
  figures) shows none of the app's: they reach the master through the
  directory, and would otherwise be counted twice.

Invariant: names starting with ``tether_`` are tether's. An app family that
takes one is left out of the answer (and logged once), so ``/metrics`` never
carries two families of one name.

Error handling: a directory named by the user that is not a writable
directory is a :class:`~tether.errors.ConfigError` before anything starts.
Reading the app's metrics never raises into a scrape: a failure is logged
once and the answer carries tether's figures alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING

from tether.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = [
    "MULTIPROC_ENV",
    "AppFamilies",
    "MultiprocDir",
    "check_user_dir",
    "forget_process",
    "single_process_families",
    "user_dir",
]

log = logging.getLogger("tether.metrics")

#: The variable prometheus_client reads to choose multiprocess mode, and where its files go.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The name older releases of prometheus_client read (still honoured, with a warning).
_LEGACY_ENV = "prometheus_multiproc_dir"
#: Prefix of every family tether exposes itself.
_OURS = "tether_"
#: The directory's name inside the master's runtime directory.
_SUBDIR = "prometheus"
#: Kinds of file whose values outlive the worker that wrote them (prometheus_client's
#: semantics: counters never go back). Gauges are left alone: ``live*`` ones go with the
#: worker, and the others keep its pid (``all``) or its timestamp (``mostrecent``).
_KEPT = ("counter", "histogram", "summary")
#: Where the kept values of exited workers are merged: ``counter_exited.db``...
_EXITED = "exited"


def user_dir(environ: Mapping[str, str]) -> str | None:
    """The multiprocess directory named in ``environ``, if any (either spelling)."""
    return environ.get(MULTIPROC_ENV) or environ.get(_LEGACY_ENV) or None


def check_user_dir(environ: Mapping[str, str]) -> str | None:
    """The user's directory, if one is named; ConfigError (one line) if it cannot be used."""
    path = user_dir(environ)
    if path is None:
        return None
    if not os.path.isdir(path):
        problem = "does not exist" if not os.path.lexists(path) else "is not a directory"
    elif not os.access(path, os.W_OK | os.X_OK):
        problem = "is not writable"
    else:
        return path
    name = MULTIPROC_ENV if environ.get(MULTIPROC_ENV) else _LEGACY_ENV
    msg = (
        f"{name}={path} {problem}; create it (empty) before starting, or unset {name} "
        "and tether gives the workers a directory of its own"
    )
    raise ConfigError(msg)


def _read_dir(path: str) -> list[Metric]:
    from prometheus_client.multiprocess import MultiProcessCollector

    collector = MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]
    return list(collector.collect())  # type: ignore[no-untyped-call]


def _merge_into(merged: str, sources: list[str]) -> None:
    """Write the values of ``sources`` (and of ``merged``, if it exists) into ``merged``.

    prometheus_client's own merge, unaccumulated as it is for writing back to
    files; the file is written aside and renamed, so a reader never sees half of it.
    """
    from prometheus_client.mmap_dict import MmapedDict, mmap_key
    from prometheus_client.multiprocess import MultiProcessCollector

    inputs = [merged, *sources] if os.path.exists(merged) else sources
    metrics = MultiProcessCollector.merge(inputs, accumulate=False)  # type: ignore[no-untyped-call]
    tmp = merged + ".tmp"  # not *.db: never read
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # left by a master that died writing it
    out = MmapedDict(tmp)  # type: ignore[no-untyped-call]
    try:
        for metric in metrics:
            for sample in metric.samples:
                names, values = list(sample.labels), list(sample.labels.values())
                key = mmap_key(metric.name, sample.name, names, values, metric.documentation)
                out.write_value(key, sample.value, 0.0)  # type: ignore[no-untyped-call]
    finally:
        out.close()  # type: ignore[no-untyped-call]
    os.replace(tmp, merged)
    for source in sources:
        os.unlink(source)


def _mark_dead(pid: int, path: str) -> None:
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


class MultiprocDir:
    """The master's side: the directory every worker's ``prometheus_client`` writes to.

    The zero value is off (``path`` None): nothing is set, read or removed.
    """

    def __init__(self) -> None:
        #: The directory, once :meth:`open` chose it.
        self.path: str | None = None
        #: True if tether made it (inside its runtime directory, removed with it).
        self.owned = False
        #: Workers gone since the last scrape, whose kept files are still their own.
        self._exited: set[int] = set()

    def open(self, rundir: str, environ: MutableMapping[str, str]) -> None:
        """Choose the directory: the user's (checked), else a fresh one in ``rundir``."""
        user = check_user_dir(environ)
        if user is not None:
            self.path, self.owned = user, False
            log.info(
                "the app's prometheus_client metrics: %s=%s, as given; tether does not empty it",
                MULTIPROC_ENV if environ.get(MULTIPROC_ENV) else _LEGACY_ENV,
                user,
            )
            return
        path = os.path.join(rundir, _SUBDIR)
        os.mkdir(path, 0o700)
        self.path, self.owned = path, True
        environ[MULTIPROC_ENV] = path

    def close(self, environ: MutableMapping[str, str]) -> None:
        """The master is done: our variable leaves its environment (the directory goes with
        the runtime directory)."""
        if self.owned and environ.get(MULTIPROC_ENV) == self.path:
            del environ[MULTIPROC_ENV]

    def worker_env(self) -> dict[str, str]:
        """What a worker needs in its environment (the user's variable is inherited as is)."""
        return {MULTIPROC_ENV: self.path} if self.owned and self.path else {}

    def successor_environ(self, environ: Mapping[str, str]) -> dict[str, str]:
        """``environ`` for a new master (an upgrade): without our directory, it makes its own."""
        env = dict(environ)
        if self.owned and env.get(MULTIPROC_ENV) == self.path:
            del env[MULTIPROC_ENV]
        return env

    def process_dead(self, pid: int) -> None:
        """A worker exited: its ``live*`` gauges end with it (counters and the rest stay)."""
        if self.path is not None:
            with contextlib.suppress(OSError):
                _mark_dead(pid, self.path)
            if self.owned:
                self._exited.add(pid)

    def families(self) -> list[Metric]:
        """The app's metrics, merged over every process that wrote to the directory."""
        if self.path is None:
            return []
        self._compact(self.path)
        return _read_dir(self.path)

    def _compact(self, path: str) -> None:
        """Fold the kept files of workers that exited into one file per kind.

        Only in tether's own directory, which only the master reads: a reader
        of its own could glob a file that is gone when it opens it.
        """
        pids, self._exited = self._exited, set()
        for kind in _KEPT:
            dead = [os.path.join(path, f"{kind}_{pid}.db") for pid in sorted(pids)]
            dead = [f for f in dead if os.path.exists(f)]
            if not dead:
                continue
            try:
                _merge_into(os.path.join(path, f"{kind}_{_EXITED}.db"), dead)
            except OSError as exc:
                # The files stay as they are and are read as they are: nothing is lost.
                log.warning("cannot merge the %s files of exited workers: %s", kind, exc)


def single_process_families() -> list[Metric]:
    """``--workers 0``: the directory the user named, else the default registry."""
    path = user_dir(os.environ)
    if path is not None:
        return _read_dir(path)
    from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, REGISTRY

    # The library's own process, platform and GC collectors are not the app's (and a
    # master's directory has none of them): the same app shows the same names in both modes.
    theirs = {
        m.name for c in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR) for m in c.collect()
    }
    return [m for m in REGISTRY.collect() if m.name not in theirs]


def forget_process() -> None:
    """A single process that ends: its ``live*`` gauges in the user's directory end with it."""
    path = user_dir(os.environ)
    if path is not None:
        with contextlib.suppress(OSError):
            _mark_dead(os.getpid(), path)


class AppFamilies:
    """tether's families, then the app's without any that takes a ``tether_`` name.

    A callable for :class:`tether.metrics.Families`; ``app`` is read at every scrape.
    """

    def __init__(
        self, own: Callable[[], Iterable[Metric]], app: Callable[[], Iterable[Metric]]
    ) -> None:
        self._own = own
        self._app = app
        self._warned: set[str] = set()
        self._failed = False

    def __call__(self) -> Iterator[Metric]:
        yield from self._own()
        try:
            app = list(self._app())
        except Exception:
            if not self._failed:
                self._failed = True
                log.exception("cannot read the app's prometheus_client metrics; left out")
            return
        self._failed = False
        for family in app:
            if family.name.startswith(_OURS):
                if family.name not in self._warned:
                    self._warned.add(family.name)
                    log.warning(
                        "the app's metric %r is left out of /metrics: names starting with "
                        "%r are tether's; rename it",
                        family.name,
                        _OURS,
                    )
                continue
            yield family
