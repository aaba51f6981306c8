"""tether's pytest plugin: run tests under tether's leak check.

Registered through the ``pytest11`` entry point, so installing tether is enough.
Nothing is checked until asked for: ``--tether-leaks`` (or ``tether_leaks = test``
in the ini file) checks every test and the session's end; the ``tether_leaks``
marker checks one test, with its own options; ``tether_allow_leaks(reason)``
exempts one test. See ``docs/leaks.md``.

Invariant: a test is blamed only for what it left behind. The snapshot is taken
before the test's setup and compared after its teardown, so function-scoped
fixtures must clean up too; what a wider-scoped fixture (module, session...)
creates while it is set up belongs to that fixture and is ignored until the
fixture is finalized. Whatever a test leaks is reported once, at that test, and
not again at the session's end.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from tether import _creation, _leakscan, leaks
from tether.leaks import LeakOptions, Snapshot

_MODES = ("test", "session", "off")
_SNAPSHOT = pytest.StashKey[Snapshot]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the command-line flags and ini options."""
    group = parser.getgroup("tether", "tether leak check")
    group.addoption(
        "--tether-leaks",
        action="store_const",
        const="test",
        dest="tether_leaks",
        default=None,
        help="fail each test that leaves a task, thread, child process or fd running, "
        "and check again at the end of the session",
    )
    group.addoption(
        "--tether-leaks-session",
        action="store_const",
        const="session",
        dest="tether_leaks",
        help="check for leaks only once, at the end of the session",
    )
    group.addoption(
        "--no-tether-leaks",
        action="store_const",
        const="off",
        dest="tether_leaks",
        help="no leak check, whatever the ini file or conftest.py say "
        "(tests marked tether_leaks are still checked)",
    )
    group.addoption(
        "--tether-leaks-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long a leak must stay alive before it is reported (default 0.5)",
    )
    parser.addini("tether_leaks", "leak check: test, session or off (default off)", default="off")
    parser.addini("tether_leaks_timeout", "seconds before a leak is reported", default="0.5")


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers and the checker."""
    config.addinivalue_line(
        "markers",
        "tether_leaks(timeout=, kinds=, ignore_top=, ignore_any=, ignore_creators=, ignore=): "
        "fail this test if it leaves a task, thread, child process or fd running; "
        "keyword arguments are tether.leaks.LeakOptions fields",
    )
    config.addinivalue_line(
        "markers",
        "tether_allow_leaks(reason): do not check this test for leaks; say why",
    )
    config.pluginmanager.register(_LeakChecker(config), "tether-leak-checker")


class _LeakChecker:
    """Per-session state: the session's snapshot and what fixtures and tests own."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.mode = "off"
        self.timeout = 0.5
        self.session_start: Snapshot | None = None
        #: Created by wider-scoped fixtures, until they are finalized.
        self.fixtures = Snapshot()
        #: Reported at a test already, or left by a test allowed to leak.
        self.accounted = Snapshot()
        #: (test id, what it left running), for blaming session-end leaks.
        self.left_by: list[tuple[str, Snapshot]] = []
        self.session_report = ""
        self.tracking = False

    # -- session ------------------------------------------------------------

    # Last, so that a conftest.py's pytest_sessionstart can first create the process-wide
    # things that live for the whole run (see docs/leaks.md, "Process-wide singletons").
    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        option = self.config.option.tether_leaks
        mode = option or self.config.getini("tether_leaks") or "off"
        if mode not in _MODES:
            msg = f"tether_leaks must be one of {', '.join(_MODES)}, got {mode!r}"
            raise pytest.UsageError(msg)
        self.mode = mode
        raw = self.config.option.tether_leaks_timeout
        if raw is None:
            raw = self.config.getini("tether_leaks_timeout")
        try:
            self.timeout = LeakOptions(timeout=float(raw)).timeout
        except ValueError as exc:
            msg = f"--tether-leaks-timeout: {exc}"
            raise pytest.UsageError(msg) from exc
        if self.mode != "off":
            self._start_tracking()
            self.session_start = leaks.snapshot()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.session_start is not None:
            options = LeakOptions(timeout=self.timeout)
            found = leaks._find_pairs([self.session_start, self.accounted], options)
            if found:
                self.session_report = self._session_report(found)
                if session.exitstatus == pytest.ExitCode.OK:
                    session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if self.tracking:
            _creation._untrack_new_loops()
            self.tracking = False

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.session_report:
            terminalreporter.section("tether leak check", red=True)
            terminalreporter.line(self.session_report)

    def _session_report(self, found: leaks._Pairs) -> str:
        parts = []
        for item, leak in found:
            culprit = next((test for test, left in self.left_by if item in left), None)
            blame = f"\n  first seen after {culprit}" if culprit else ""
            parts.append(leak.describe() + blame)
        count = f"{len(found)} thing{'s' if len(found) > 1 else ''}"
        return f"still running at the end of the session: {count}\n\n" + "\n\n".join(parts)

    def _start_tracking(self) -> None:
        if not self.tracking:
            _creation._track_new_loops()
            self.tracking = True

    # -- fixtures -----------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[Any]) -> Generator[None, Any, Any]:
        if self.mode == "off" or fixturedef.scope == "function":
            return (yield)
        before = leaks.snapshot()
        result = yield
        created = [f for f in _leakscan._scan(leaks.ALL_KINDS) if f not in before]
        for found in created:
            self.fixtures._add(found)

        def release() -> None:
            for found in created:
                self.fixtures._discard(found)

        fixturedef.addfinalizer(release)
        return result

    # -- tests --------------------------------------------------------------

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Refuse a malformed marker before anything runs."""
        for item in items:
            self._options_for(item)

    def _allowed(self, item: pytest.Item) -> bool:
        """True for a test marked ``tether_allow_leaks`` (with the reason it needs)."""
        allow = item.get_closest_marker("tether_allow_leaks")
        if allow is not None and not (allow.args or allow.kwargs.get("reason")):
            msg = (
                f"{item.nodeid}: tether_allow_leaks needs a reason, "
                'as in @pytest.mark.tether_allow_leaks(reason="...")'
            )
            raise pytest.UsageError(msg)
        return allow is not None

    def _options_for(self, item: pytest.Item) -> LeakOptions | None:
        """The options to check ``item`` with, or None when it is not checked on its own."""
        if self._allowed(item):
            return None
        mark = item.get_closest_marker("tether_leaks")
        if mark is None:
            return LeakOptions(timeout=self.timeout) if self.mode == "test" else None
        if mark.args:
            msg = (
                f"{item.nodeid}: tether_leaks takes keyword arguments only "
                "(LeakOptions fields); to skip the check use tether_allow_leaks(reason=...)"
            )
            raise pytest.UsageError(msg)
        try:
            return LeakOptions(**{"timeout": self.timeout, **mark.kwargs})
        except (TypeError, ValueError) as exc:
            msg = f"{item.nodeid}: bad tether_leaks marker: {exc}"
            raise pytest.UsageError(msg) from exc

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        if self.mode != "off" or self._options_for(item) is not None:
            self._start_tracking()
            item.stash[_SNAPSHOT] = leaks.snapshot()
        return (yield)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        result = yield
        since = item.stash.get(_SNAPSHOT, None)
        if since is None:
            return result
        baselines = [since, self.fixtures]
        if self._allowed(item):
            # Exempt: what it left is its own business, not the session end's.
            for found in self._new(baselines):
                self.accounted._add(found)
            return result
        options = self._options_for(item)
        pairs = leaks._find_pairs(baselines, options) if options is not None else []
        for item_found, _ in pairs:
            self.accounted._add(item_found)
        if options is not None and options != LeakOptions(timeout=options.timeout):
            # What the marker's options ignore is accepted for this test: not the session's.
            for item_found in self._new([*baselines, self.accounted]):
                self.accounted._add(item_found)
        if self.session_start is not None:
            left = Snapshot()
            for item_found in self._new([*baselines, self.accounted]):
                left._add(item_found)
            if len(left):
                self.left_by.append((item.nodeid, left))
        if pairs:
            error = leaks.LeakError([leak for _, leak in pairs], subject=item.nodeid)
            pytest.fail(str(error), pytrace=False)
        return result

    @staticmethod
    def _new(baselines: list[Snapshot]) -> list[_leakscan._Found]:
        return [f for f in _leakscan._scan(leaks.ALL_KINDS) if not any(f in b for b in baselines)]
