"""tether's pytest plugin, run on small test files in a separate pytest process.

The inner runs leak on purpose, so they run in a subprocess: its leaks end with it
and are not this test's.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

LEAKY = """
import asyncio, threading, time
import pytest

STOP = threading.Event()

def test_leaks_a_thread():
    threading.Thread(target=STOP.wait, name="forgotten", daemon=True).start()

def test_thread_ends_50ms_later():
    threading.Thread(target=time.sleep, args=(0.05,)).start()

@pytest.mark.tether_leaks(ignore_top=["Event.wait", "Condition.wait"])
def test_ignored_by_marker():
    threading.Thread(target=STOP.wait, daemon=True).start()

@pytest.mark.tether_allow_leaks(reason="checks the opt-out")
def test_allowed():
    threading.Thread(target=STOP.wait, daemon=True).start()

def test_task_on_another_threads_loop():
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True, name="loop-thread").start()
    async def start():
        loop.create_task(asyncio.Event().wait(), name="stuck-task")
        await asyncio.sleep(0)
    asyncio.run_coroutine_threadsafe(start(), loop).result(5)

def test_clean():
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
"""


def test_per_test_check_fails_only_the_leaky_tests(pytester: pytest.Pytester) -> None:
    """--tether-leaks fails the tests that leak, naming them, and passes the others."""
    pytester.makepyfile(test_inner=LEAKY)
    result = pytester.runpytest_subprocess(
        "--tether-leaks", "--strict-markers", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=6, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks_a_thread*",
            "test_inner.py::test_leaks_a_thread leaked 1 thread:",
            "thread 'forgotten': threading.Event.wait [[]daemon, native id *]",
            "*in threading.Condition.wait",
            "*ERROR at teardown of test_task_on_another_threads_loop*",
            "test_inner.py::test_task_on_another_threads_loop leaked 3 fds, 1 task, 1 thread:",
            "task 'stuck-task': Event.wait() [[]loop 0x*, running in thread 'loop-thread'[]]",
        ]
    )
    assert "test_thread_ends_50ms_later" not in result.stdout.str().split("short test summary")[1]
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_without_the_flag_only_marked_tests_are_checked(pytester: pytest.Pytester) -> None:
    """Without --tether-leaks, the tether_leaks marker checks its test and no other."""
    pytester.makepyfile(
        """
        import threading
        import pytest

        STOP = threading.Event()

        @pytest.mark.tether_leaks(timeout=0.1)
        def test_marked():
            threading.Thread(target=STOP.wait, daemon=True).start()

        def test_unmarked():
            threading.Thread(target=STOP.wait, daemon=True).start()
        """
    )
    result = pytester.runpytest_subprocess("--strict-markers")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*test_marked leaked 1 thread:*"])


def test_session_check_reports_what_is_left_and_who_left_it(pytester: pytest.Pytester) -> None:
    """--tether-leaks-session reports leaks once at the end, with the test that left them."""
    pytester.makepyfile(
        """
        import threading

        def test_one():
            pass

        def test_two():
            threading.Thread(target=threading.Event().wait, name="left", daemon=True).start()
        """
    )
    result = pytester.runpytest_subprocess("--tether-leaks-session")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*tether leak check*",
            "still running at the end of the session: 1 thing",
            "thread 'left': threading.Event.wait*",
            "  first seen after test_session_check_*.py::test_two",
        ]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_wider_fixtures_own_what_they_start(pytester: pytest.Pytester) -> None:
    """A module fixture's thread is not the first test's leak; it is stopped by the end."""
    pytester.makepyfile(
        """
        import threading
        import pytest

        @pytest.fixture(scope="module")
        def worker():
            stop = threading.Event()
            thread = threading.Thread(target=stop.wait)
            thread.start()
            yield thread
            stop.set()
            thread.join()

        def test_a(worker):
            assert worker.is_alive()

        def test_b(worker):
            assert worker.is_alive()
        """
    )
    result = pytester.runpytest_subprocess("--tether-leaks")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK


def test_opt_out_needs_a_reason(pytester: pytest.Pytester) -> None:
    """tether_allow_leaks without a reason is a usage error that shows the fix."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.tether_allow_leaks
        def test_x():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--tether-leaks")
    result.stderr.fnmatch_lines(
        ["ERROR: *::test_x: tether_allow_leaks needs a reason, as in *(reason=*"]
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_ini_option_and_no_flag(pytester: pytest.Pytester) -> None:
    """tether_leaks = test in the ini file turns the check on; --no-tether-leaks turns it off."""
    pytester.makeini("[pytest]\ntether_leaks = test\ntether_leaks_timeout = 0.1\n")
    pytester.makepyfile(
        """
        import threading

        def test_leaky():
            threading.Thread(target=threading.Event().wait, daemon=True).start()
        """
    )
    on = pytester.runpytest_subprocess()
    on.assert_outcomes(passed=1, errors=1)
    off = pytester.runpytest_subprocess("--no-tether-leaks")
    off.assert_outcomes(passed=1)
