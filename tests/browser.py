"""A real headless Chromium that tests drive over the DevTools protocol.

``--dump-dom`` shows a page as it is when it has loaded; a page that fills
itself over seconds (the console's live charts) has to be watched while it
runs. :class:`Browser` starts Debian's Chromium with a fresh profile and a
DevTools port on loopback, opens one page, and lets a test evaluate
JavaScript in it (to wait on what the page shows) and take a screenshot.

Resource handling: the browser process and its profile go when the ``with``
block ends, however it ends.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from waiting import eventually

__all__ = ["BROWSER_FLAGS", "Browser"]

#: What the project's Chromium runs with here: no sandbox (root), and no traffic of its own.
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class Browser:
    """One headless Chromium showing one page at ``url``."""

    def __init__(self, url: str, *, width: int = 1280, height: int = 1000) -> None:
        self.url = url
        self.size = (width, height)
        self._ids = itertools.count(1)
        self._profile = tempfile.TemporaryDirectory(prefix="tether-chromium-")
        self._proc: subprocess.Popen[str] | None = None
        self._ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Browser:
        exe = shutil.which("chromium")
        if exe is None:
            pytest.fail("chromium is not installed: run make system-packages (make test does)")
        self._proc = subprocess.Popen(
            [
                exe,
                *BROWSER_FLAGS,
                f"--user-data-dir={self._profile.name}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--window-size={self.size[0]},{self.size[1]}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            opening = connect(self._page_socket(), max_size=64 * 2**20, open_timeout=20)
            self._ws = self._stack.enter_context(opening)
            self.call("Page.enable")
            self.call("Page.navigate", url=self.url)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _page_socket(self) -> str:
        """The DevTools socket of the first page, from the port Chromium writes to its profile."""
        active = Path(self._profile.name) / "DevToolsActivePort"

        def port() -> int | None:
            assert self._proc is not None
            if self._proc.poll() is not None:
                pytest.fail(f"chromium exited with {self._proc.returncode} before DevTools opened")
            lines = active.read_text().split() if active.exists() else []
            return int(lines[0]) if lines else None

        found = eventually(port, "chromium's DevTools port", 30)
        with urllib.request.urlopen(f"http://127.0.0.1:{found}/json/list", timeout=10) as r:
            pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
        return str(pages[0]["webSocketDebuggerUrl"])

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result (events that arrive meanwhile are skipped)."""
        assert self._ws is not None
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=30))
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serializable)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        """The page as a PNG at ``path``."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._profile.cleanup()
