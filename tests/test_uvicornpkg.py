"""uvicorn's package with its ``__init__`` deferred (tether._uvicornpkg).

Each case runs in a fresh interpreter: what matters is what is in ``sys.modules``
after an import, which a test process that has imported uvicorn long ago cannot
show.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(code: str) -> None:
    """Run ``code`` in a fresh interpreter; its assertions are the test's."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_serving_imports_uvicorn_without_its_command_line() -> None:
    """tether's engine loads uvicorn's config, server and lifespan, not click or the reloaders."""
    run(
        """
        import sys
        import tether.serving
        import uvicorn.config, uvicorn.lifespan.on, uvicorn.server
        for name in ("click", "uvicorn.main", "uvicorn.supervisors", "watchfiles"):
            assert name not in sys.modules, name
        """
    )


def test_the_names_uvicorn_defines_itself_are_the_real_ones() -> None:
    """Config, Server and __version__ come from their modules, still without uvicorn.main."""
    run(
        """
        import sys
        import tether._uvicornpkg
        import uvicorn
        from uvicorn import Config, Server, __version__
        import uvicorn.config, uvicorn.server, uvicorn._version
        assert Config is uvicorn.config.Config
        assert Server is uvicorn.server.Server
        assert __version__ == uvicorn._version.__version__
        assert "uvicorn.main" not in sys.modules and "click" not in sys.modules
        """
    )


def test_any_other_name_runs_the_real_init_once() -> None:
    """`uvicorn.run` (an app's `__main__` block) gets uvicorn's own, as without tether."""
    run(
        """
        import sys
        import tether._uvicornpkg
        import uvicorn
        assert "uvicorn.main" not in sys.modules
        run = uvicorn.run
        cli = sys.modules["uvicorn.main"]
        assert run is cli.run
        assert uvicorn.main is cli.main  # the command, as __init__ binds it, not the module
        assert uvicorn.Server is cli.Server
        assert uvicorn.__all__ == ["main", "run", "Config", "Server"]
        assert "__getattr__" not in vars(uvicorn)
        """
    )


def test_an_unknown_name_first_is_still_an_attribute_error() -> None:
    """A name uvicorn never had raises AttributeError, after running the real init."""
    run(
        """
        import tether._uvicornpkg
        import uvicorn
        try:
            uvicorn.no_such_name
        except AttributeError:
            pass
        else:
            raise AssertionError("an unknown name must stay unknown")
        assert callable(uvicorn.run)
        """
    )


def test_a_uvicorn_imported_first_is_left_alone() -> None:
    """An app served by another server that imports tether keeps uvicorn as it was."""
    run(
        """
        import sys
        import uvicorn
        before = sys.modules["uvicorn"]
        import tether.serving
        assert sys.modules["uvicorn"] is before and "uvicorn.main" in sys.modules
        """
    )


def test_threads_asking_at_once_all_get_uvicorns_names() -> None:
    """Eight threads read `uvicorn.run` at once: the real init runs once, none sees it half-done."""
    run(
        """
        import sys, threading
        import tether._uvicornpkg
        import uvicorn
        runs = []
        real_exec = uvicorn.__spec__.loader.exec_module
        def counting(module):
            runs.append(1)
            real_exec(module)
        uvicorn.__spec__.loader.exec_module = counting
        start = threading.Barrier(8)
        got, errors = [], []
        def ask():
            start.wait()
            try:
                got.append(uvicorn.run)
            except Exception as exc:
                errors.append(exc)
        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and len(got) == 8, errors
        assert all(f is sys.modules["uvicorn.main"].run for f in got)
        assert runs == [1], runs
        """
    )


def test_the_submodule_imported_first_still_leaves_the_command_bound() -> None:
    """`import uvicorn.main` before any name: uvicorn.main is the command, as __init__ binds it."""
    run(
        """
        import sys
        import tether._uvicornpkg
        import uvicorn.main
        cli = sys.modules["uvicorn.main"]
        assert uvicorn.main is cli.main, uvicorn.main
        assert uvicorn.run is cli.run
        assert type(uvicorn).__name__ == "module"  # a plain package once its __init__ ran
        """
    )


def test_an_init_that_fails_is_tried_again_as_a_failed_import_is() -> None:
    """The real __init__ raising: the caller sees the error; the next name runs it again."""
    run(
        """
        import tether._uvicornpkg
        import uvicorn
        real_exec = uvicorn.__spec__.loader.exec_module
        calls = []
        def failing_once(module):
            calls.append(1)
            if len(calls) == 1:
                raise ImportError("click is broken")
            real_exec(module)
        uvicorn.__spec__.loader.exec_module = failing_once
        try:
            uvicorn.run
        except ImportError as exc:
            assert "click is broken" in str(exc)
        else:
            raise AssertionError("the init's error must reach the caller")
        assert callable(uvicorn.run) and len(calls) == 2
        """
    )
