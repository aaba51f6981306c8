"""--reload: a save is served once it starts; a broken save keeps the last good code serving."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tether._reloader import DEFAULT_EXCLUDES, DEFAULT_INCLUDES, accepts
from waiting import eventually

from proc import Tether, get, tether

APP = """
VERSION = {version!r}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": VERSION.encode()}})
"""


def save(directory: Path, text: str) -> None:
    (directory / "versioned.py").write_text(text)


def serving(t: Tether, version: str) -> bool:
    try:
        return get(t.port, "/", timeout=2)[1] == version
    except OSError:
        return False


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_save_reloads_a_broken_save_keeps_serving_and_the_fix_reloads(
    tmp_path: Path, workers: str
) -> None:
    """Save v2: served. Save a syntax error: v2 serves on, the log says why. Save v3: served."""
    save(tmp_path, APP.format(version="v1"))
    with tether("versioned:app", "--workers", workers, "--app-dir", str(tmp_path), "--reload") as t:
        t.ready()
        assert get(t.port, "/")[1] == "v1"
        save(tmp_path, APP.format(version="v2"))
        eventually(lambda: serving(t, "v2"), "v2 served")
        save(tmp_path, "def app(:\n")
        eventually(lambda: "SyntaxError" in t.output() and "reload failed" in t.output(), "failure")
        assert [get(t.port, "/")[:2] for _ in range(20)] == [(200, "v2")] * 20
        save(tmp_path, APP.format(version="v3"))
        eventually(lambda: serving(t, "v3"), "v3 served")
        if workers == "1":
            t.signal(signal.SIGTERM)
            assert t.wait() == 0


def test_what_counts_as_a_change() -> None:
    """Python files count; bytecode, hidden files and editors' swap files never do."""

    def counts(path: str) -> bool:
        return accepts(path, DEFAULT_INCLUDES, DEFAULT_EXCLUDES)

    assert counts("/srv/app/views.py")
    assert not counts("/srv/app/__pycache__/views.cpython-311.pyc")
    assert not counts("/srv/app/.views.py.swp")
    assert not counts("/srv/app/.git/index")
    assert not counts("/srv/app/views.py~")
    assert not counts("/srv/app/README.md")
    assert accepts("/srv/app/templates/a.html", ("*.html",), DEFAULT_EXCLUDES)
    assert not accepts("/srv/app/build/x.py", DEFAULT_INCLUDES, (*DEFAULT_EXCLUDES, "build"))
